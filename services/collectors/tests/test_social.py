"""The social collector against recorded Mastodon and Bluesky API answers, served by the local HTTP
fixture and stored through the real Collection (SSRF guard, graph, observation store), and the
account helpers it shares with the swarm and the gateway."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import stix2
from stix2validator import ValidationOptions, validate_instance

from bev.social_accounts import account_platform, parse_account, profile_account
from services.collectors.collection import Collection, CollectionRequest, StoredFinding
from services.collectors.contract import CollectorError, InvalidTarget, TargetRefused
from services.collectors.observables import (
    Observable,
    bundle,
    to_stix_object,
    to_stix_relationship,
)
from services.collectors.settings import CollectorsConfig
from services.collectors.testing import DnsFixture, HttpFixture, WhoisFixture, local_collectors_config

DATA = Path(__file__).parent / "data" / "social"
MAX_POSTS = 20

MASTODON = "@lanternfish@social.example.net"
MASTODON_PROFILE = "https://social.example.net/@lanternfish"
MASTODON_ID = "109312345678901234"
MASTODON_PATHS = ["/api/v1/accounts/lookup?acct=lanternfish",
                  f"/api/v1/accounts/{MASTODON_ID}/statuses?limit={MAX_POSTS}&exclude_reblogs=true"]
TOOT_NEW, TOOT_STAGE2, TOOT_REPLY = (f"{MASTODON_PROFILE}/{status}" for status in
                                     ("113287654321098765", "113281234567890123", "113279876543210987"))

BLUESKY = "@lanternfishlabs.bsky.social"
BLUESKY_DID = "did:plc:lf7kq2m5n3vbzr6wdxhjtyeq"
BLUESKY_PROFILE = "https://bsky.app/profile/lanternfishlabs.bsky.social"
BLUESKY_PATHS = ["/xrpc/app.bsky.actor.getProfile?actor=lanternfishlabs.bsky.social",
                 f"/xrpc/app.bsky.feed.getAuthorFeed?actor={BLUESKY_DID}&limit={MAX_POSTS}"]
SKEET_KIT, SKEET_WALLET, SKEET_REPLY = (f"{BLUESKY_PROFILE}/post/{rkey}" for rkey in
                                        ("3m2xbf7qk4s2a", "3m2wzq5ujcd2k", "3m2vqbd7xks2c"))

STAGE2 = "https://dl.harbor-ops.net/drop/stage2.bin"
REPORT = "https://lanternfish-labs.net/reports/2025/parcel-kit"
WALLET = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
SHA256 = "6b00cf09495ea527e02ecb5cb51a6647d1d24693543ac24d4553854ae137b490"


def _json(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.fixture
def social_api(http_fixture: HttpFixture, dns_fixture: DnsFixture) -> HttpFixture:
    """The recorded answers at the paths the collector asks; social.example.net resolves to the fixture."""
    if ("social.example.net.", "A") not in dns_fixture.records:
        dns_fixture.add("social.example.net", "A", "127.0.0.1")
    serve = http_fixture.serve
    serve(MASTODON_PATHS[0], _json("mastodon-account.json"), "application/json; charset=utf-8")
    serve(MASTODON_PATHS[1], _json("mastodon-statuses.json"), "application/json; charset=utf-8")
    serve(BLUESKY_PATHS[0], _json("bluesky-profile.json"), "application/json; charset=utf-8")
    serve(f"/xrpc/app.bsky.actor.getProfile?actor={BLUESKY_DID}", _json("bluesky-profile.json"), "application/json")
    serve(BLUESKY_PATHS[1], _json("bluesky-author-feed.json"), "application/json; charset=utf-8")
    # What the failure tests ask for.
    serve("/api/v1/accounts/lookup?acct=ghost", _json("mastodon-not-found.json"), "application/json", 404)
    serve("/xrpc/app.bsky.actor.getProfile?actor=nobody-here.bsky.social", _json("bluesky-profile-not-found.json"),
          "application/json", 400)
    serve("/api/v1/accounts/lookup?acct=busy", _json("mastodon-rate-limited.json"), "application/json", 429,
          {"x-ratelimit-limit": "300", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2025-10-14T09:15:00.000Z"})
    serve("/api/v1/accounts/lookup?acct=down", "<h1>502 Bad Gateway</h1>", "text/html", 502)
    serve("/api/v1/accounts/lookup?acct=garbled", "<!DOCTYPE html><html><body>Maintenance</body></html>",
          "application/json")
    serve("/api/v1/accounts/lookup?acct=maintenance", "<!DOCTYPE html><html><body>Maintenance</body></html>",
          "text/html; charset=utf-8")
    serve("/api/v1/accounts/lookup?acct=listed", "[]", "application/json")
    return http_fixture


@pytest.fixture
def collectors_config(dns_fixture: DnsFixture, http_fixture: HttpFixture, whois_fixture: WhoisFixture) -> CollectorsConfig:
    # A fediverse instance is reached by its name (through the fixture's DNS) on the fixture's port.
    return local_collectors_config(dns_fixture, http_fixture, whois_fixture, social={
        "mastodon_base_url": f"http://{{instance}}:{http_fixture.port}", "bluesky_api_url": http_fixture.base,
        "max_posts": MAX_POSTS, "rate_limit_per_s": 1000})


async def _collect(collection: Collection, kind: str, value: str, *, inv: str = "",
                   **properties: Any) -> list[StoredFinding]:
    request = CollectionRequest("social", Observable(kind, value, properties),
                                investigation_id=inv or "soc-" + uuid.uuid4().hex[:6])
    return [stored async for stored in collection.run(request)]


def _edges(found: list[StoredFinding]) -> set[tuple[str, str, str, int, str]]:
    """(target type, target value, relation, confidence, cited source) of every relation found."""
    values = {s.entity.id: (s.entity.type, s.entity.value) for s in found}
    return {(*values[r.target_id], r.type, r.confidence, s.observation.source) for s in found for r in s.relations}


def _account_id(value: str) -> str:
    return Observable("user-account", value).id


async def _props(collection: Collection, entity_id: str) -> dict[str, Any]:
    entity = await collection.graph.get_entity(entity_id)
    assert entity is not None
    props: dict[str, Any] = json.loads(entity.props)
    return props


async def test_mastodon_account_its_indicators_mentions_and_document(
        collection: Collection, social_api: HttpFixture, dns_fixture: DnsFixture) -> None:
    requests_before, queries_before = len(social_api.requests), len(dns_fixture.queries)
    found = await _collect(collection, "user-account", "@Lanternfish@Social.Example.NET", inv="soc-m")

    account = found[0]
    assert (account.entity.type, account.entity.value) == ("user-account", MASTODON)
    assert account.entity.id == _account_id(MASTODON)  # the id a bare value gets: one node however it is found
    assert account.observation.source == MASTODON_PROFILE
    props = await _props(collection, account.entity.id)
    description = props.pop("description")
    assert props == {"account_type": "mastodon", "account_login": "lanternfish@social.example.net",
                     "user_id": "https://social.example.net/users/lanternfish",
                     "display_name": "Lanternfish Labs :lantern:", "account_created": "2022-11-07T00:00:00Z",
                     "x_followers": 2841, "x_following": 377, "x_posts": 1290, "url": MASTODON_PROFILE}
    assert description.startswith("Threat intel on phishing kits & loaders. Reports: https://lanternfish-labs.net/reports")
    assert "<" not in description and "tips[at]lanternfish-labs[.]net" in description

    edges = _edges(found)
    profile = {("domain-name", "lanternfish-labs.net"), ("url", "https://lanternfish-labs.net/reports"),
               ("url", "https://lanternfish-labs.net"), ("email-addr", "tips@lanternfish-labs.net"),
               ("x-crypto-address", WALLET)}
    assert {(kind, value, "links-to", 70, MASTODON_PROFILE) for kind, value in profile} <= edges
    assert ("user-account", "@nightjar@infosec.example.org", "mentions", 70, MASTODON_PROFILE) in edges
    posts = {
        TOOT_NEW: {("domain-name", "track-parcel.example-delivery.com"), ("ipv4-addr", "203.0.113.45"),
                   ("url", REPORT), ("user-account", "@nightjar@infosec.example.org")},
        TOOT_STAGE2: {("url", STAGE2), ("domain-name", "dl.harbor-ops.net"), ("file", SHA256),
                      ("vulnerability", "CVE-2025-21298"), ("x-crypto-address", WALLET),
                      ("email-addr", "dispatch@harbor-ops.net")},
        # A reply: its local mention (acct "kestrel"), and an unlinked @user@instance that is no e-mail.
        TOOT_REPLY: {("ipv4-addr", "198.51.100.23"), ("ipv6-addr", "2001:db8:4a::17"),
                     ("user-account", "@kestrel@social.example.net"), ("user-account", "@ops@cert.example.org")},
    }
    for url, expected in posts.items():
        assert {(kind, value, "mentions", 60, url) for kind, value in expected} <= edges, url
    values = {(s.entity.type, s.entity.value) for s in found}
    assert ("email-addr", "ops@cert.example.org") not in values and ("domain-name", "cert.example.org") not in values
    assert not {value for kind, value in values if kind == "url" and "/tags/" in value}  # hashtags are not links
    assert all(r.source_id == account.entity.id for s in found for r in s.relations)

    document = account.finding.document
    assert document is not None
    assert (document.uri, document.title, document.media_type) == (
        MASTODON_PROFILE, "@lanternfish@social.example.net on Mastodon", "text/plain")
    text = document.content.decode()
    assert "Website: https://lanternfish-labs.net (verified link)" in text
    assert f"--- 2025-10-14T09:12:44Z {TOOT_NEW}" in text and f"--- 2025-10-12T08:05:10Z {TOOT_REPLY}" in text
    assert f"Stage 2 is pulled from {STAGE2}" in text and "CW: infra overlap" in text

    # The posts' links were recorded, never fetched: only the two API calls were made, and only the
    # instance's name was resolved.
    assert [path for _, path, _ in social_api.requests[requests_before:]] == MASTODON_PATHS
    assert {name for name, _ in dns_fixture.queries[queries_before:]} == {"social.example.net."}

    # A rerun adds nothing: the same observations, the same graph.
    counts = await collection.graph.counts()
    again = await _collect(collection, "user-account", MASTODON, inv="soc-m")
    assert {s.observation.id for s in again} == {s.observation.id for s in found}
    assert await collection.graph.counts() == counts


async def test_mastodon_account_exports_as_valid_stix(collection: Collection, social_api: HttpFixture) -> None:
    await _collect(collection, "user-account", MASTODON)
    graph = await collection.graph.subgraph([_account_id(MASTODON)], 1, 1000)
    stamp = "2025-10-14T10:00:00.000Z"
    objects = [to_stix_object(e.id, e.type, e.value, json.loads(e.props), stamp) for e in graph.entities]
    objects += [to_stix_relationship(r.id, r.source_id, r.type, r.target_id, r.confidence, stamp) for r in graph.relations]
    exported = bundle(objects)
    account = next(o for o in objects if o["id"] == _account_id(MASTODON))
    assert account == {"type": "user-account", "spec_version": "2.1", "id": _account_id(MASTODON),
                       "account_login": "lanternfish@social.example.net", "account_type": "mastodon",
                       "user_id": "https://social.example.net/users/lanternfish",
                       "display_name": "Lanternfish Labs :lantern:", "account_created": "2022-11-07T00:00:00Z"}
    assert {"user-account", "url", "domain-name", "email-addr", "ipv4-addr", "ipv6-addr", "file", "vulnerability",
            "x-crypto-address", "relationship"} <= {o["type"] for o in objects}
    result = validate_instance(exported, ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for e in result.errors]
    # The id STIX derives from the login and type alone (bev.stix leaves user_id out, so that the
    # account named bare and the account collected are one node).
    assert account["id"] == stix2.UserAccount(account_login="lanternfish@social.example.net", account_type="mastodon").id


async def test_bluesky_account_facets_mentions_and_document(
        collection: Collection, social_api: HttpFixture) -> None:
    requests_before = len(social_api.requests)
    found = await _collect(collection, "user-account", BLUESKY)

    account = found[0]
    assert (account.entity.value, account.entity.id, account.observation.source) == (
        BLUESKY, _account_id(BLUESKY), BLUESKY_PROFILE)
    props = await _props(collection, account.entity.id)
    assert props.pop("description").startswith("Phishing kits, loaders and the infrastructure behind them")
    assert props == {"account_type": "bluesky", "account_login": "lanternfishlabs.bsky.social",
                     "user_id": BLUESKY_DID, "display_name": "Lanternfish Labs",
                     "account_created": "2023-07-18T14:02:51Z", "x_followers": 5120, "x_following": 402,
                     "x_posts": 877, "url": BLUESKY_PROFILE}

    edges = _edges(found)
    profile = {("domain-name", "lanternfish-labs.net"), ("email-addr", "tips@lanternfish-labs.net")}
    assert {(kind, value, "links-to", 70, BLUESKY_PROFILE) for kind, value in profile} <= edges
    assert ("user-account", MASTODON, "mentions", 70, BLUESKY_PROFILE) in edges  # "Fediverse: @lanternfish@..."
    posts = {
        # A link facet's URI (its text is shortened), the link card, a mention facet (the DID's handle).
        SKEET_KIT: {("url", STAGE2), ("url", REPORT), ("user-account", "@nightjar.bsky.social")},
        SKEET_WALLET: {("x-crypto-address", WALLET), ("email-addr", "dispatch@harbor-ops.net"),
                       ("ipv4-addr", "198.51.100.23"), ("user-account", MASTODON)},
        SKEET_REPLY: {("user-account", "@kestrel-re.bsky.social"), ("vulnerability", "CVE-2025-21298")},
    }
    for url, expected in posts.items():
        assert {(kind, value, "mentions", 60, url) for kind, value in expected} <= edges, url
    values = {(s.entity.type, s.entity.value) for s in found}
    assert {value for kind, value in values if kind == "url" and "harbor-ops" in value} == {STAGE2}  # not "...stag..."
    assert ("email-addr", "lanternfish@social.example.net") not in values
    assert ("domain-name", "nightjar.bsky.social") not in values  # a handle written in a post is an account
    assert ("ipv4-addr", "192.0.2.200") not in values  # a repost is someone else's post
    nightjar = next(s for s in found if s.entity.value == "@nightjar.bsky.social")
    assert json.loads(nightjar.entity.props)["user_id"] == "did:plc:nj4aq3xy6vbe2kstmr7wcpfo"

    document = account.finding.document
    assert document is not None
    assert (document.uri, document.title) == (BLUESKY_PROFILE, "@lanternfishlabs.bsky.social on Bluesky")
    text = document.content.decode()
    assert f"--- 2025-10-14T09:20:31Z {SKEET_KIT}" in text and "Recent public posts (3):" in text
    # The shortened link's full URI; the mention as written.
    assert f"stage 2 now at {STAGE2} thanks @nightjar.bsky.social for the sample #phishing" in text
    assert [path for _, path, _ in social_api.requests[requests_before:]] == BLUESKY_PATHS


@pytest.mark.parametrize(("kind", "value", "properties", "expected"), [
    ("url", "https://social.example.net/@lanternfish", {}, MASTODON),
    ("url", "https://social.example.net/users/lanternfish/", {}, MASTODON),
    ("user-account", "lanternfish@social.example.net", {"account_type": "mastodon"}, MASTODON),
    ("url", f"https://bsky.app/profile/{BLUESKY_DID}", {}, BLUESKY),  # a DID: reported under its handle
    ("user-account", "lanternfishlabs.bsky.social", {"account_type": "bluesky"}, BLUESKY),
])
async def test_other_ways_to_name_the_account(collection: Collection, social_api: HttpFixture, kind: str, value: str,
                                              properties: dict[str, str], expected: str) -> None:
    found = await _collect(collection, kind, value, **properties)
    assert found[0].entity.value == expected and found[0].entity.id == _account_id(expected)


@pytest.mark.parametrize(("kind", "value", "error", "message"), [
    ("user-account", "@ghost@social.example.net", InvalidTarget, r"no such account .*HTTP 404"),
    ("user-account", "@nobody-here.bsky.social", InvalidTarget, r"no such account .*HTTP 400"),
    ("user-account", "@busy@social.example.net", CollectorError, r"rate limited by the API .*HTTP 429"),
    ("user-account", "@down@social.example.net", CollectorError, r"the API failed .*HTTP 502"),
    ("user-account", "@garbled@social.example.net", CollectorError, r"not JSON"),
    ("user-account", "@maintenance@social.example.net", TargetRefused, r"Content-Type text/html is not accepted"),
    ("user-account", "@listed@social.example.net", CollectorError, r"JSON list, not an object"),
    ("user-account", "lanternfish@social.example.net", InvalidTarget, r"reads as an e-mail address"),
    ("user-account", "@a@b@c", InvalidTarget, r"more than two '@'"),
    ("url", "https://social.example.net/about", InvalidTarget, r"not a Mastodon or Bluesky profile URL"),
])
async def test_failures_are_typed_and_one_line(collection: Collection, social_api: HttpFixture, kind: str, value: str,
                                               error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        await _collect(collection, kind, value)
    if error is CollectorError:  # the source's failure, not the request's
        assert not isinstance(raised.value, InvalidTarget | TargetRefused)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("text", "platform", "expected"), [
    ("@lanternfish@social.example.net", "", MASTODON),
    ("  @Lanternfish@SOCIAL.Example.Net ", "", MASTODON),  # case and spaces
    ("lanternfish@social.example.net", "mastodon", MASTODON),  # e-mail shaped: the platform says it is not one
    ("@user@bücher.example", "", "@user@xn--bcher-kva.example"),  # IDN instance: A-labels
    ("@user@xn--bcher-kva.example", "mastodon", "@user@xn--bcher-kva.example"),
    ("@first.last@mastodon.example.org", "", "@first.last@mastodon.example.org"),
    ("@lanternfishlabs.bsky.social", "", BLUESKY),
    ("lanternfishlabs.bsky.social", "bluesky", BLUESKY),
    ("@LanternfishLabs.bsky.social", "bluesky", BLUESKY),
    ("@lanternfish-labs.net", "", "@lanternfish-labs.net"),  # a custom-domain handle
    (BLUESKY_DID, "", f"@{BLUESKY_DID}"),
    (f"@{BLUESKY_DID}", "bluesky", f"@{BLUESKY_DID}"),
    ("did:web:lanternfish-labs.net", "", "@did:web:lanternfish-labs.net"),
    ("https://social.example.net/@lanternfish", "", MASTODON),
    ("https://social.example.net/@lanternfish", "mastodon", MASTODON),
    ("https://bsky.app/profile/lanternfishlabs.bsky.social", "bluesky", BLUESKY),
])
def test_parse_account_accepts(text: str, platform: str, expected: str) -> None:
    assert parse_account(text, platform) == expected


@pytest.mark.parametrize(("text", "platform", "message"), [
    ("lanternfish@social.example.net", "", "reads as an e-mail address"),
    ("lanternfish@social.example.net", "bluesky", "reads as an e-mail address"),
    ("@a@b@c", "", "more than two '@'"),
    ("@a@b.example@c.example", "", "more than two '@'"),
    ("lanternfishlabs.bsky.social", "", "reads as a domain name"),
    ("@lanternfish", "", "names no server"),
    ("", "", "cannot be empty"),
    ("@user@social.example.net:8443", "", "not an instance's host name"),
    ("@user@social.example.net/path", "", "not an instance's host name"),
    ("@user@203.0.113.7", "", "not an instance's host name"),
    ("@user@[2001:db8::1]", "", "not an instance's host name"),
    ("@user@localhost", "", "not an instance's host name"),
    ("@user@mastodon.local", "", "not an instance's host name"),
    ("@us er@social.example.net", "", "not a valid fediverse user name"),
    ("@-user@social.example.net", "", "not a valid fediverse user name"),
    ("@handle.invalid", "", "not a valid Bluesky handle"),
    ("@bad_label.bsky.social", "", "not a valid Bluesky handle"),
    ("@lanternfish@social.example.net", "bluesky", "is a mastodon account, not a bluesky one"),
    ("@lanternfishlabs.bsky.social", "mastodon", "is a bluesky account, not a mastodon one"),
    ("did:plc:tooshort", "", "not a Bluesky DID"),
    ("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "", "not a Bluesky DID"),
    ("https://social.example.net/@lanternfish/113287654321098765", "", "profile URL"),  # a post, not a profile
    ("https://example.com/about", "", "profile URL"),
    ("@user@social.example.net", "twitter", "unknown platform"),
])
def test_parse_account_refuses(text: str, platform: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_account(text, platform)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://social.example.net/@lanternfish", MASTODON),
    ("https://social.example.net/@lanternfish/", MASTODON),
    ("https://social.example.net/@Lanternfish?utm_source=feed#top", MASTODON),
    ("https://social.example.net/users/lanternfish", MASTODON),  # the ActivityPub actor
    ("http://social.example.net:8080/@lanternfish", MASTODON),  # a port is not part of the account
    ("https://social.example.net/@nightjar@infosec.example.org", "@nightjar@infosec.example.org"),  # a remote account
    ("https://social.example.net/%40lanternfish", MASTODON),
    ("https://bsky.app/profile/lanternfishlabs.bsky.social", BLUESKY),
    ("https://bsky.app/profile/LanternfishLabs.bsky.social/", BLUESKY),
    (f"https://bsky.app/profile/{BLUESKY_DID}", f"@{BLUESKY_DID}"),
    ("https://social.example.net/@lanternfish/113287654321098765", None),  # a post
    (f"{BLUESKY_PROFILE}/post/3m2xbf7qk4s2a", None),
    ("https://bsky.app/search?q=phishing", None),
    ("https://bsky.app/@lanternfish", None),  # bsky.app is not a fediverse server
    ("https://medium.com/@lanternfish", None),  # nor is Medium, whose pages are /@name too
    ("https://www.youtube.com/@lanternfish", None),
    ("https://social.example.net/about", None),
    ("https://social.example.net/users/lanternfish/statuses/113287654321098765", None),
    ("https://user:pw@social.example.net/@lanternfish", None),
    ("ftp://social.example.net/@lanternfish", None),
    ("https://203.0.113.7/@lanternfish", None),
    ("https://social.example.net:notaport/@lanternfish", None),
    ("not a url", None),
])
def test_profile_account(url: str, expected: str | None) -> None:
    assert profile_account(url) == expected


def test_account_platform() -> None:
    assert [account_platform(value) for value in (MASTODON, BLUESKY, f"@{BLUESKY_DID}", "lanternfish", "a@b.c")] == [
        "mastodon", "bluesky", "bluesky", "", ""]
