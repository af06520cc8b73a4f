"""Public social-media accounts over their platforms' public APIs, with no account or API key.

* Mastodon, and any fediverse server with its REST API: ``GET /api/v1/accounts/lookup?acct=<user>``
  on the account's instance (``social.mastodon_base_url``, ``{instance}`` being the handle's host),
  then ``/api/v1/accounts/<id>/statuses`` (recent public posts, boosts excluded).
* Bluesky: an AT Protocol AppView (``social.bluesky_api_url``): ``app.bsky.actor.getProfile``, then
  ``app.bsky.feed.getAuthorFeed`` (the account's own posts and replies; its reposts are skipped).

A target is a ``user-account`` (any spelling ``bev.social_accounts.parse_account`` reads; its
``account_type`` property, when "mastodon" or "bluesky", is taken as the platform) or a profile URL.

Findings: the account, as a STIX user-account with its profile in properties and a plain-text
rendering of profile and posts as its corpus document; the indicators in its bio and profile fields
(``links-to``, cited to the profile URL) and in each post (``mentions``, cited to the post's public
URL); the accounts it mentions (``mentions``). Everything the APIs return is untrusted text: links are
recorded, never followed, and nothing but the two APIs is fetched, through the guarded fetcher.

Errors: an account the platform does not know (HTTP 404 or 410; Bluesky's AppView answers 400
"Profile not found") is InvalidTarget, as the request's own fault: it says nothing about the source,
so monitoring does not count it against the collector. Rate limiting (429), server errors (5xx) and
answers that are not the JSON expected are CollectorError.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urldefrag

import lxml.html

from bev import stix
from bev.social_accounts import account_platform, parse_account, profile_account
from services.collectors.contract import CollectContext, CollectorError, Document, Finding, InvalidTarget
from services.collectors.fetch import FetchFailed
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable, Relation, from_indicator
from services.collectors.settings import CollectorsConfig

PLATFORM_NAMES = {"mastodon": "Mastodon", "bluesky": "Bluesky"}
BLUESKY_WEB = "https://bsky.app"
MAX_BIO_CHARS = 2000  # the description property, and the bio read for indicators
MAX_POST_CHARS = 5000  # of one post's text (Mastodon's default limit is 500, some servers allow more)
MAX_LINKS = 50  # URLs recorded from one text
MAX_PARTS = 100  # profile fields, mentions, facets read from one answer (Mastodon allows 4 to 16 fields)

PROFILE_RELATION, PROFILE_CONFIDENCE = "links-to", 70
POST_RELATION, POST_CONFIDENCE = "mentions", 60

_MASTODON_ID_RE = re.compile(r"[0-9A-Za-z]{1,32}")  # it goes into a URL path: nothing else passes
_RKEY_RE = re.compile(r"[A-Za-z0-9._:~-]{1,512}")  # AT Protocol record key syntax
# An account written in text: @user@instance, and (in Bluesky text) @handle.domain. Not after a word
# character, '.', '+' or '-', so the '@' of an e-mail address never starts one.
_FEDIVERSE_RE = re.compile(r"(?<![\w@.+-])@[a-z0-9_]+(?:[.-]+[a-z0-9_]+)*@(?:[a-z0-9-]+\.)+[a-z0-9-]+", re.IGNORECASE)
_HANDLE_RE = re.compile(r"(?<![\w@.+-])@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*[a-z0-9]", re.IGNORECASE)


@dataclass
class _Said:
    """Text an account published (its bio, a post) and what it points at."""

    text: str  # as shown (the corpus document)
    links: list[str] = field(default_factory=list)  # hrefs, link facets, link cards
    accounts: list[Observable] = field(default_factory=list)  # accounts mentioned
    scan: str | None = None  # the text indicators are read from, when not `text`


@dataclass
class _Post:
    url: str  # its public web page
    created: str
    said: _Said


class SocialCollector:
    name = "social"
    description = ("Reads a public Mastodon (fediverse) or Bluesky account over its public API: profile, recent "
                   "posts, the indicators and accounts they mention; links are recorded, never followed")
    consumes = frozenset({"user-account", "url"})
    produces = frozenset({"user-account", "url", "domain-name", "email-addr", "x-crypto-address", "ipv4-addr",
                          "ipv6-addr", "file", "vulnerability"})
    default_confidence = 80
    needs_network = True
    needs_tor = False
    api_key_secret = ""

    def __init__(self, config: CollectorsConfig) -> None:
        self.config = config.social
        self.rate_limit_per_s = config.social.rate_limit_per_s

    async def collect(self, target: Observable, ctx: CollectContext) -> AsyncIterator[Finding]:
        account = _target_account(target)
        if account_platform(account) == "mastodon":
            findings = self._mastodon(account, ctx)
        else:
            findings = self._bluesky(account, ctx)
        async for finding in findings:
            yield finding

    async def _get_json(self, url: str, ctx: CollectContext, what: str, missing: Sequence[int] = ()) -> Any:
        try:
            result = await ctx.fetcher.get(url, investigation_id=ctx.investigation_id, opsec=ctx.opsec,
                                           accept=["application/json"], api=True)
        except FetchFailed as exc:
            status = exc.status
            if status in missing:
                raise InvalidTarget(f"{what}: no such account ({url}: HTTP {status})") from None
            if status == 429:
                raise CollectorError(f"{what}: rate limited by the API ({url}: HTTP 429); try again later") from None
            if status >= 500:
                raise CollectorError(f"{what}: the API failed ({url}: HTTP {status})") from None
            if status in (401, 403):
                raise CollectorError(f"{what}: the API does not answer without an account ({url}: HTTP {status})") from None
            raise
        try:
            return json.loads(result.body)
        except (ValueError, RecursionError) as exc:
            raise CollectorError(f"{what}: {url} answered something that is not JSON ({exc})") from None

    # --- Mastodon ------------------------------------------------------------------------------

    async def _mastodon(self, account: str, ctx: CollectContext) -> AsyncIterator[Finding]:
        user, host = account[1:].split("@")
        base = self.config.mastodon_base_url.replace("{instance}", host).rstrip("/")
        what = f"Mastodon account {account}"
        profile = _mapping(await self._get_json(f"{base}/api/v1/accounts/lookup?acct={quote(user, safe='')}", ctx,
                                                what, (404, 410)), what)
        acct = _text(profile, "acct").lower()
        if acct not in (user, f"{user}@{host}"):
            raise CollectorError(f"{what}: {host} answered with another account ({acct[:80]!r})")
        account_id = _text(profile, "id")
        if not _MASTODON_ID_RE.fullmatch(account_id):
            raise CollectorError(f"{what}: {host} answered without a usable account id")
        statuses = await self._get_json(f"{base}/api/v1/accounts/{account_id}/statuses"
                                        f"?limit={self.config.max_posts}&exclude_reblogs=true", ctx, what, (404, 410))
        if not isinstance(statuses, list):
            raise CollectorError(f"{what}: the statuses answer is not a JSON list")

        profile_url = _web_url(profile.get("url")) or f"https://{host}/@{user}"
        bio, bio_links, bio_mentions = _html(_text(profile, "note")[: 4 * MAX_BIO_CHARS])  # markup included
        bio = bio[:MAX_BIO_CHARS]
        field_lines: list[str] = []
        for entry in _list(profile.get("fields")):
            if isinstance(entry, Mapping):
                value, links, mentions = _html(_text(entry, "value")[:MAX_BIO_CHARS])
                verified = " (verified link)" if entry.get("verified_at") else ""  # the page links back: rel="me"
                field_lines.append(f"{_text(entry, 'name')[:200]}: {value[:MAX_BIO_CHARS]}{verified}")
                bio_links += links
                bio_mentions += mentions
        mentioned = [_account(found) for found in filter(None, map(profile_account, bio_mentions[:MAX_PARTS]))]
        profile_said = _Said("\n".join([bio, *field_lines]), bio_links, mentioned)

        posts: list[_Post] = []
        for status in statuses[: self.config.max_posts]:
            if not isinstance(status, Mapping) or status.get("reblog"):  # a boost is someone else's post
                continue
            # Mention links are left out: the mentions list names those accounts better.
            text, links, _ = _html(_text(status, "content")[: 4 * MAX_POST_CHARS])  # markup included
            spoiler = _text(status, "spoiler_text")[:MAX_BIO_CHARS]
            if spoiler:
                text = f"CW: {spoiler}\n{text}"
            card = status.get("card")
            if isinstance(card, Mapping) and _web_url(card.get("url")):
                links.append(_web_url(card.get("url")))
            accounts = [_mastodon_mention(mention, host) for mention in _list(status.get("mentions"))]
            posts.append(_Post(_web_url(status.get("url")) or _web_url(status.get("uri")) or profile_url,
                               _timestamp(status.get("created_at")),
                               _Said(text[:MAX_POST_CHARS], links, [a for a in accounts if a is not None])))

        owner = _account(account, user_id=_web_url(profile.get("uri")) or profile_url,
                         display_name=_text(profile, "display_name")[:200],
                         account_created=_timestamp(profile.get("created_at")), description=bio,
                         x_followers=_count(profile, "followers_count"), x_following=_count(profile, "following_count"),
                         x_posts=_count(profile, "statuses_count"), url=profile_url)
        document = _document(owner, "mastodon", field_lines, posts)
        yield Finding(owner, profile_url, document=document)
        for finding in _pointed_at(owner, profile_said, profile_url, PROFILE_RELATION, PROFILE_CONFIDENCE):
            yield finding
        for post in posts:
            for finding in _pointed_at(owner, post.said, post.url, POST_RELATION, POST_CONFIDENCE):
                yield finding

    # --- Bluesky -------------------------------------------------------------------------------

    async def _bluesky(self, account: str, ctx: CollectContext) -> AsyncIterator[Finding]:
        api = self.config.bluesky_api_url.rstrip("/")
        what = f"Bluesky account {account}"
        profile = _mapping(await self._get_json(
            f"{api}/xrpc/app.bsky.actor.getProfile?actor={quote(account[1:], safe=':')}", ctx, what, (400, 404)), what)
        did = _text(profile, "did")
        try:
            parse_account(did, "bluesky")
        except ValueError:
            raise CollectorError(f"{what}: the AppView answered without a valid DID") from None
        try:  # an unverified handle comes back as "handle.invalid": the DID names the account then
            value = parse_account(f"@{_text(profile, 'handle')}", "bluesky")
        except ValueError:
            value = f"@{did}"
        feed = _mapping(await self._get_json(
            f"{api}/xrpc/app.bsky.feed.getAuthorFeed?actor={quote(did, safe=':')}&limit={self.config.max_posts}",
            ctx, what), what)
        items = feed.get("feed")
        if not isinstance(items, list):
            raise CollectorError(f"{what}: the author feed answer has no feed list")

        profile_url = f"{BLUESKY_WEB}/profile/{value[1:]}"
        bio = _text(profile, "description")[:MAX_BIO_CHARS]
        posts: dict[str, _Post] = {}  # by AT URI: a post the account reposted itself comes twice
        for item in items[: self.config.max_posts]:
            post = item.get("post") if isinstance(item, Mapping) else None
            if not isinstance(post, Mapping):
                continue
            author = post.get("author")
            record = post.get("record")
            # A repost (item "reason") of someone else's post is theirs, not this account's.
            if not isinstance(author, Mapping) or author.get("did") != did or not isinstance(record, Mapping):
                continue
            rkey = _text(post, "uri").removeprefix(f"at://{did}/app.bsky.feed.post/")
            url = f"{profile_url}/post/{rkey}" if _RKEY_RE.fullmatch(rkey) else profile_url
            posts.setdefault(_text(post, "uri") or url, _Post(url, _timestamp(record.get("createdAt")), _bluesky_said(record)))

        owner = _account(value, user_id=did, display_name=_text(profile, "displayName")[:200],
                         account_created=_timestamp(profile.get("createdAt")), description=bio,
                         x_followers=_count(profile, "followersCount"), x_following=_count(profile, "followsCount"),
                         x_posts=_count(profile, "postsCount"), url=profile_url)
        document = _document(owner, "bluesky", [], list(posts.values()))
        yield Finding(owner, profile_url, document=document)
        for finding in _pointed_at(owner, _Said(bio), profile_url, PROFILE_RELATION, PROFILE_CONFIDENCE, handles=True):
            yield finding
        for post in posts.values():
            for finding in _pointed_at(owner, post.said, post.url, POST_RELATION, POST_CONFIDENCE, handles=True):
                yield finding


# --- helpers ---------------------------------------------------------------------------------------

def _target_account(target: Observable) -> str:
    """The canonical account a target names (InvalidTarget when none)."""
    if target.type == "url":
        account = profile_account(target.value)
        if account is None:
            raise InvalidTarget(f"{target.value[:200]!r} is not a Mastodon or Bluesky profile URL")
        return account
    declared = str(target.properties.get("account_type") or "")
    try:
        return parse_account(target.value, declared if declared in PLATFORM_NAMES else "")
    except ValueError as exc:
        raise InvalidTarget(str(exc)) from None


def _account(value: str, **properties: Any) -> Observable:
    """A user-account observable. Its type and login are those bev.stix.account_of reads from the
    value (they make its STIX id), so a bare Observable("user-account", value) is the same node."""
    props = {key: item for key, item in properties.items() if item not in (None, "")}
    account_type, login = stix.account_of(value)
    if account_type:
        props |= {"account_type": account_type, "account_login": login}
    return Observable("user-account", value, props)


def _mastodon_mention(mention: Any, host: str) -> Observable | None:
    """An account a status mentions: its acct is "user" on the same instance, "user@domain" elsewhere."""
    if not isinstance(mention, Mapping):
        return None
    acct = _text(mention, "acct")
    url = _web_url(mention.get("url"))
    try:
        value = parse_account(f"@{acct}" if "@" in acct else f"@{acct}@{host}", "mastodon")
    except ValueError:
        found = profile_account(url) if url else None
        if found is None:
            return None
        value = found
    return _account(value, url=url)


def _bluesky_said(record: Mapping[str, Any]) -> _Said:
    """A post's text and what its facets point at. Facet ranges are UTF-8 byte offsets. The text a
    link or mention facet covers is blanked before indicators are read, the facet's own URI or DID
    standing for it (clients shorten a link's text: "example.com/pa..."); the text shown has the
    link's full URI."""
    text = _text(record, "text")[:MAX_POST_CHARS]
    data = text.encode("utf-8")
    links: list[str] = []
    accounts: list[Observable] = []
    edits: list[tuple[int, int, str]] = []  # a byte range a facet covers, and what is shown there
    for facet in _list(record.get("facets")):
        index = facet.get("index") if isinstance(facet, Mapping) else None
        if not isinstance(index, Mapping):
            continue
        start, end = index.get("byteStart"), index.get("byteEnd")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(data)):
            continue
        covered = data[start:end].decode("utf-8", "replace")
        for feature in _list(facet.get("features")):
            kind = feature.get("$type") if isinstance(feature, Mapping) else None
            if kind == "app.bsky.richtext.facet#link" and _web_url(feature.get("uri")):
                links.append(_web_url(feature.get("uri")))
                edits.append((start, end, links[-1]))
            elif kind == "app.bsky.richtext.facet#mention":
                mentioned = _bluesky_mention(covered, _text(feature, "did"))
                if mentioned is not None:
                    accounts.append(mentioned)
                    edits.append((start, end, covered))
    embed = record.get("embed")
    external = embed.get("external") if isinstance(embed, Mapping) else None
    if isinstance(external, Mapping) and _web_url(external.get("uri")):  # a link card
        links.append(_web_url(external.get("uri")))
    shown, scan = bytearray(data), bytearray(data)
    limit = len(data)
    for start, end, replacement in sorted(set(edits), reverse=True):  # from the end: earlier offsets hold
        if end > limit:  # overlaps the facet after it
            continue
        shown[start:end] = replacement.encode("utf-8")
        scan[start:end] = b" " * (end - start)
        limit = start
    return _Said(shown.decode("utf-8", "replace"), links, accounts, scan.decode("utf-8", "replace"))


def _bluesky_mention(covered: str, did: str) -> Observable | None:
    """A mention facet's account: its handle as written ("@name.bsky.social"), else its DID."""
    try:
        parse_account(did, "bluesky")
    except ValueError:
        return None
    try:
        value = parse_account(covered, "bluesky") if covered.startswith("@") else f"@{did}"
    except ValueError:
        value = f"@{did}"
    return _account(value, user_id=did)


def _written_accounts(text: str, handles: bool) -> tuple[str, list[Observable]]:
    """Accounts written in plain text (@user@instance; @handle.domain too where `handles`), and the
    text with them blanked, so that @user@instance is not read as an e-mail address."""
    found: list[Observable] = []

    def take(match: re.Match[str]) -> str:
        try:
            found.append(_account(parse_account(match.group(0))))
        except ValueError:
            return match.group(0)
        return " " * len(match.group(0))

    text = _FEDIVERSE_RE.sub(take, text)
    if handles:
        text = _HANDLE_RE.sub(take, text)
    return text, found


def _pointed_at(owner: Observable, said: _Said, source: str, relation: str, confidence: int, *,
                handles: bool = False) -> Iterator[Finding]:
    """What a text points at, each related to the account that wrote it (accounts by `mentions`)."""
    text, written = _written_accounts(said.text if said.scan is None else said.scan, handles)
    targets: dict[str, tuple[Observable, str]] = {}
    for indicator in extract_indicators(text):
        found = from_indicator(indicator.type, indicator.value)
        targets.setdefault(found.id, (found, relation))
    for link in said.links[:MAX_LINKS]:
        linked = Observable("url", link)
        targets.setdefault(linked.id, (linked, relation))
    for other in [*said.accounts, *written]:
        if other.id != owner.id:
            targets.setdefault(other.id, (other, "mentions"))
    for found, kind in targets.values():
        yield Finding(found, source, (Relation(owner, found, kind, confidence),))


def _html(fragment: str) -> tuple[str, list[str], list[str]]:
    """Mastodon's HTML (a bio, a field, a post) as plain text, with its links and its mention links.
    Hashtag links are neither: they point at the instance's own tag pages."""
    if not fragment.strip():
        return "", [], []
    try:
        root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.LxmlError, ValueError):
        return fragment, [], []
    links: list[str] = []
    mentions: list[str] = []
    for anchor in root.iter("a"):
        href = _web_url(anchor.get("href"))
        classes = set(str(anchor.get("class") or "").split())
        if not href or "hashtag" in classes or "tag" in str(anchor.get("rel") or "").split():
            continue
        (mentions if "mention" in classes else links).append(href)
    for element in root.iter("br", "p"):  # line and paragraph breaks survive as text
        element.tail = ("\n" if element.tag == "br" else "\n\n") + (element.tail or "")
    return str(root.text_content()).strip(), links, mentions


def _document(owner: Observable, platform: str, field_lines: Sequence[str], posts: Sequence[_Post]) -> Document:
    """The account for the corpus: its profile, then each post with its URL and date."""
    props = owner.properties
    title = f"{owner.value} on {PLATFORM_NAMES[platform]}"
    lines = [title]
    if props.get("display_name"):
        lines.append(f"Name: {props['display_name']}")
    lines += [f"Profile: {props['url']}", f"Account id: {props.get('user_id', '')}"]
    if props.get("account_created"):
        lines.append(f"Joined: {props['account_created']}")
    lines.append(f"Followers: {props.get('x_followers', 0)}, following: {props.get('x_following', 0)}, "
                 f"posts: {props.get('x_posts', 0)}")
    if props.get("description"):
        lines += ["", "Bio:", str(props["description"])]
    if field_lines:
        lines += ["", "Profile fields:", *field_lines]
    lines += ["", f"Recent public posts ({len(posts)}):"]
    for post in posts:
        lines += ["", f"--- {post.created or 'undated'} {post.url}", post.said.text.strip()]
    return Document("\n".join(lines).encode("utf-8"), "text/plain", str(props["url"]), title)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CollectorError(f"{what}: the API answered a JSON {type(value).__name__}, not an object")
    return value


def _list(value: Any) -> list[Any]:
    """A JSON array from an answer, at most MAX_PARTS items; [] for anything else."""
    return value[:MAX_PARTS] if isinstance(value, list) else []


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _count(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _web_url(value: Any) -> str:
    """An http(s) URL from an answer, without its fragment; "" for anything else."""
    if not isinstance(value, str) or len(value) > 2048 or not value.startswith(("https://", "http://")):
        return ""
    if any(char.isspace() for char in value):
        return ""
    return urldefrag(value)[0]


def _timestamp(value: Any) -> str:
    """An API time as a STIX timestamp (UTC, second precision); "" when there is none."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
