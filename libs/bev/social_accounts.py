"""Social-media accounts as BEV writes them, shared by the swarm, the gateway and the social collector.

The canonical value of an account (what ``bev.stix.account_of`` reads, and what a STIX user-account's
id is derived from) is:

* ``@user@instance``: a fediverse account (Mastodon, or any server speaking its API), lower case,
  the instance's host as IDNA A-labels, never a port (the instance is reached on its default port,
  or through the collectors' ``social.mastodon_base_url``);
* ``@handle.domain``: a Bluesky account by its AT Protocol handle (a domain name), lower case;
* ``@did:plc:...`` / ``@did:web:...``: a Bluesky account by its DID, accepted as a lookup key. The
  social collector resolves it and reports the account under its handle (the DID becomes its
  ``user_id``); ``account_of`` gives such a value no account type.

``user@host`` without the leading ``@`` reads as an e-mail address, and ``name.domain`` as a domain
name, so either is an account only when the caller says which platform it is on.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import idna

__all__ = ["PLATFORMS", "account_platform", "parse_account", "profile_account"]

PLATFORMS = ("mastodon", "bluesky")

# Mastodon's username syntax (app/models/account.rb USERNAME_RE); other fediverse servers use a subset.
_USER_RE = re.compile(r"[a-z0-9_]+(?:[.-]+[a-z0-9_]+)*")
_MAX_USER = 64
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# did:plc is 24 base32 characters; did:web is a host name (a port would be %3A-encoded: refused).
_DID_PLC_RE = re.compile(r"did:plc:[a-z2-7]{24}")
# Names that never reach a public server: refused as instances and handles.
_LOCAL_TLDS = frozenset({"local", "localhost", "internal", "arpa", "invalid", "home", "lan"})
# AT Protocol handles may not end so (the handle spec's disallowed TLDs; "handle.invalid" is the
# AppView's placeholder for an unverified handle).
_BLUESKY_REFUSED_TLDS = _LOCAL_TLDS | {"onion", "alt"}
# Sites with /@name pages that are not fediverse servers: their URLs are not profile URLs here.
_NOT_FEDIVERSE = ("medium.com", "youtube.com", "tiktok.com", "threads.net", "threads.com", "substack.com")
BLUESKY_WEB = "bsky.app"


def _host(text: str) -> str | None:
    """A DNS host name in canonical form (lower case, A-labels), or None: no IP literal, port or path."""
    name = text.strip().lower()
    if not name or len(name) > 253 or name.endswith("."):
        return None
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, std3_rules=True).decode("ascii")
        except (UnicodeError, ValueError):  # idna.IDNAError and its subclasses
            return None
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    if not labels[-1][0].isalpha() or labels[-1] in _LOCAL_TLDS:  # an all-digit TLD is an IPv4 address
        return None
    for label in labels:
        if label.startswith("xn--"):  # only the one canonical spelling of a valid U-label
            try:
                if idna.encode(idna.decode(label)).decode("ascii") != label:
                    return None
            except (UnicodeError, ValueError):
                return None
    return name


def _user(text: str) -> str | None:
    user = text.lower()
    return user if len(user) <= _MAX_USER and _USER_RE.fullmatch(user) else None


def _handle(text: str) -> str | None:
    """An AT Protocol handle (a domain name, ASCII after IDNA), or None."""
    host = _host(text)
    if host is None or host.rsplit(".", 1)[1] in _BLUESKY_REFUSED_TLDS:
        return None
    return host


def _did(text: str) -> str | None:
    did = text.strip()
    if _DID_PLC_RE.fullmatch(did):
        return did
    if did.startswith("did:web:"):
        host = _host(did.removeprefix("did:web:"))
        return f"did:web:{host}" if host is not None else None
    return None


def account_platform(account: str) -> str:
    """"mastodon" or "bluesky" for a canonical account value (parse_account's answer), else ""."""
    if account.startswith("@") and account.count("@") == 2:
        return "mastodon"
    if account.startswith("@") and "@" not in account[1:] and ("." in account or account.startswith("@did:")):
        return "bluesky"
    return ""


def parse_account(text: str, platform: str = "") -> str:
    """The canonical value (module doc) of an account written as ``@user@instance``, ``@handle.domain``,
    a DID, or a profile URL (see profile_account). ``platform`` ("mastodon" or "bluesky") lets
    ``user@instance`` and ``handle.domain`` through, and must agree with the account otherwise.
    ValueError, one line, when it is none of these."""
    if platform not in ("", *PLATFORMS):
        raise ValueError(f"unknown platform {platform[:40]!r}; one of {', '.join(PLATFORMS)}")
    value = text.strip()
    shown = repr(value[:80])
    if not value:
        raise ValueError("an account cannot be empty")
    if "://" in value:
        account = profile_account(value)
        if account is None:
            raise ValueError(f"{shown} is not a Mastodon (https://host/@user) or Bluesky "
                             f"(https://{BLUESKY_WEB}/profile/handle) profile URL")
    else:
        account = _written_account(value, platform, shown)
    if platform and account_platform(account) != platform:
        raise ValueError(f"{shown} is a {account_platform(account)} account, not a {platform} one")
    return account


def _written_account(value: str, platform: str, shown: str) -> str:
    bare = value.removeprefix("@")
    if bare.startswith("did:"):
        did = _did(bare)
        if did is None:
            raise ValueError(f"{shown} is not a Bluesky DID (did:plc:<24 base32 characters> or did:web:<host>)")
        return f"@{did}"
    if "@" in bare:
        if not value.startswith("@") and platform != "mastodon":
            raise ValueError(f"{shown} reads as an e-mail address: write @user@instance for a fediverse "
                             f"account, or give platform mastodon")
        user_part, _, host_part = bare.partition("@")
        if "@" in host_part:
            raise ValueError(f"{shown} has more than two '@': a fediverse account is @user@instance")
        user, host = _user(user_part), _host(host_part)
        if user is None:
            raise ValueError(f"{shown}: {user_part[:64]!r} is not a valid fediverse user name")
        if host is None:
            raise ValueError(f"{shown}: {host_part[:80]!r} is not an instance's host name (no port, path or address)")
        return f"@{user}@{host}"
    if "." not in bare:
        raise ValueError(f"{shown} names no server: a fediverse account is @user@instance, a Bluesky one "
                         f"@handle.domain")
    if not value.startswith("@") and platform != "bluesky":
        raise ValueError(f"{shown} reads as a domain name: write @{bare[:80]} for a Bluesky handle, or give "
                         f"platform bluesky")
    handle = _handle(bare)
    if handle is None:
        raise ValueError(f"{shown} is not a valid Bluesky handle (a domain name)")
    return f"@{handle}"


def profile_account(url: str) -> str | None:
    """The account a profile page's URL names, or None when the URL is not one:

    * ``https://host/@user`` and ``https://host/users/user`` (the ActivityPub actor): ``@user@host``;
    * ``https://host/@user@remote`` (a server's page for a remote account): ``@user@remote``;
    * ``https://bsky.app/profile/<handle or DID>``: ``@<handle>`` / ``@did:...``.

    http or https; a trailing slash, query and fragment are ignored, and so is a port (the
    instance's API is found through configuration, not through the page's address). A post's URL
    (``/@user/<id>``, ``/profile/<handle>/post/<rkey>``) is not a profile URL."""
    try:
        parts = urlsplit(url.strip())
        if parts.port == 0:  # reading it raises ValueError for a port that is not a number
            return None
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or parts.username is not None or parts.password is not None:
        return None
    host = _host(parts.hostname or "")
    if host is None:
        return None
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    segments = [unquote(segment) for segment in path.split("/")[1:]]
    if host == BLUESKY_WEB:
        if len(segments) == 2 and segments[0] == "profile":
            actor = _did(segments[1]) if segments[1].startswith("did:") else _handle(segments[1])
            return f"@{actor}" if actor is not None else None
        return None
    if any(host == name or host.endswith(f".{name}") for name in _NOT_FEDIVERSE):
        return None
    if len(segments) == 1 and segments[0].startswith("@"):
        user_part, _, remote = segments[0][1:].partition("@")
        user, home = _user(user_part), (_host(remote) if remote else host)
        return f"@{user}@{home}" if user is not None and home is not None else None
    if len(segments) == 2 and segments[0] == "users":
        user = _user(segments[1])
        return f"@{user}@{host}" if user is not None else None
    return None
