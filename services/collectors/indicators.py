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
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ioc_finder import find_iocs

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

_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {char: index for index, char in enumerate(_BASE58_ALPHABET)}
_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3


@dataclass(frozen=True, order=True)
class Indicator:
    """One observable found in text; ``value`` is refanged and normalised."""

    type: str
    value: str


def extract_indicators(text: str) -> list[Indicator]:
    """Return the deduplicated indicators in ``text``, sorted by type (see module doc) then value."""
    text = _SPACE_RUN_RE.sub(" ", _BASE64_TOKEN_RE.sub("\n", text))
    eth_addresses = [match.group(0) for match in _ETH_ADDRESS_RE.finditer(text)]
    masked = _ETH_ADDRESS_RE.sub(lambda match: " " * len(match.group(0)), text)

    found = find_iocs(masked, included_ioc_types=list(_IOC_FINDER_TYPES))
    indicators: set[Indicator] = {Indicator("eth_address", value.lower()) for value in eth_addresses}
    for key, type_name in _IOC_FINDER_TYPES.items():
        values = found.get(key, [])
        if not isinstance(values, list):  # only ATT&CK groups are dicts; none are requested
            raise TypeError(f"unexpected ioc-finder result for {key!r}: {type(values).__name__}")
        indicators.update(_normalise(type_name, values))
    return sorted(indicators, key=lambda item: (_TYPE_ORDER[item.type], item.value))


def _normalise(type_name: str, values: Iterable[str]) -> set[Indicator]:
    """Canonical forms so the same observable written two ways deduplicates to one indicator."""
    result: set[Indicator] = set()
    for raw in values:
        value = raw.strip()
        if type_name in ("md5", "sha1", "sha256", "sha512", "domain", "email"):
            value = value.lower().rstrip(".")  # ioc-finder already lowercases emails; kept explicit
        elif type_name == "cve":
            value = value.upper()
        elif type_name == "ipv6":
            value = str(ipaddress.IPv6Address(value))
        elif type_name == "ipv4":
            value = str(ipaddress.IPv4Address(value))
        elif type_name == "url":
            value = value.rstrip(_URL_TRAILING_PUNCTUATION)
        elif type_name == "btc_address" and not is_valid_bitcoin_address(value):
            continue
        if value:
            result.add(Indicator(type_name, value))
    return result


def is_valid_bitcoin_address(address: str) -> bool:
    """True when a mainnet address's checksum verifies (Base58Check, or Bech32/Bech32m for bc1)."""
    if address[:3].lower() == "bc1":
        return _is_valid_bech32_address(address)
    return _is_valid_base58check_address(address)


def _is_valid_base58check_address(address: str) -> bool:
    """P2PKH (version 0x00, '1...') and P2SH (0x05, '3...') addresses: 25 bytes with a sha256d checksum."""
    number = 0
    for char in address:
        digit = _BASE58_INDEX.get(char)
        if digit is None:
            return False
        number = number * 58 + digit
    leading_zeros = len(address) - len(address.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    raw = b"\x00" * leading_zeros + body
    if len(raw) != 25 or raw[0] not in (0x00, 0x05):
        return False
    payload, checksum = raw[:-4], raw[-4:]
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == checksum


def _bech32_polymod(values: Iterable[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit in range(5):
            checksum ^= generator[bit] if (top >> bit) & 1 else 0
    return checksum


def _is_valid_bech32_address(address: str) -> bool:
    """SegWit v0 uses the Bech32 constant, v1+ (Taproot) the Bech32m one (BIP-173, BIP-350)."""
    if address.lower() != address and address.upper() != address:
        return False  # mixed case is invalid in Bech32
    address = address.lower()
    hrp, _, data_part = address.rpartition("1")
    if hrp != "bc" or not 6 < len(data_part) <= 90 - 3:
        return False
    if any(char not in _BECH32_CHARSET for char in data_part):
        return False
    data = [_BECH32_CHARSET.index(char) for char in data_part]
    expanded_hrp = [ord(char) >> 5 for char in hrp] + [0] + [ord(char) & 31 for char in hrp]
    constant = _bech32_polymod(expanded_hrp + data)
    witness_version = data[0]
    if witness_version > 16:
        return False
    expected = _BECH32_CONST if witness_version == 0 else _BECH32M_CONST
    return constant == expected
