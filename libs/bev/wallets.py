"""Cryptocurrency address checksums, shared by every service that reads wallets (the collectors'
indicator extraction, the swarm's target typing): Base58Check and Bech32/Bech32m for bitcoin
mainnet, EIP-55 for ethereum (with the Keccak-256 that EIP-55 needs; hashlib has only SHA3-256)."""

from __future__ import annotations

import hashlib
import re
from typing import Final

_ETH = re.compile(r"0x[0-9a-fA-F]{40}")
_BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX: Final = {char: index for index, char in enumerate(_BASE58_ALPHABET)}
BASE58_ADDRESS: Final = re.compile(r"[13][1-9A-HJ-NP-Za-km-z]{24,33}")
_BECH32_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST: Final = 1
_BECH32M_CONST: Final = 0x2BC830A3


def is_valid_bitcoin_address(address: str) -> bool:
    """True for a mainnet address whose checksum verifies: Base58Check P2PKH/P2SH, Bech32/Bech32m."""
    if address[:3].lower() == "bc1":
        return _is_valid_bech32_address(address)
    return bool(BASE58_ADDRESS.fullmatch(address)) and _is_valid_base58check_address(address)


def _is_valid_base58check_address(address: str) -> bool:
    """P2PKH (version 0x00, '1...') and P2SH (0x05, '3...'): 25 bytes ending in a sha256d checksum."""
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
    return hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4] == raw[-4:]


def _bech32_polymod(values: list[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit in range(5):
            checksum ^= generator[bit] if (top >> bit) & 1 else 0
    return checksum


def _is_valid_bech32_address(address: str) -> bool:
    """SegWit v0 carries the Bech32 constant, v1+ (Taproot) the Bech32m one (BIP-173, BIP-350)."""
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
    witness_version = data[0]
    if witness_version > 16:
        return False
    # The witness program: 2..40 bytes; v0 exactly 20 (P2WPKH) or 32 (P2WSH).
    program_bits = (len(data) - 1 - 6) * 5
    program_bytes = program_bits // 8
    if not 2 <= program_bytes <= 40 or program_bits % 8 > 4 or (witness_version == 0 and program_bytes not in (20, 32)):
        return False
    expected = _BECH32_CONST if witness_version == 0 else _BECH32M_CONST
    return _bech32_polymod(expanded_hrp + data) == expected


def is_valid_ethereum_address(address: str) -> bool:
    """0x and 40 hex digits; a mixed-case one must carry a valid EIP-55 checksum (it catches typos)."""
    if not _ETH.fullmatch(address):
        return False
    digits = address[2:]
    if digits.lower() == digits or digits.upper() == digits:
        return True  # no checksum encoded
    digest = _keccak256(digits.lower().encode("ascii")).hex()
    return all(
        char.isdigit() or char.isupper() == (int(nibble, 16) >= 8) for char, nibble in zip(digits, digest, strict=False)
    )


# Keccak-256 as Ethereum uses it (the original padding, not SHA3-256's; hashlib has only the latter).
_KECCAK_ROUND_CONSTANTS: Final = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)  # fmt: skip
_KECCAK_ROTATIONS: Final = (
    (0, 36, 3, 41, 18), (1, 44, 10, 45, 2), (62, 6, 43, 15, 61), (28, 55, 25, 21, 56), (27, 20, 39, 8, 14),
)  # fmt: skip
_MASK64: Final = (1 << 64) - 1


def _keccak_f(state: list[list[int]]) -> None:
    for round_constant in _KECCAK_ROUND_CONSTANTS:
        parity = [state[x][0] ^ state[x][1] ^ state[x][2] ^ state[x][3] ^ state[x][4] for x in range(5)]
        for x in range(5):
            mix = parity[(x - 1) % 5] ^ _rotl(parity[(x + 1) % 5], 1)
            for y in range(5):
                state[x][y] ^= mix
        moved = [[0] * 5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                moved[y][(2 * x + 3 * y) % 5] = _rotl(state[x][y], _KECCAK_ROTATIONS[x][y])
        for x in range(5):
            for y in range(5):
                state[x][y] = moved[x][y] ^ (~moved[(x + 1) % 5][y] & moved[(x + 2) % 5][y] & _MASK64)
        state[0][0] ^= round_constant


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK64 if shift else value


def _keccak256(data: bytes) -> bytes:
    rate = 136
    padded = bytearray(data) + b"\x01" + b"\x00" * ((-len(data) - 1) % rate)
    padded[-1] |= 0x80
    state = [[0] * 5 for _ in range(5)]
    for offset in range(0, len(padded), rate):
        block = padded[offset : offset + rate]
        for index in range(rate // 8):
            lane = int.from_bytes(block[index * 8 : index * 8 + 8], "little")
            state[index % 5][index // 5] ^= lane
        _keccak_f(state)
    return b"".join(state[index % 5][index // 5].to_bytes(8, "little") for index in range(4))
