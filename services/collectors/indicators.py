"""Indicator (IOC) extraction from free text: threat reports, pastes, feeds, collected pages.

Design: refang, one scan for candidates, validation of candidates only.

1. :func:`refang` rewrites defanged separators in one pass of one alternation regex (every branch
   starts with a literal, so the regex engine skips to the next possible token in C), the
   replacement chosen by a dict lookup on the branch that matched: ``[.] (.) {.} [dot] (dot) [,]
   <.> \\.`` and half-bracketed dots between two letters or digits (``evil[.com``, ``1.]1``,
   ``evil .]com``) become ``.``; ``[at] (at) {at} [@] (@) @} ␣@␣`` become ``@`` (a word needs both
   brackets, so prose like ``(at least)``, ``(dot com)`` or ``(.NET)`` stays as it is); ``[/] (/) \\/``
   become ``/``; ``[:]`` ``:``; ``[://] :\\\\ :/// ://␣`` ``://``; ``[-]`` ``-``; defanged scheme
   words before a separator (``hxxp hXXps HXXP h__ps h**p h[tt]p fxp ftx xxxx xxxxs``, any case)
   become ``http``, ``https`` or ``ftp``, and ``http__``/``h__ps__`` gain their ``://``.
2. One combined, linear candidate pattern (possessive quantifiers, a named group per shape) finds
   URLs with a scheme (also ``%3A%2F%2F``-encoded, hex- and base64-encoded ``http(s)://``), emails,
   CVEs, Ethereum addresses, IPv6, hash-length hex runs, dotted names (domains, IPv4, scheme-less
   URLs) and Bitcoin shapes. Each shape is bounded by look-arounds so a run is taken whole or not
   at all: a 0x-prefixed 40-hex run is an Ethereum address and never a SHA-1, a 41-hex run is no hash.
   Every branch starts with a character class and ends with an empty marker group (``lastgroup``
   names the shape), so the engine rejects a branch on one character; an email and a dotted name
   are told apart in one pass over the word. Each distinct candidate string is validated once.
3. Only candidates are validated: ``ipaddress`` for IPs (``::`` alone and one-group forms such as
   ``add::`` are not reported), ioc-finder's IANA TLD list (``TLD_SET``) for names (a dotted run
   is cut after its rightmost TLD label), Base58Check/Bech32(m) checksums via
   ``bev.wallets.is_valid_bitcoin_address``, exact lengths for hashes (32/40/64/128). A URL's host
   is reported too (domain or IP), as is an email's (``@user@host``, a Fediverse handle, gives the
   host only); a URL's query or fragment, percent-decoded, is scanned for further names (redirect
   targets; reported as names, not as second URLs). Names keep to DNS limits (253, labels 1-63). URLs keep brackets only when balanced
   (``(see http://a.com/x_(y))`` keeps ``_(y)``), and lose trailing sentence punctuation.

Type names (the ``type`` of :class:`Indicator`, in the order results are sorted):
``ipv4, ipv6, domain, url, email, md5, sha1, sha256, sha512, cve, btc_address, eth_address``.
Canonical values: hashes lower case, CVEs upper case, IPv6 compressed, emails lower case, URL
scheme and host lower case (path kept), scheme-less URLs stay scheme-less (``evil.com/x``); a name
with nothing after its slash (``evil.com/``) or an IPv4 CIDR (``10.0.0.0/8``) is not a URL.

Limits (not covered): bare-word defangs (``fooATexample.com``, ``foo-dot-com``, ``example DOT
com``, ``me at example dot com``), since they rewrite ordinary words and base64 or wallet strings;
Cisco ESA-style spaces around a bare dot or before the path (``http:// example .com /path``); a
space before ``@`` on one side only (``me @example``: a handle). Refanging never touches the
inside of base64 blobs or wallets: every token it rewrites needs a bracket, a backslash or a
scheme separator, which neither holds.

Internationalised domain names (IDN)
------------------------------------
Text that is not pure ASCII first has each host written in Unicode rewritten to its ASCII form:
IDNA 2008 A-labels, mapped per UTS #46 (non-transitional: ``ß`` stays ``ß``) by ``idna``. Defanged
separators are fanged on the way; a Unicode TLD becomes the A-label the IANA list holds (``рф`` is
``xn--p1ai``); the non-ASCII characters of a URL's path, query and fragment are percent-encoded as
UTF-8 (RFC 3987 section 3.1), so the URL stays whole too; a non-ASCII email local part is left out
(the address is not reported, its host still is, as a domain). Pure-ASCII text skips all of this.

Canonical form: the ``value`` of a domain, URL or email holds its host as A-labels (``пример.рф`` and
``xn--e1afmkfd.xn--p1ai`` are one indicator, and one STIX node, whose id hashes the value); that is what
DNS, HTTP and mail logs and most feeds carry, so it is what matching needs. ``unicode_value`` holds the
display form (U-labels; a URL's escaped non-ASCII characters decoded) when it differs from ``value``;
:func:`to_ascii_host` and :func:`to_unicode_host` convert one to the other. A name that is not valid
IDNA (a label starting with a combining mark, a right-to-left label mixed with left-to-right letters,
an ``xn--`` label that is not the Punycode of a valid label) is not reported at all: never in part.

Homoglyphs: a host with a label that mixes scripts (beyond what UTS #39's "highly restrictive" level
allows: Latin with Han and kana, with Han and Bopomofo, with Han and Hangul), or whose every non-ASCII
character has an ASCII look-alike (a whole-script spoof like ``\u0430\u0440\u0440\u04cf\u0435.com``), carries a
:class:`Homoglyph` in ``homoglyph``: the scripts of its letters, whether a label mixes them, and the
ASCII name it imitates (its confusable skeleton, e.g. ``example.com``). Script and confusable data come
from ``confusable_homoglyphs`` (Unicode's Scripts.txt and confusables.txt); Punycode hosts are decoded
and checked the same way (``xn--pypal-4ve.com`` is ``p\u0430ypal.com``).

Limits: the TLD must be in the IANA list, in either form and exactly as for ASCII names, so
names under the reserved ``.example``, ``.test`` or ``.テスト`` are not reported. Labels are separated by
``.``, never by the ideographic full stop ``。``, which ends sentences in CJK text. Scripts written
without spaces (Han, kana, Hangul, Thai...) cannot tell a name from the words glued to it: such letters
right before an ASCII letter (``访问google.com``) are taken as text, not as the start of the name.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import string
import unicodedata
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_plus

import idna
from ioc_finder.ioc_grammars import TLD_SET

from bev.wallets import is_valid_bitcoin_address

INDICATOR_TYPES: tuple[str, ...] = (
    "ipv4",
    "ipv6",
    "domain",
    "url",
    "email",
    "md5",
    "sha1",
    "sha256",
    "sha512",
    "cve",
    "btc_address",
    "eth_address",
)

_TYPE_ORDER = {name: index for index, name in enumerate(INDICATOR_TYPES)}

# --- Refanging ---------------------------------------------------------------------------------------

_OPEN, _CLOSE = r"[\[({]", r"[\])}]"
_DOT = r"(?:\.|,|[dD][oO][tT])"
_AT = r"(?:@|[aA][tT])"
_ALNUM = "A-Za-z0-9"
# Half brackets count only between two letters or digits; 'at' needs both brackets.
_REFANG_RE = re.compile(
    # Alternatives are grouped by their first character, which is a literal (so the engine skips to the
    # next possible token in C and tries one group there); the empty named group that ends each
    # alternative picks the replacement (``lastgroup``).
    rf"\[(?:(?<=[{_ALNUM}]\[) {{0,3}}\.(?=[{_ALNUM}])(?P<dot_d>)| {{0,3}}(?:{_DOT} {{0,3}}{_CLOSE}(?P<dot_a>)"
    rf"|(?:{_AT} {{0,3}}{_CLOSE}|@)(?P<at_a>))|/\](?P<slash_a>)|://\](?P<sep_a>)|:\](?P<colon>)|-\](?P<dash>))"
    rf"|\((?:(?<=[{_ALNUM}]\() {{0,3}}\.(?=[{_ALNUM}])(?P<dot_e>)| {{0,3}}(?:{_DOT} {{0,3}}{_CLOSE}(?P<dot_b>)"
    rf"|(?:{_AT} {{0,3}}{_CLOSE}|@)(?P<at_b>))|/\)(?P<slash_b>))"
    rf"|\{{ {{0,3}}(?:{_DOT} {{0,3}}{_CLOSE}(?P<dot_c>)|(?:{_AT} {{0,3}}{_CLOSE}|@)(?P<at_c>)|/\}}(?P<slash_c>))"
    rf"|\.(?<=[{_ALNUM}]\.){_CLOSE}(?=[{_ALNUM}])(?P<dot_f>)"
    rf"|\\(?:\.{_CLOSE}?(?P<dot_g>)|/(?P<slash_d>))"
    r"|<\.>(?P<dot_h>)"
    rf"|@(?<=[{_ALNUM}]@){_CLOSE} {{0,3}}(?=[{_ALNUM}])(?P<at_d>)"
    r"|:(?<=[A-Za-z]{3}:)(?:\\\\|/{3,}|// {1,3}| {1,3}//)(?P<sep_b>)"
    # Spaces around a bracketed token or a half-bracketed dot, or '@' spaced on both sides.
    rf"|\x20(?=[ \[({{.@]) {{0,2}}(?:(?:{_OPEN} {{0,3}}{_DOT} {{0,3}}{_CLOSE}|\.{_CLOSE}) {{0,3}}(?=[{_ALNUM}])(?P<dot_s>)"
    rf"|(?:{_OPEN} {{0,3}}{_AT} {{0,3}}{_CLOSE}|@ {{1,3}})(?P<at_s>))"
    # Defanged scheme words, only before a separator (which the alternatives above or the URL shape take).
    r"|h(?<![A-Za-z0-9_]h)(?:xx|XX|xX|Xx|__|\*\*|\[tt\])p(?=[sS]?(?::|\[:|__))(?P<http_a>)"
    r"|H(?<![A-Za-z0-9_]H)(?:XX|xx|Xx|xX|__|\*\*|\[TT\])P(?=[sS]?(?::|\[:|__))(?P<http_b>)"
    r"|f(?<![A-Za-z0-9_]f)(?:xp|tx|XP|TX)(?=[sS]?(?::|\[:))(?P<ftp_a>)"
    r"|F(?<![A-Za-z0-9_]F)(?:XP|TX|xp|tx)(?=[sS]?(?::|\[:))(?P<ftp_b>)"
    r"|x(?<![A-Za-z0-9_]x)xxx(?:[xs](?=:|\[:)(?P<https_x>)|(?=:|\[:)(?P<http_x>))"
    # "http__example.com", "h__ps__": the '__' stands for '://'.
    r"|_(?:(?<=[hH][tTxX_*]{2}[pP]_)|(?<=[hH][tTxX_*]{2}[pP][sS]_))_ ?(?P<sep_u>)"
)
_REFANG_REPLACEMENTS = {
    **{name: "." for name in ("dot_a", "dot_b", "dot_c", "dot_d", "dot_e", "dot_f", "dot_g", "dot_h", "dot_s")},
    **{name: "@" for name in ("at_a", "at_b", "at_c", "at_d", "at_s")},
    **{name: "/" for name in ("slash_a", "slash_b", "slash_c", "slash_d")},
    **{name: "://" for name in ("sep_a", "sep_b", "sep_u")},
    "colon": ":", "dash": "-", "http_a": "http", "http_b": "http", "ftp_a": "ftp", "ftp_b": "ftp",
    "https_x": "https", "http_x": "http",
}


def _refang_token(match: re.Match[str]) -> str:
    return _REFANG_REPLACEMENTS[match.lastgroup or ""]


def refang(text: str) -> str:
    """``text`` with defanged separators and scheme words restored, in one pass (see module doc)."""
    return _REFANG_RE.sub(_refang_token, text)


# --- Candidates ----------------------------------------------------------------------------------------

_URL_CHARS = r"[^\s<>\"'`{}|\\^]"
_WORD = r"[A-Za-z0-9_+-]"
_NAME = r"[A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)++"
_IPV6_END = r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?+(?![0-9A-Za-z:]|\.[0-9])"
# Every branch starts with a character class or literal, so the engine rejects it on one character, and
# ends with an empty named group that says which shape matched (``lastgroup``); the value is group 0.
_CANDIDATE_RE = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    # A URL with a scheme; '://' may be percent-encoded (an URL-encoded URL).
    rf"[A-Za-z][A-Za-z0-9+.-]{{0,15}}+(?::|%3[aA])(?://|%2[fF]%2[fF]){_URL_CHARS}++(?P<url>)"
    # Hex- and base64-encoded 'http(s)://' (iocextract's encoded URLs).
    r"|68747470(?:73)?3a2f2f(?:[0-9a-fA-F]{2})++(?![0-9A-Za-z])(?P<hexurl>)"
    r"|aHR0c(?:DovL|HM6Ly)[A-Za-z0-9+/]++={0,2}(?P<b64url>)"
    r"|[cC][vV][eE]-[0-9]{4}-[0-9]{4,7}+(?![0-9])(?P<cve>)"
    r"|0[xX][0-9a-fA-F]{40}(?![0-9A-Za-z])(?P<eth>)"
    # IPv6: hex groups and colons, maybe a dotted IPv4 at the end (validated by ipaddress).
    rf"|[0-9A-Fa-f](?<![:.].)[0-9A-Fa-f]{{0,3}}+:(?:[0-9A-Fa-f]{{0,4}}:){{1,6}}+{_IPV6_END}(?P<ipv6>)"
    rf"|:(?<![:.]:):(?:[0-9A-Fa-f]{{1,4}}:){{0,6}}+{_IPV6_END}(?P<ipv6_c>)"
    r"|[0-9a-fA-F][0-9a-fA-F]{31,127}+(?![0-9A-Za-z])(?P<hex>)"
    # One pass over a dotted word: an email if '@' and a dotted name follow, else (with a dot) a name
    # or IPv4 with what may follow it in a scheme-less URL. '+' is for local parts ('user+tag@').
    rf"|{_WORD}{_WORD}*+(?:(?:\.{_WORD}++)++(?:@{_NAME}(?P<email>)"
    rf"|(?P<host_end>)(?:(?::[0-9]{{1,5}})?/{_URL_CHARS}*+)?(?P<host>))|@{_NAME}(?P<email_1>))"
    r"|[13](?<![+/=].)[1-9A-HJ-NP-Za-km-z]{24,33}+(?![0-9A-Za-z])(?P<btc>)"
    r"|[bB](?<![+/=].)[cC]1[02-9ac-hj-np-zAC-HJ-NP-Z]{8,87}+(?![0-9A-Za-z])(?P<btc_32>)"
    r")"
)
_HASH_TYPES = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_URL_TRAILING_PUNCTUATION = ".,;:!?'\""
_BRACKET_PAIRS = {")": "(", "]": "[", "}": "{"}
_CIDR_TAIL_RE = re.compile(r"/[0-9]{1,2}")
_COMMA_IPV4_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{1,3}){3}(?::[0-9]{1,5})?")
_MAX_NESTING = 2  # encoded URLs inside URLs: decoded and scanned this deep, no deeper


@dataclass(frozen=True)
class Homoglyph:
    """Why a host may imitate another name (see the module doc); its fields are all derived from the host."""

    scripts: tuple[str, ...]  # Unicode script names of its letters, sorted: ("Cyrillic", "Latin")
    mixed_script: bool  # one of its labels mixes scripts (ex\u0430mple: Latin and Cyrillic)
    skeleton: str  # the ASCII name it looks like ("example.com"); "" when some character has no ASCII look-alike


@dataclass(frozen=True, order=True)
class Indicator:
    """One observable found in text; ``value`` is refanged and normalised (hosts as IDNA A-labels).

    ``unicode_value`` and ``homoglyph`` are derived from ``value`` alone, so they take no part in
    equality, hashing or ordering: ``Indicator("domain", "xn--bcher-kva.de")`` equals the extracted one.
    """

    type: str
    value: str
    unicode_value: str = field(default="", compare=False)  # display form (U-labels) when it differs from value
    homoglyph: Homoglyph | None = field(default=None, compare=False)  # domains, URLs, emails whose host looks spoofed


def extract_indicators(text: str) -> list[Indicator]:
    """Return the deduplicated indicators in ``text``, sorted by type (see module doc) then value."""
    found: set[Indicator] = set()
    _scan(text, found, 0)
    return sorted(found, key=lambda item: (_TYPE_ORDER[item.type], item.value))


def _scan(text: str, found: set[Indicator], depth: int) -> None:
    """Add the indicators of ``text`` to ``found``; ``depth`` > 0 for text decoded out of a URL."""
    text = refang(text)
    if not text.isascii():
        text = _asciify_hosts(text)
    seen: set[str] = set()  # reports repeat their indicators: each distinct candidate is validated once
    for match in _CANDIDATE_RE.finditer(text):
        value = match.group(0)
        if value in seen:
            continue
        seen.add(value)
        kind = match.lastgroup
        if kind == "host":
            end = match.start("host_end")
            _add_host_candidate(text[match.start() : end], text[end : match.end()], found, depth)
        elif kind == "url":
            _add_url(value, found, depth)
        elif kind == "email" or kind == "email_1":
            # '@user@host' is a Fediverse handle, not a mailbox: only its host is reported.
            _add_email(value, found, handle=text[match.start() - 1 : match.start()] == "@")
        elif kind == "hex":
            if len(value) in _HASH_TYPES:
                found.add(Indicator(_HASH_TYPES[len(value)], value.lower()))
        elif kind == "ipv6" or kind == "ipv6_c":
            _add_ipv6(value, found)
        elif kind == "cve":
            found.add(Indicator("cve", value.upper()))
        elif kind == "eth":
            found.add(Indicator("eth_address", value.lower()))
        elif kind == "btc" or kind == "btc_32":
            if is_valid_bitcoin_address(value):
                found.add(Indicator("btc_address", value))
        elif (kind == "hexurl" or kind == "b64url") and depth < _MAX_NESTING:
            _scan(_decode_url_blob(kind, value), found, depth + 1)


def _decode_url_blob(kind: str, value: str) -> str:
    """The text a hex- or base64-encoded URL holds, up to its first unprintable character."""
    try:
        raw = bytes.fromhex(value) if kind == "hexurl" else base64.b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        return ""
    decoded = raw.decode("utf-8", "replace")
    printable = re.match(r"[!-~]*", decoded)
    return printable.group(0) if printable else ""


def _add_host_candidate(host: str, tail: str, found: set[Indicator], depth: int) -> None:
    if "+" in host:  # the candidate shape allows '+' for email local parts; a name starts after it
        host, tail = host.rpartition("+")[2], ""
    host = host.lstrip("-")  # '-evil.com' in a list or an option is 'evil.com'
    labels = host.lower().split(".")
    if all(label.isdigit() for label in labels):
        if len(labels) == 4 and _add_ipv4(host, found):
            if tail and tail.rstrip(_URL_TRAILING_PUNCTUATION) not in ("", "/") and not _CIDR_TAIL_RE.fullmatch(tail):
                _add_url(host + tail, found, depth)
        return
    name = _registered_part(labels)
    if not name or not _valid_name(name):
        return
    domain = _domain_indicator(name)
    if domain is None:
        return
    found.add(domain)
    if tail and len(name) == len(host):
        _add_url(host + tail, found, depth)


def _valid_name(name: str) -> bool:
    """DNS limits: 253 characters, labels of 1 to 63 that neither start nor end with '-'."""
    return len(name) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" for label in name.split(".")
    )


def _add_ipv4(value: str, found: set[Indicator]) -> bool:
    try:
        found.add(Indicator("ipv4", str(ipaddress.IPv4Address(value))))
    except ValueError:
        return False
    return True


def _add_ipv6(value: str, found: set[Indicator]) -> bool:
    if "::" not in value and value.count(":") < (6 if "." in value else 7):
        return False  # times and MAC addresses (12:30:45, 00:1a:2b:3c:4d:5e): too few groups, no '::'
    groups = [group for group in value.split(":") if group]
    # '::' alone, and one group beside '::' not at the start ('add::', 'std::'), are code, not addresses.
    if not groups or (len(groups) == 1 and not value.startswith("::")):
        return False
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return False
    found.add(Indicator("ipv6", str(address)))
    if address.ipv4_mapped is not None and "." in value:
        found.add(Indicator("ipv4", str(address.ipv4_mapped)))
    return True


def _add_email(value: str, found: set[Indicator], handle: bool = False) -> None:
    local, _, host = value.lower().rpartition("@")
    local = local.strip(".")
    name = _registered_part(host.split("."))
    if not local or not name or not _valid_name(name):
        return
    domain = _domain_indicator(name)
    email = _email_indicator(f"{local}@{name}")
    if domain is not None and email is not None:
        found.update((domain,) if handle else (domain, email))


def _trim_url(value: str) -> str:
    """Drop sentence punctuation and closing brackets that the URL does not open."""
    while value:
        last = value[-1]
        if last in _URL_TRAILING_PUNCTUATION:
            value = value[:-1]
        elif last in _BRACKET_PAIRS and value.count(_BRACKET_PAIRS[last]) < value.count(last):
            value = value[:-1]
        else:
            break
    return value


def _add_url(raw: str, found: set[Indicator], depth: int) -> None:
    """Validate one URL candidate; add it, its host, and the names its query carries."""
    value = _trim_url(raw)
    scheme, separator, rest = value.partition("://")
    if not separator:
        if "%" in value[:24] and depth < _MAX_NESTING:  # 'http%3A%2F%2F...': an URL-encoded URL
            _scan(unquote(value), found, depth + 1)
            return
        scheme, rest = "", value
    authority_end = len(rest)
    for delimiter in "/?#":
        position = rest.find(delimiter)
        if position != -1:
            authority_end = min(authority_end, position)
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":[0-9]{1,5}", port)) or not _add_ipv6(host, found):
            return
        host = f"[{host.lower()}]"
    else:
        if _COMMA_IPV4_RE.fullmatch(hostport):  # 'http://192,168,0,1' (iocextract, ioc-fanger)
            hostport = hostport.replace(",", ".")
        host, colon, port = hostport.partition(":")
        if colon and not re.fullmatch(r"[0-9]{1,5}", port):
            if port or not scheme:
                return
        host = host.lower()
        labels = host.split(".")
        if all(label.isdigit() for label in labels):
            if len(labels) != 4 or not _add_ipv4(host, found):
                return
        else:
            if len(labels) < 2 or _registered_part(labels) != host or not _valid_name(host):
                return
            domain = _domain_indicator(host)
            if domain is None:
                return
            found.add(domain)
        port = colon + port
    if not scheme and tail.rstrip("/") == "":
        return  # 'evil.com/': the name alone
    scheme = scheme.lower()
    head = f"{scheme}://" if scheme else ""
    url = _url_indicator(f"{head}{userinfo}{at}{host}{port}{tail}")
    if url is not None:
        found.add(url)
    query = tail.partition("?")[2] or tail.partition("#")[2]
    if query and depth < _MAX_NESTING:
        # A redirect target in the query is reported by its name, not as a second URL.
        nested: set[Indicator] = set()
        _scan(unquote_plus(query), nested, depth + 1)
        found.update(item for item in nested if item.type != "url")


# --- Internationalised names -----------------------------------------------------------------------

# Scripts written without spaces between words: their letters glued before a name are text (module doc).
_UNSPACED_SCRIPTS = frozenset({"Han", "Hiragana", "Katakana", "Hangul", "Thai", "Lao", "Khmer", "Myanmar"})
# UTS #39 "highly restrictive": the only script mixes allowed within one label.
_ALLOWED_SCRIPT_MIXES = (
    frozenset({"Latin", "Han", "Hiragana", "Katakana"}),
    frozenset({"Latin", "Han", "Bopomofo"}),
    frozenset({"Latin", "Han", "Hangul"}),
)
_SCRIPTLESS = frozenset({"Common", "Inherited"})  # digits, '-', marks: they take the script of their neighbours
_GLUABLE_SCRIPTS = _UNSPACED_SCRIPTS | _SCRIPTLESS
# A label separator, fanged or defanged the common ways (refang has already fanged most).
_SEPARATOR = r"(?:\.|[\[({](?:\.|[dD][oO][tT])[\])}])"
_SEPARATOR_RE = re.compile(_SEPARATOR)
_LEADING_ALNUM_RE = re.compile(r"[A-Za-z0-9]*")
_NON_ASCII_ESCAPES_RE = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+")
# A URL as _add_url builds it: optional scheme and userinfo, the host, then port, path, query, fragment.
_URL_PARTS_RE = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.\-]*://)?(?:[^@/?#\s]*@)?)([^:/?#\[\]]*)(.*)", re.DOTALL)
_EMAIL_PREFIXES = ("@", "[at]", "(at)", "[@]", "(@)")


class _IdnPatterns(NamedTuple):
    token: re.Pattern[str]  # a whitespace-delimited token that may hold a Unicode name
    name: re.Pattern[str]  # within one: a non-ASCII email local part, or a host with its scheme, port and rest
    host: re.Pattern[str]  # a dotted run of label characters (for names inside decoded URL paths)


@functools.cache
def _idn_patterns() -> _IdnPatterns:
    """Built on first use: the class of combining marks (which ``\\w`` lacks) takes ~15 ms to collect."""
    marks: list[str] = []
    start = previous = -2
    # The scripts that registries allow in IDNs are all in the BMP, and a BMP-only class is a bitmap
    # to the regex engine (a class with astral ranges is scanned range by range, ~300 per character).
    for code in range(0x300, 0x10000):
        if unicodedata.category(chr(code))[0] == "M":
            if code != previous + 1:
                if start >= 0:
                    marks.append(f"\\U{start:08x}-\\U{previous:08x}")
                start = code
            previous = code
    marks.append(f"\\U{start:08x}-\\U{previous:08x}")
    mark = "".join(marks) + "\\u200c\\u200d"  # ZWNJ and ZWJ are label characters in some scripts
    label = rf"\w\-{mark}"  # the contents of a character class: what a label is made of
    non_ascii = rf"(?:[^\x00-\x7f\W]|[{mark}])"
    # Path, query and fragment characters: printable ASCII but ' " , < > \ ^ ` { | }, and non-ASCII letters.
    rest = rf"(?:[!#-&(-+\--;=?-\[\]_a-z~]|{non_ascii})"
    token = re.compile(rf"(?<!\S)(?=\S*?{non_ascii})(?=\S*?[{label}]{_SEPARATOR}[{label}])\S+")
    name = re.compile(
        rf"(?P<local>(?<![{label}.+])[{label}.+]++(?=@|\[at\]|\(at\)|\[@\]|\(@\)))"
        rf"|(?P<scheme>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{{0,31}}://)?"
        rf"(?<![{label}])(?P<host>[{label}]++(?:{_SEPARATOR}[{label}]++)+)"
        rf"(?P<port>:[0-9]{{1,5}})?(?P<rest>[/?#]{rest}*+)?"
    )
    host = re.compile(rf"(?<![{label}.])[{label}]++(?:\.[{label}]++)+")
    return _IdnPatterns(token, name, host)


def _asciify_hosts(text: str) -> str:
    """``text`` with each Unicode host in ASCII (A-labels) and each URL's non-ASCII characters escaped."""
    patterns = _idn_patterns()

    def asciify_token(token: re.Match[str]) -> str:
        return patterns.name.sub(_asciify_name, token.group(0))

    # Most lines of a page or report are ASCII (str.isascii is a C scan): only the others are tokenised.
    return "".join(
        line if line.isascii() else patterns.token.sub(asciify_token, line) for line in text.splitlines(keepends=True)
    )


def _asciify_name(match: re.Match[str]) -> str:
    whole = match.group(0)
    if whole.isascii():
        return whole
    if match.group("local") is not None:
        return " "  # the candidate email shape is ASCII: it would report the tail after the last non-ASCII letter
    scheme, port, rest = match.group("scheme") or "", match.group("port") or "", match.group("rest") or ""
    bounded = bool(scheme) or match.string[: match.start()].endswith(_EMAIL_PREFIXES)
    prefix, host, suffix = _split_glued_text(match.group("host"), bounded)
    labels = [_label_to_ascii(label) for label in _SEPARATOR_RE.split(host)]
    if any(label is None for label in labels):
        return f"{prefix} {suffix}"  # not valid IDNA: no part of it is left for the scan to report
    ascii_host = ".".join(label for label in labels if label is not None)
    if len(ascii_host) > 253:  # longer than DNS allows
        return f"{prefix} {suffix}"
    if prefix:
        prefix += " "
    if suffix:  # the name ended inside the last word: what follows it is not its port or path
        return f"{scheme}{prefix}{ascii_host} {suffix}{port}{rest}"
    return f"{scheme}{prefix}{ascii_host}{port}{quote(rest, safe=string.punctuation)}"


def _split_glued_text(run: str, bounded: bool) -> tuple[str, str, str]:
    """Split a dotted run into (text before, the name, text after) where words are glued to the name.

    After: a TLD is never part ASCII and part not, so a last label that starts ASCII ends at its first
    non-ASCII character (``google.com에서``, ``google.com-\u0430``). Before (unless a scheme or '@' bounds the
    name): letters of an unspaced script right before an ASCII letter (``访问google.com``). A Cyrillic or
    Greek letter before ASCII ones stays in the name: that is the homoglyph case (``\u0430pple.com``).
    """
    separators = list(_SEPARATOR_RE.finditer(run))
    if not separators:
        return "", run, ""
    last_start = separators[-1].end()
    last = run[last_start:]
    ascii_head = _LEADING_ALNUM_RE.match(last)
    head_length = ascii_head.end() if ascii_head else 0
    suffix = ""
    if 0 < head_length < len(last) and not last[head_length:].isascii():
        suffix, run = last[head_length:], run[: last_start + head_length]
    stripped = run.rstrip("-_")
    suffix, run = run[len(stripped) :] + suffix, stripped
    stripped = run.lstrip("-_")
    prefix, run = run[: len(run) - len(stripped)], stripped
    if not bounded:
        first = run[: separators[0].start() - len(prefix)]
        glued = 0
        while glued < len(first) and not first[glued].isascii() and _script(first[glued]) in _GLUABLE_SCRIPTS:
            glued += 1
        if 0 < glued < len(first) and first[glued].isascii() and (
            any(_script(char) in _UNSPACED_SCRIPTS for char in first[:glued])
        ):
            prefix, run = prefix + run[:glued], run[glued:]
    return prefix, run, suffix


@functools.lru_cache(maxsize=4096)  # a page names the same few hosts many times; idna is pure Python
def _label_to_ascii(label: str) -> str | None:
    """One label as IDNA (UTS #46 mapping, then IDNA 2008 rules); None when it is not a valid one."""
    if label.isascii():
        return label
    try:
        return idna.encode(label, uts46=True, std3_rules=True).decode("ascii")
    except (UnicodeError, ValueError):  # idna.IDNAError and its subclasses
        return None


def to_ascii_host(host: str) -> str:
    """A host name in canonical form: lower case, IDN labels as A-labels (ValueError when not valid IDNA)."""
    labels = [_label_to_ascii(label) for label in host.rstrip(".").split(".")]
    if not all(labels):
        raise ValueError(f"not a valid host name: {host!r}")
    ascii_host = ".".join(label for label in labels if label).lower()
    if _host_to_unicode(ascii_host) is None:
        raise ValueError(f"not a valid host name: {host!r}")
    return ascii_host


def to_unicode_host(host: str) -> str:
    """A host name with its A-labels decoded to U-labels (ValueError when one is not valid IDNA)."""
    unicode_host = _host_to_unicode(host.lower())
    if unicode_host is None:
        raise ValueError(f"not a valid IDNA host name: {host!r}")
    return unicode_host


def _host_to_unicode(host: str) -> str | None:
    if "xn--" not in host:
        return host
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            try:
                decoded = idna.decode(label)
                if idna.encode(decoded).decode("ascii") != label:  # the one canonical spelling only
                    return None
            except (UnicodeError, ValueError):
                return None
            label = decoded
        labels.append(label)
    return ".".join(labels)


def _domain_indicator(value: str) -> Indicator | None:
    if not value:
        return None
    unicode_host = _host_to_unicode(value)
    if unicode_host is None:
        return None
    if unicode_host == value:
        return Indicator("domain", value)
    return Indicator("domain", value, unicode_host, _homoglyph(unicode_host))


def _email_indicator(value: str) -> Indicator | None:
    local, _, host = value.rpartition("@")
    unicode_host = _host_to_unicode(host)
    if not local or unicode_host is None:
        return None
    if unicode_host == host:
        return Indicator("email", value)
    return Indicator("email", value, f"{local}@{unicode_host}", _homoglyph(unicode_host))


def _url_indicator(value: str) -> Indicator | None:
    parts = _URL_PARTS_RE.match(value)
    if not value or parts is None:
        return None
    head, host, tail = parts.groups()
    unicode_host = _host_to_unicode(host.lower())
    if unicode_host is None:
        return None
    if unicode_host == host.lower() and "%" not in tail:
        return Indicator("url", value)
    unicode_value = head + unicode_host + _NON_ASCII_ESCAPES_RE.sub(_decode_escapes, tail)
    homoglyph = _homoglyph(unicode_host) if not unicode_host.isascii() else None
    return Indicator("url", value, unicode_value if unicode_value != value else "", homoglyph)


def _decode_escapes(match: re.Match[str]) -> str:
    """Percent-escapes of non-ASCII UTF-8 shown as their characters, as browsers display them."""
    try:
        return bytes.fromhex(match.group(0).replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        return match.group(0)


def _registered_part(labels: list[str]) -> str:
    """The labels up to the rightmost one that is an IANA TLD, with at least one before it (ioc-finder's rule)."""
    for index in range(len(labels) - 1, 0, -1):
        if labels[index] in TLD_SET:
            return ".".join(labels[: index + 1])
    return ""


def _script(char: str) -> str:
    """The Unicode script of a character ("Latin", "Cyrillic", "Common" ...)."""
    from confusable_homoglyphs import categories  # loaded on first use: ~50 KB of script ranges

    return str(categories.alias(char)).title()


@functools.cache
def _ascii_lookalikes() -> dict[str, str]:
    """Each non-ASCII character that confusables.txt says looks like lower-case ASCII, and that ASCII."""
    from confusable_homoglyphs import confusables  # loaded on first use: ~1 MB of confusables

    table: dict[str, str] = {}
    data: dict[str, list[dict[str, str]]] = confusables.confusables_data
    for char, glyphs in data.items():
        if len(char) != 1 or char.isascii():
            continue
        targets = [glyph["c"] for glyph in glyphs if re.fullmatch(r"[a-z0-9]+", glyph["c"])]
        if targets:  # a letter before a digit, one character before several
            table[char] = min(targets, key=lambda target: (len(target), target.isdigit(), target))
    return table


def _homoglyph(host: str) -> Homoglyph | None:
    """Mixed-script and whole-script-confusable checks on a Unicode host (see the module doc)."""
    if host.isascii():
        return None
    scripts: set[str] = set()
    mixed = False
    for label in host.split("."):
        label_scripts = {_script(char) for char in label} - _SCRIPTLESS
        scripts |= label_scripts
        if len(label_scripts) > 1 and not any(label_scripts <= allowed for allowed in _ALLOWED_SCRIPT_MIXES):
            mixed = True
    lookalikes = _ascii_lookalikes()
    skeleton = "".join(lookalikes.get(char, char) for char in unicodedata.normalize("NFD", host))
    if not skeleton.isascii():
        skeleton = ""
    if not mixed and not skeleton:
        return None
    return Homoglyph(tuple(sorted(scripts)), mixed, skeleton)
