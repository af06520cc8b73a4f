"""Indicator (IOC) extraction from free text: threat reports, pastes, feeds, collected pages.

ioc-finder does the parsing, including refanging (``hxxp``, ``[.]``, ``(dot)``, ``[at]`` ...
via ioc-fanger), so this module only maps its keys to BEV's stable type names, normalises values
and adds what ioc-finder lacks:

* ``eth_address``: ioc-finder has no Ethereum parser, so one narrow pattern (``0x`` + 40 hex)
  is applied here. Those spans are masked before ioc-finder runs, otherwise their 40 hex digits
  would be reported as a SHA-1.
* Bitcoin checksums: ioc-finder's Bitcoin grammar is shape-only (``[13][A-Za-z0-9]{25,34}``),
  which flags dozens of false positives in any base64 blob. Candidates are kept only when their
  Base58Check (legacy/P2SH) or Bech32/Bech32m (SegWit, BIP-173/BIP-350) checksum verifies.

Type names (the ``type`` of :class:`Indicator`, in the order results are sorted):
``ipv4, ipv6, domain, url, email, md5, sha1, sha256, sha512, cve, btc_address, eth_address``.

Internationalised domain names (IDN)
------------------------------------
ioc-finder's grammars are ASCII: a name with a non-ASCII letter was cut at it (``ex\u0430mple.com``,
with a Cyrillic ``\u0430``, came out as ``mple.com``) or missed (``пример.рф``). So, before ioc-finder runs,
each host written in Unicode is rewritten, in the copy of the text it parses, to its ASCII form:
IDNA 2008 A-labels, mapped per UTS #46 (non-transitional: ``ß`` stays ``ß``) by ``idna``. Defanged
separators (``[.]``, ``(.)``, ``[dot]``...) are fanged on the way; a Unicode TLD becomes the A-label
ioc-finder's IANA list holds (``рф`` is ``xn--p1ai``); the non-ASCII characters of a URL's path, query
and fragment are percent-encoded as UTF-8 (RFC 3987 section 3.1), so the URL stays whole too; a
non-ASCII email local part is left out (the address is not reported, its host still is, as a domain).
Pure-ASCII text skips all of this.

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

Limits: the TLD must be in ioc-finder's IANA list, in either form and exactly as for ASCII names, so
names under the reserved ``.example``, ``.test`` or ``.テスト`` are not reported. Labels are separated by
``.``, never by the ideographic full stop ``。``, which ends sentences in CJK text. Scripts written
without spaces (Han, kana, Hangul, Thai...) cannot tell a name from the words glued to it: such letters
right before an ASCII letter (``访问google.com``) are taken as text, not as the start of the name.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote, unquote_plus

import idna
from ioc_finder import find_iocs
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

# ioc-finder key -> BEV type name. Only these ioc-finder parsers are run.
_IOC_FINDER_TYPES: dict[str, str] = {
    "ipv4s": "ipv4",
    "ipv6s": "ipv6",
    "domains": "domain",
    "urls": "url",
    "email_addresses": "email",
    "md5s": "md5",
    "sha1s": "sha1",
    "sha256s": "sha256",
    "sha512s": "sha512",
    "cves": "cve",
    "bitcoin_addresses": "btc_address",
}

_TYPE_ORDER = {name: index for index, name in enumerate(INDICATOR_TYPES)}

# Not covered by ioc-finder: an EVM address, bounded so longer hex runs (hashes, keys) do not match.
_ETH_ADDRESS_RE = re.compile(r"(?<![0-9A-Za-z])0x[0-9a-fA-F]{40}(?![0-9A-Za-z])")

# A standalone base64 token (an encoded attachment or payload): it cannot hold a readable indicator
# (no '.', ':', '@' or '-'), yet ioc-finder's grammars spend most of their time in it and its
# Bitcoin grammar matches shapes inside it. Blanked before parsing; a token inside a URL is not
# standalone (it is preceded by '/' or '.'), so URLs stay whole.
_BASE64_TOKEN_RE = re.compile(r"(?<![^\s\"'<>=:,;(\[{])[A-Za-z0-9+/]{200,}={0,2}(?![^\s\"'<>,;)\]}])")
# ioc-finder's time grows with the square of a run of spaces (16 s for 100 KB of them), and
# indented HTML and padded logs are full of runs; one space separates tokens just as well.
_SPACE_RUN_RE = re.compile(r"[ \t]{2,}")

# Sentence punctuation that ioc-finder leaves on the end of a URL ("see http://x.test/a.").
_URL_TRAILING_PUNCTUATION = ".,;:!?'\""



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
    text = _SPACE_RUN_RE.sub(" ", _BASE64_TOKEN_RE.sub("\n", text))
    if not text.isascii():
        text = _asciify_hosts(text)
    eth_addresses = [match.group(0) for match in _ETH_ADDRESS_RE.finditer(text)]
    masked = _ETH_ADDRESS_RE.sub(lambda match: " " * len(match.group(0)), text)

    found = find_iocs(masked, included_ioc_types=list(_IOC_FINDER_TYPES))
    indicators: set[Indicator] = {Indicator("eth_address", value.lower()) for value in eth_addresses}
    urls: list[str] = []
    for key, type_name in _IOC_FINDER_TYPES.items():
        values = found.get(key, [])
        if not isinstance(values, list):  # only ATT&CK groups are dicts; none are requested
            raise TypeError(f"unexpected ioc-finder result for {key!r}: {type(values).__name__}")
        indicators.update(_normalise(type_name, values))
        if type_name == "url":
            urls = values
    whole, cut = _domains_in_encoded_urls(urls, masked)
    indicators.difference_update(Indicator("domain", name) for name in cut)
    indicators.update(whole)
    return sorted(indicators, key=lambda item: (_TYPE_ORDER[item.type], item.value))


def _normalise(type_name: str, values: Iterable[str]) -> set[Indicator]:
    """Canonical forms so the same observable written two ways deduplicates to one indicator."""
    result: set[Indicator] = set()
    for raw in values:
        value = raw.strip()
        if type_name in ("md5", "sha1", "sha256", "sha512"):
            value = value.lower()
        elif type_name == "domain":
            domain = _domain_indicator(value.lower().rstrip("."))
            if domain is not None:
                result.add(domain)
            continue
        elif type_name == "email":
            email = _email_indicator(value.lower().rstrip("."))  # ioc-finder already lowercases emails
            if email is not None:
                result.add(email)
            continue
        elif type_name == "cve":
            value = value.upper()
        elif type_name == "ipv6":
            value = str(ipaddress.IPv6Address(value))
        elif type_name == "ipv4":
            value = str(ipaddress.IPv4Address(value))
        elif type_name == "url":
            url = _url_indicator(value.rstrip(_URL_TRAILING_PUNCTUATION))
            if url is not None:
                result.add(url)
            continue
        elif type_name == "btc_address" and not is_valid_bitcoin_address(value):
            continue
        if value:
            result.add(Indicator(type_name, value))
    return result


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
# A label separator, fanged or defanged the common ways; ioc-finder (ioc-fanger) fangs the rest later.
_SEPARATOR = r"(?:\.|[\[({](?:\.|[dD][oO][tT])[\])}])"
_SEPARATOR_RE = re.compile(_SEPARATOR)
# What ioc-finder's ASCII domain grammar takes for a name (its _DOMAIN_CANDIDATE_RE): used to tell which
# part of a Unicode name it would report on its own, cut.
_ASCII_NAME_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})+(?![A-Za-z0-9])")
_LEADING_ALNUM_RE = re.compile(r"[A-Za-z0-9]*")
_NON_ASCII_ESCAPES_RE = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+")
# A URL as ioc-finder reports it: optional scheme and userinfo, the host, then port, path, query, fragment.
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
        return " "  # ioc-finder's local-part grammar is ASCII: it would report the tail after the last non-ASCII letter
    scheme, port, rest = match.group("scheme") or "", match.group("port") or "", match.group("rest") or ""
    bounded = bool(scheme) or match.string[: match.start()].endswith(_EMAIL_PREFIXES)
    prefix, host, suffix = _split_glued_text(match.group("host"), bounded)
    labels = [_label_to_ascii(label) for label in _SEPARATOR_RE.split(host)]
    if any(label is None for label in labels):
        return f"{prefix} {suffix}"  # not valid IDNA: no part of it is left for ioc-finder to report
    ascii_host = ".".join(label for label in labels if label is not None)
    if len(ascii_host) > 253:  # longer than DNS allows; and ioc-finder's time grows with the square of a dotted run
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


def _domains_in_encoded_urls(urls: Iterable[str], text: str) -> tuple[set[Indicator], set[str]]:
    """Names that URLs carry percent-encoded (``?u=https%3A%2F%2Fp%D0%B0ypal.com``), whole and cut.

    ioc-finder decodes each URL it found and looks for domains in it with its ASCII grammar, which
    reports ``ypal.com`` there. Returns the whole names (as domain indicators) and the cut ones, those
    that do not also stand on their own in ``text``.
    """
    whole: set[Indicator] = set()
    cut: set[str] = set()
    for url in urls:
        if "%" not in url:
            continue
        decoded = unquote_plus(url)
        if decoded.isascii():
            continue
        for run in _idn_patterns().host.finditer(decoded):
            name = run.group(0)
            if name.isascii():
                continue
            for candidate in _ASCII_NAME_RE.finditer(name):
                cut_name = _registered_part(candidate.group(0).lower().split("."))
                if cut_name:
                    cut.add(cut_name)
            _, host, _ = _split_glued_text(name, bounded=False)
            labels = [_label_to_ascii(label) for label in host.split(".")]
            if all(labels):
                name_found = _registered_part([label.lower() for label in labels if label])
                domain = _domain_indicator(name_found) if name_found else None
                if domain is not None:
                    whole.add(domain)
    cut -= {domain.value for domain in whole}
    standalone = {name for name in cut if re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", text, re.I)}
    return whole, cut - standalone


def _registered_part(labels: list[str]) -> str:
    """ioc-finder's rule: the labels up to the rightmost one that is a TLD, with at least one before it."""
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
