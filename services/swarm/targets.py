"""What an analyst's target is: its kind, its canonical value and its STIX type.

The swarm picks its playbook, its default scope and the collectors it calls from the kind, so a
wrong guess sends the investigation the wrong way. Inference is therefore conservative: a value is
typed only when its syntax leaves one reading (a checksum-valid wallet, an IP address, a name whose
TLD the Public Suffix List knows), and a bare word ("PaleMoth") is refused rather than guessed to be
a threat actor or a malware family: the analyst says which with ``target_type``.

Canonical values are what the graph and the collectors match on: hosts as lower-case IDNA A-labels
(``пример.рф`` is ``xn--e1afmkfd.xn--p1ai``), hashes and Ethereum addresses in lower case, IPv6
compressed, defanged spellings (``hxxp``, ``[.]``, ``(.)``) fanged. No network, no I/O beyond the
Public Suffix List bundled with the ``tld`` package (read once, on first use).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from typing import Final, Protocol

import idna
from tld import get_tld
from tld.exceptions import TldBadUrl, TldDomainNotFound

from bev.social_accounts import parse_account
from bev.stix import account_of
from bev.wallets import BASE58_ADDRESS, is_valid_bitcoin_address, is_valid_ethereum_address

__all__ = [
    "KINDS",
    "MAX_TARGET_LENGTH",
    "STIX_TYPES",
    "Target",
    "UntypableTarget",
    "infer_target",
    "is_valid_bitcoin_address",
    "is_valid_ethereum_address",
    "normalise_host",
    "public_suffix",
    "refang",
    "registrable_domain",
]

MAX_TARGET_LENGTH: Final = 2048

# Kind -> the STIX type the collectors and the graph know it by.
STIX_TYPES: Final[dict[str, str]] = {
    "domain": "domain-name",
    "url": "url",
    "ipv4": "ipv4-addr",
    "ipv6": "ipv6-addr",
    "email": "email-addr",
    "btc": "x-crypto-address",
    "eth": "x-crypto-address",
    "md5": "file",
    "sha1": "file",
    "sha256": "file",
    "threat-actor": "threat-actor",
    "malware": "malware",
    "account": "user-account",
}
KINDS: Final[tuple[str, ...]] = tuple(STIX_TYPES)
NETWORK_KINDS: Final = frozenset({"domain", "url", "ipv4", "ipv6", "email", "account"})

# Declared STIX names -> the kinds they may be (several: the value decides which).
_DECLARED: Final[dict[str, tuple[str, ...]]] = {
    **{kind: (kind,) for kind in KINDS},
    "domain-name": ("domain",),
    "ipv4-addr": ("ipv4",),
    "ipv6-addr": ("ipv6",),
    "email-addr": ("email",),
    "x-crypto-address": ("btc", "eth"),
    "file": ("md5", "sha1", "sha256"),
    "intrusion-set": ("threat-actor",),
    "user-account": ("account",),
    "mastodon": ("account",),
    "bluesky": ("account",),
}
_ACCEPTED: Final = ", ".join(_DECLARED)

_URL_SCHEMES: Final = frozenset({"http", "https", "ftp"})
_HASH_KINDS: Final = {32: "md5", 40: "sha1", 64: "sha256"}

_HEX = re.compile(r"[0-9a-fA-F]+")
_ETH = re.compile(r"0x[0-9a-fA-F]{40}")
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
# An ASCII label: letters, digits, hyphens inside, and the underscore DNS names carry in practice.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A TLD: letters, or an IDNA A-label; never all digits (a host ending in a number is an IPv4 address
# to URL parsers: "0x7f.1" and "2130706433" both reach 127.0.0.1).
_TLD = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")

# Defanged spellings as threat reports write them.
_DEFANGED_DOT = re.compile(r"\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\{dot\}", re.IGNORECASE)
_DEFANGED_AT = re.compile(r"\[@\]|\(@\)|\[at\]|\(at\)", re.IGNORECASE)
_DEFANGED_COLON = re.compile(r"\[:\]|\(:\)")
_DEFANGED_SCHEME = re.compile(r"^(?:hxxp|hXXp|hxXp|hXxp|h\*\*p|meow)(s?)(?=\[?:)", re.IGNORECASE)
_DEFANGED_FTP = re.compile(r"^fxp(?=\[?:)", re.IGNORECASE)
# Invisible direction overrides and isolates (Trojan Source): they make a value read other than it is.
_BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class UntypableTarget(ValueError):
    """The target is empty, malformed, or not one of the kinds the swarm investigates."""


@dataclass(frozen=True)
class Target:
    """A typed target: ``kind`` (one of :data:`KINDS`), the canonical ``value`` and its STIX type."""

    kind: str
    value: str
    stix_type: str

    @property
    def host(self) -> str | None:
        """The host name or IP address a network target points at (None for wallets, hashes, names)."""
        match self.kind:
            case "domain" | "ipv4" | "ipv6":
                return self.value
            case "email":
                return self.value.rpartition("@")[2]
            case "url":
                return _url_host(self.value)
            case "account":  # a fediverse account lives on its instance; a Bluesky one behind a fixed API
                account_type, login = account_of(self.value)
                return login.rpartition("@")[2] if account_type == "mastodon" else None
            case _:
                return None


def infer_target(value: str, declared: str = "") -> Target:
    """Type and normalise ``value``; ``declared`` (a kind or a STIX type name) is checked, not trusted.

    Raises :class:`UntypableTarget` with a one-line message naming what was tried.
    """
    trimmed = _checked(value)
    wanted = declared.strip().lower()
    if wanted:
        kinds = _DECLARED.get(wanted)
        if kinds is None:
            raise UntypableTarget(f"unknown target_type {declared.strip()[:40]!r}; accepted: {_ACCEPTED}")
        if kinds[0] in ("threat-actor", "malware"):
            return Target(kinds[0], _name(trimmed), STIX_TYPES[kinds[0]])
        if kinds[0] == "account":
            try:
                platform = wanted if wanted in ("mastodon", "bluesky") else ""
                return Target("account", parse_account(trimmed, platform), STIX_TYPES["account"])
            except ValueError as error:
                raise UntypableTarget(f"{_shown(trimmed)} is not a social account: {error}") from None
        fanged = refang(trimmed)
        problems: list[str] = []
        for kind in kinds:
            try:
                return Target(kind, _PARSERS[kind](fanged), STIX_TYPES[kind])
            except ValueError as error:
                problems.append(str(error))
        raise UntypableTarget(f"{_shown(trimmed)} is not a valid {wanted}: {'; '.join(problems)}; "
                              f"accepted target_type values: {_ACCEPTED}")
    fanged = refang(trimmed)
    if fanged.startswith("@") and fanged.count("@") == 2:  # @user@instance: a fediverse account, one reading
        try:
            return Target("account", parse_account(fanged, "mastodon"), STIX_TYPES["account"])
        except ValueError as error:
            raise UntypableTarget(f"{_shown(trimmed)} looks like a fediverse account but is not one: {error}") from None
    for kind in _INFERENCE_ORDER:
        try:
            return Target(kind, _PARSERS[kind](fanged, inferring=True), STIX_TYPES[kind])
        except ValueError:
            continue
    raise UntypableTarget(
        f"cannot infer the type of {_shown(trimmed)}{_hint(fanged)}: tried URL (http, https, ftp), IPv4, IPv6, "
        f"email, @user@instance account, bitcoin and ethereum address, md5/sha1/sha256 hash and domain (a TLD "
        f"the Public Suffix List knows); a threat actor or malware name, or a Bluesky handle, needs "
        f"target_type; accepted: {_ACCEPTED}"
    )


def _checked(value: str) -> str:
    trimmed = value.strip()
    if not trimmed:
        raise UntypableTarget(f"the target is empty; accepted target_type values: {_ACCEPTED}")
    if len(trimmed) > MAX_TARGET_LENGTH:
        raise UntypableTarget(f"the target is {len(trimmed)} characters, over the limit of {MAX_TARGET_LENGTH}; "
                              f"accepted target_type values: {_ACCEPTED}")
    for char in trimmed:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") or char in _BIDI_CONTROLS:
            raise UntypableTarget(f"the target holds the control character U+{ord(char):04X}; "
                                  f"accepted target_type values: {_ACCEPTED}")
    return trimmed


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _hint(fanged: str) -> str:
    """Why a near miss failed, so the analyst can fix a typo rather than guess a target_type."""
    if BASE58_ADDRESS.fullmatch(fanged) or fanged[:4].lower() == "bc1q" or fanged[:4].lower() == "bc1p":
        return " (it looks like a bitcoin address but its checksum fails)"
    if _ETH.fullmatch(fanged):
        return " (it looks like an ethereum address but its EIP-55 mixed-case checksum fails)"
    if "." in fanged and " " not in fanged:
        try:
            host = normalise_host(fanged)
        except ValueError:
            return ""
        return f" (a host name, but its TLD .{host.rpartition('.')[2]} is not in the Public Suffix List)"
    return ""


def refang(value: str) -> str:
    """Undo the defanging threat reports apply (``hxxp``, ``[.]``, ``(.)``, ``[at]``, ``[:]``)."""
    value = _DEFANGED_DOT.sub(".", value)
    value = _DEFANGED_AT.sub("@", value)
    value = _DEFANGED_COLON.sub(":", value)
    value = _DEFANGED_SCHEME.sub(lambda match: "http" + match.group(1).lower(), value)
    return _DEFANGED_FTP.sub("ftp", value)


def _name(value: str) -> str:
    """A threat actor or malware name: NFC, inner whitespace runs collapsed, case kept (it is a name)."""
    return " ".join(unicodedata.normalize("NFC", value).split())


# --- hosts ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def normalise_host(host: str) -> str:
    """A DNS name in canonical form: UTS #46 mapped, lower case, A-labels, no trailing dot.

    ValueError when it is not a valid name (labels of LDH characters or underscores, at most 63
    octets each and 253 in all, at least two labels, a TLD of letters or an A-label).
    """
    if not host or host != host.strip():
        raise ValueError("empty or padded host name")
    if host.isascii():
        mapped = host.lower()
    else:
        try:  # full-width dots and letters, upper case: what browsers map before resolving
            mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except (UnicodeError, ValueError) as error:
            raise ValueError(f"not a valid IDNA host name: {error}") from error
    if mapped.endswith("."):
        mapped = mapped[:-1]
    labels = mapped.split(".")
    ascii_labels: list[str] = []
    for label in labels:
        if label.isascii():
            if not _ASCII_LABEL.fullmatch(label):
                raise ValueError(f"label {label!r} is not a valid host name label")
            if label.startswith("xn--"):
                _check_a_label(label)
            ascii_labels.append(label)
        else:
            try:
                ascii_labels.append(idna.encode(label).decode("ascii"))
            except (UnicodeError, ValueError) as error:  # idna.IDNAError and its subclasses
                raise ValueError(f"label {label!r} is not valid IDNA: {error}") from error
    name = ".".join(ascii_labels)
    if len(ascii_labels) < 2:
        raise ValueError("a single-label name (no dot)")
    if len(name) > 253:
        raise ValueError("longer than 253 characters")
    if not _TLD.fullmatch(ascii_labels[-1]):
        raise ValueError(f"TLD {ascii_labels[-1]!r} is not letters or an A-label")
    return name


def _check_a_label(label: str) -> None:
    """An ``xn--`` label must be the one canonical Punycode of a valid U-label."""
    try:
        decoded = idna.decode(label)
        canonical = idna.encode(decoded).decode("ascii") == label
    except (UnicodeError, ValueError) as error:
        raise ValueError(f"label {label!r} is not a valid A-label: {error}") from error
    if not canonical:
        raise ValueError(f"label {label!r} is not in canonical A-label form")


@functools.lru_cache(maxsize=4096)
def public_suffix(host: str) -> str | None:
    """The longest Public Suffix List rule (ICANN and private sections) matching a canonical host.

    None when no rule does (an unknown TLD such as ``.internal``, where the PSL's implicit ``*``
    rule would make the TLD the suffix).
    """
    # The PSL writes its rules in U-labels, and ``tld`` matches them only so spelled: look the name
    # up in Unicode, then take as many labels of the A-label form as the matched rule has.
    labels = host.split(".")
    try:
        unicode_host = ".".join(_u_label(label) for label in labels)
        result = get_tld(unicode_host, fix_protocol=True, as_object=True)
    except (TldDomainNotFound, TldBadUrl, ValueError):
        return None
    suffix = getattr(result, "tld", None)
    if not isinstance(suffix, str) or not suffix:
        return None
    return ".".join(labels[-len(suffix.split(".")) :])


def _u_label(label: str) -> str:
    return idna.decode(label) if label.startswith("xn--") else label


def registrable_domain(host: str) -> str | None:
    """The public suffix plus one label (``browser-update.example.com`` -> ``example.com``).

    Unknown TLDs follow the PSL's implicit ``*`` rule (``a.corp.internal`` -> ``corp.internal``);
    None when the host is itself a public suffix (``co.uk``, ``github.io``).
    """
    suffix = public_suffix(host) or host.rpartition(".")[2]
    if host == suffix or not host.endswith("." + suffix):
        return None
    return host[: -len(suffix) - 1].rpartition(".")[2] + "." + suffix


# --- one parser per kind: canonical value, or ValueError saying why not ---------------------------


def _parse_domain(value: str, inferring: bool = False) -> str:
    host = normalise_host(value)
    if inferring and public_suffix(host) is None:
        raise ValueError(f"TLD {host.rpartition('.')[2]!r} is not in the Public Suffix List")
    return host


def _parse_ipv4(value: str, inferring: bool = False) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as error:
        raise ValueError(f"not an IPv4 address ({error})") from error


def _parse_ipv6(value: str, inferring: bool = False) -> str:
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError as error:
        raise ValueError(f"not an IPv6 address ({error})") from error
    if address.scope_id:
        raise ValueError("an IPv6 address with a zone index (%...) names a local interface")
    return str(address)


def _parse_email(value: str, inferring: bool = False) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not _EMAIL_LOCAL.fullmatch(local) or len(local) > 64:
        raise ValueError("not an email address (ASCII local@domain)")
    return f"{local}@{_parse_domain(domain, inferring)}"


def _parse_url(value: str, inferring: bool = False) -> str:
    scheme_match = _SCHEME.match(value)
    if not scheme_match or scheme_match.group(1).lower() not in _URL_SCHEMES:
        raise ValueError("not a URL with an http, https or ftp scheme")
    if "\\" in value or any(char.isspace() for char in value):
        raise ValueError("a URL with a backslash or whitespace")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"not a valid URL ({error})") from error
    if not value[scheme_match.end() :].startswith("//") or not parts.hostname:
        raise ValueError("a URL without a host")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = parts.hostname
    if hostport.startswith("["):
        host_text = f"[{_parse_ipv6(host)}]"
    else:
        try:
            host_text = _parse_ipv4(host)
        except ValueError:
            host_text = normalise_host(urllib.parse.unquote(host) if "%" in host else host)
    netloc = (userinfo + "@" if userinfo else "") + host_text + (f":{port}" if port is not None else "")
    # Non-ASCII in the path, query and fragment as UTF-8 percent escapes (RFC 3987 section 3.1).
    path, query, fragment = (_ascii_escaped(part) for part in (parts.path, parts.query, parts.fragment))
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, path or "/", query, fragment))


def _ascii_escaped(part: str) -> str:
    return part if part.isascii() else urllib.parse.quote(part, safe="".join(map(chr, range(0x21, 0x7F))))


def _url_host(url: str) -> str | None:
    hostname = urllib.parse.urlsplit(url).hostname
    return hostname or None


def _parse_btc(value: str, inferring: bool = False) -> str:
    if not is_valid_bitcoin_address(value):
        raise ValueError("not a mainnet bitcoin address with a valid checksum (1..., 3..., bc1...)")
    return value.lower() if value[:3].lower() == "bc1" else value


def _parse_eth(value: str, inferring: bool = False) -> str:
    if not is_valid_ethereum_address(value):
        raise ValueError("not an ethereum address (0x + 40 hex digits, EIP-55 checksum when mixed case)")
    return value.lower()


class _Parser(Protocol):
    def __call__(self, value: str, inferring: bool = False) -> str: ...


def _hash_parser(kind: str, length: int) -> _Parser:
    def parse(value: str, inferring: bool = False) -> str:
        if len(value) != length or not _HEX.fullmatch(value):
            raise ValueError(f"not a {kind} hash ({length} hex digits)")
        return value.lower()

    return parse


_PARSERS: Final[dict[str, _Parser]] = {
    "url": _parse_url,
    "ipv4": _parse_ipv4,
    "ipv6": _parse_ipv6,
    "email": _parse_email,
    "btc": _parse_btc,
    "eth": _parse_eth,
    "md5": _hash_parser("md5", 32),
    "sha1": _hash_parser("sha1", 40),
    "sha256": _hash_parser("sha256", 64),
    "domain": _parse_domain,
}
# A checksum-valid wallet before the hex hashes (a 32-character base58 string can be all hex
# digits), the hashes before domains (none has a dot), domains last.
_INFERENCE_ORDER: Final = ("url", "ipv4", "ipv6", "email", "btc", "eth", "md5", "sha1", "sha256", "domain")
