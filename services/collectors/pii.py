"""PII scrubbing before storage: emails, phone numbers, payment card numbers, US SSNs.

Patterns, not a model: they are fast, predictable and reviewable. A card number is replaced only
when its Luhn checksum holds, so order numbers and timestamps survive.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# International (+CC ...) or North American ((555) 123-4567, 555-123-4567, 555.123.4567) forms.
# Not next to further digit groups, so the middle of a longer number (a non-card 16-digit run) stays.
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}"
                    r"(?!\d)(?![ .-]\d)")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group(0)


def scrub_pii(text: str) -> str:
    """The text with PII replaced by [EMAIL], [SSN], [CARD], [PHONE] (in that order of matching)."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _SSN.sub("[SSN]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub("[PHONE]", text)
