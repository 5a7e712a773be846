"""Phone numbers as CRMs and forms store them, to E.164 (``format: e164`` on a payload value).

Parsing and validation are Google's libphonenumber rules (the ``phonenumbers`` package): a number with a
country code (``+44 …``, ``00 44 …``, ``tel:+44…``) is read as such, one without is read in the default
region. A number that does not parse or is not valid raises ``PhoneNumberInvalid`` whose message gives
the value's shape (length and kinds of characters), never the number: reasons end up in logs, dead-letter
listings and run histories.
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from relay.errors import PhoneNumberInvalid

REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)

# Characters people type in numbers, by the words a reason uses for them; anything else is "other".
_CHARACTER_KINDS = (
    ("digits", str.isdigit),
    ("letters", str.isalpha),
    ("spaces", str.isspace),
    ("parentheses", lambda char: char in "()"),
    ("hyphens", lambda char: char in "-\u2010\u2011\u2013\u2014"),  # and the dashes word processors put
    ("dots", lambda char: char == "."),
    ("a plus sign", lambda char: char in "+\uff0b"),
    ("slashes", lambda char: char == "/"),
)

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "no valid country code, and no region to read it in",
    NumberParseException.NOT_A_NUMBER: "does not look like one",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}

_POSSIBILITY = {
    ValidationResult.INVALID_COUNTRY_CODE: "no valid country code",
    ValidationResult.TOO_SHORT: "too short for its country",
    ValidationResult.TOO_LONG: "too long for its country",
    ValidationResult.INVALID_LENGTH: "of a length its country does not use",
}


def check_region(region: str) -> str:
    """A region code (ISO 3166 alpha-2, any case) in upper case; ValueError when libphonenumber has none."""
    code = region.strip().upper()
    if code not in REGIONS:
        raise ValueError(
            f"{region!r} is not a region code phone numbers know (ISO 3166-1 alpha-2, such as US or GB)"
        )
    return code


def region_of(value: Any) -> str | None:
    """The region code an event's value names (``us``, ``GB``), or None when it names none."""
    if not isinstance(value, str):
        return None
    code = value.strip().upper()
    return code if code in REGIONS else None


def shape(value: Any) -> str:
    """What a value looks like without what it says: ``value of 14 chars: digits, spaces, parentheses``."""
    if isinstance(value, bool) or value is None:
        return f"a JSON {'boolean' if isinstance(value, bool) else 'null'}"
    if isinstance(value, int | float):
        digits = _as_text(value) or str(value)
        return f"a JSON number of {sum(char.isdigit() for char in digits)} digits"
    if not isinstance(value, str):
        return "a JSON object" if isinstance(value, dict) else "a JSON array"
    kinds = [name for name, is_kind in _CHARACTER_KINDS if any(is_kind(char) for char in value)]
    if any(not any(is_kind(char) for _, is_kind in _CHARACTER_KINDS) for char in value):
        kinds.append("other characters")
    return f"value of {len(value)} chars: {', '.join(kinds) or 'none'}"


def _as_text(value: Any) -> str | None:
    """The number as text: strings as they are, JSON numbers (some forms send ints) as their digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, float) and value.is_integer() and 0 < value < 1e17:
        return str(int(value))
    return None


def to_e164(value: Any, region: str | None) -> str:
    """The number in E.164 (``+14155550123``); PhoneNumberInvalid saying why, without the number.

    An extension (``ext. 12``) is dropped: E.164 has none, and the PHLO dials the line.
    """
    where = f"region {region}" if region else "no default region"
    text = _as_text(value)
    if text is None:
        raise PhoneNumberInvalid(f"not a phone number ({shape(value)})")
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        why = _PARSE_ERRORS.get(exc.error_type, "does not look like one")
        raise PhoneNumberInvalid(f"not a valid phone number: {why} ({shape(value)}; {where})") from None
    if not phonenumbers.is_valid_number(number):
        possible = phonenumbers.is_possible_number_with_reason(number)
        why = _POSSIBILITY.get(possible, "no such number in its country's plan")
        raise PhoneNumberInvalid(f"not a valid phone number: {why} ({shape(value)}; {where})")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)
