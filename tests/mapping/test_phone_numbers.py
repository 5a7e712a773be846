"""`format: e164` on a payload value: phone numbers as CRMs and forms store them, normalised to E.164, and
a number that is not valid makes the route's run a mapping failure whose reason never shows the number."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ConfigError
from relay.mapping.config import RelayConfig, parse_config
from relay.mapping.phones import shape
from relay.mapping.routes import map_event

FROM = "+14155550100"
FULL_WIDTH = "".join(chr(0xFF10 + int(digit)) for digit in "4155550123")


def config_of(text: str) -> RelayConfig:
    return parse_config(text, "test.yaml")


# The region is read from the event (`region`), so that one route covers every row of the table; a row
# without one reads the number with no default region.
FORMS = config_of(
    """
sources:
  forms: {}
routes:
  - name: callback
    source: forms
    phlo_id: phlo-x
    payload:
      from: "+14155550100"
      to: {path: phone, format: e164, default_region: {path: region}}
"""
)

# (what the CRM or form stored, the default region, the E.164 number sent)
VALID: list[tuple[Any, str | None, str]] = [
    # US, as people type them
    ("(415) 555-0123", "US", "+14155550123"),
    ("415.555.0123", "US", "+14155550123"),
    ("415-555-0123", "US", "+14155550123"),
    ("415-555-0123 ext. 12", "US", "+14155550123"),  # E.164 has no extension: the line is dialled
    ("+1 415 555 0123 x12", None, "+14155550123"),
    ("+1 415 555 0123", None, "+14155550123"),
    ("+1 (415) 555-0123", None, "+14155550123"),
    ("1-415-555-0123", "US", "+14155550123"),
    ("4155550123", "US", "+14155550123"),
    ("+14155550123", None, "+14155550123"),  # already E.164
    ("Mobile: 415 555 0123", "US", "+14155550123"),
    ("1-800-FLOWERS", "US", "+18003569377"),  # letters of a vanity number are its keypad digits
    (FULL_WIDTH, "US", "+14155550123"),  # full-width digits (a Japanese keyboard)
    ("+1 415 555 0123", "GB", "+14155550123"),  # a country code wins over the default region
    ("+1 416 555 0199", None, "+14165550199"),  # Canada shares +1
    # numbers stored as JSON numbers: some forms send ints
    (4155550123, "US", "+14155550123"),
    (14155550123, "US", "+14155550123"),
    (4155550123.0, "US", "+14155550123"),
    # tel: URIs (RFC 3966), as click-to-call fields store them
    ("tel:+1-415-555-0123", None, "+14155550123"),
    ("tel:+14155550123;ext=12", None, "+14155550123"),
    ("tel:415-555-0123;phone-context=+1", None, "+14155550123"),
    # United Kingdom
    ("+44 20 7946 0958", None, "+442079460958"),
    ("+44 (0) 20 7946 0958", None, "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("(020) 7946 0958", "GB", "+442079460958"),
    ("07911 123456", "GB", "+447911123456"),
    ("00 44 20 7946 0958", "GB", "+442079460958"),  # 00: the international prefix from the UK
    ("011 44 20 7946 0958", "US", "+442079460958"),  # 011: the one from the US
    # France
    ("00 33 1 42 68 53 00", "DE", "+33142685300"),
    ("01 42 68 53 00", "FR", "+33142685300"),
    ("+33 (0)1 42 68 53 00", None, "+33142685300"),
    # Germany
    ("030 12345678", "DE", "+493012345678"),
    ("+49 (0)30 12345678", None, "+493012345678"),
    ("0151 23456789", "DE", "+4915123456789"),
    # India
    ("+91 98765 43210", None, "+919876543210"),
    ("098765 43210", "IN", "+919876543210"),
    ("9876543210", "IN", "+919876543210"),
    ("0091 98765 43210", "GB", "+919876543210"),
    # Brazil
    ("+55 11 91234-5678", None, "+5511912345678"),
    ("(11) 91234-5678", "BR", "+5511912345678"),
    # Australia
    ("0412 345 678", "AU", "+61412345678"),
    ("+61 2 9876 5432", None, "+61298765432"),
    # Japan
    ("03-1234-5678", "JP", "+81312345678"),
    ("090-1234-5678", "JP", "+819012345678"),
    # China, Mexico
    ("+86 138 0013 8000", None, "+8613800138000"),
    ("+52 55 1234 5678", None, "+525512345678"),
    # a region from the event in another case than ISO's
    ("020 7946 0958", "gb", "+442079460958"),
]

# (what was stored, the default region, the reason of the mapping failure after "payload key 'to': ")
INVALID: list[tuple[Any, str | None, str]] = [
    (
        "(415) 555-0123",
        None,
        "not a valid phone number: no valid country code, and no region to read it in "
        "(value of 14 chars: digits, spaces, parentheses, hyphens; no default region)",
    ),
    (
        "020 7946 0958",
        None,
        "not a valid phone number: no valid country code, and no region to read it in "
        "(value of 13 chars: digits, spaces; no default region)",
    ),
    (
        "00 33 1 42 68 53 00",
        None,
        "not a valid phone number: no valid country code, and no region to read it in "
        "(value of 19 chars: digits, spaces; no default region)",
    ),
    (
        14155550123,
        None,
        "not a valid phone number: no valid country code, and no region to read it in "
        "(a JSON number of 11 digits; no default region)",
    ),
    (
        "555-0123",
        "US",
        "not a valid phone number: no such number in its country's plan "
        "(value of 8 chars: digits, hyphens; region US)",
    ),
    (
        "415 555 012",
        "US",
        "not a valid phone number: too short for its country (value of 11 chars: digits, spaces; region US)",
    ),
    (
        "123",
        "US",
        "not a valid phone number: too short for its country (value of 3 chars: digits; region US)",
    ),
    (
        "(415) 555-01234",
        "US",
        "not a valid phone number: too long for its country "
        "(value of 15 chars: digits, spaces, parentheses, hyphens; region US)",
    ),
    (
        "+1 415 555 01234567",
        None,
        "not a valid phone number: too long for its country "
        "(value of 19 chars: digits, spaces, a plus sign; no default region)",
    ),
    (
        "+1 555 555 0123",
        None,
        "not a valid phone number: no such number in its country's plan "
        "(value of 15 chars: digits, spaces, a plus sign; no default region)",
    ),
    (
        "07700 900123",  # Ofcom's range for drama: never a real line
        "GB",
        "not a valid phone number: no such number in its country's plan "
        "(value of 12 chars: digits, spaces; region GB)",
    ),
    (
        "+999 123 456",
        None,
        "not a valid phone number: no valid country code, and no region to read it in "
        "(value of 12 chars: digits, spaces, a plus sign; no default region)",
    ),
    (
        "call me",
        "US",
        "not a valid phone number: does not look like one (value of 7 chars: letters, spaces; region US)",
    ),
    (
        "n/a",
        "US",
        "not a valid phone number: does not look like one (value of 3 chars: letters, slashes; region US)",
    ),
    (
        "415#555#0123",
        "US",
        "not a valid phone number: does not look like one "
        "(value of 12 chars: digits, other characters; region US)",
    ),
    (
        1.5e10,
        "US",
        "not a valid phone number: no such number in its country's plan "
        "(a JSON number of 11 digits; region US)",
    ),
    (-4155550123, "US", "not a phone number (a JSON number of 10 digits)"),
    (True, "US", "not a phone number (a JSON boolean)"),
    ({"value": "+14155550123"}, "US", "not a phone number (a JSON object)"),
    (["+14155550123"], "US", "not a phone number (a JSON array)"),
    # a region the event names that no one knows is no region
    (
        "020 7946 0958",
        "United Kingdom",
        "not a valid phone number: no valid country code, and no region to read it in "
        "(value of 13 chars: digits, spaces; no default region)",
    ),
]


def _event(value: Any, region: str | None) -> dict[str, Any]:
    return {"phone": value} if region is None else {"phone": value, "region": region}


@pytest.mark.parametrize(("stored", "region", "e164"), VALID, ids=lambda value: repr(value))
def test_a_number_as_stored_is_sent_in_e164(stored: Any, region: str | None, e164: str) -> None:
    mapped = map_event(FORMS, "forms", None, _event(stored, region))
    assert mapped.failures == []
    [run] = mapped.runs
    assert run.payload == {"from": FROM, "to": e164}


def _digits(value: Any) -> str:
    return re.sub(r"\D", "", str(value))


@pytest.mark.parametrize(("stored", "region", "reason"), INVALID, ids=lambda value: repr(value))
def test_a_number_that_is_not_valid_fails_the_run_by_its_shape(
    stored: Any, region: str | None, reason: str
) -> None:
    mapped = map_event(FORMS, "forms", None, _event(stored, region))
    assert mapped.runs == []
    [failure] = mapped.failures
    assert failure.route == "callback"
    assert failure.reason == f"payload key 'to': {reason}"
    # Never the number itself, nor its digits run together.
    if isinstance(stored, str) and len(stored) > 3:
        assert stored not in failure.reason
    if len(_digits(stored)) >= 4:
        assert _digits(stored) not in _digits(failure.reason)


def test_there_are_at_least_30_numbers_and_several_countries() -> None:
    assert len(VALID) + len(INVALID) >= 30
    countries = {e164[:3] for _, _, e164 in VALID}
    assert {"+14", "+44", "+33", "+49", "+91", "+55", "+61", "+81"} <= countries


E164 = re.compile(r"\+[1-9][0-9]{6,14}")
SCALARS = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"(tel:)?[+(]?[0-9][0-9 ().\-]{0,22}( ?(ext\.?|x) ?[0-9]{1,4})?", fullmatch=True),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2)
)


@given(
    value=VALUES, region=st.one_of(st.none(), st.sampled_from(["US", "GB", "de", "IN", "XX", ""]), st.text())
)
def test_any_value_is_a_number_in_e164_or_a_failure_that_does_not_show_it(value: Any, region: Any) -> None:
    mapped = map_event(FORMS, "forms", None, {"phone": value, "region": region})
    if mapped.runs:
        to = mapped.runs[0].payload.get("to")
        assert to is None or E164.fullmatch(to), to
        return
    [failure] = mapped.failures
    assert failure.reason.startswith("payload key 'to': not a ")
    if isinstance(value, str) and any(char.isdigit() for char in value) and len(value) >= 4:
        assert value not in failure.reason
    if len(_digits(value)) >= 4 and not isinstance(value, list | dict):
        assert _digits(value) not in _digits(failure.reason)


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_a_blank_number_is_absent_not_invalid(blank: Any) -> None:
    mapped = map_event(FORMS, "forms", None, {"phone": blank, "region": "US"})
    assert mapped.failures == []
    assert mapped.runs[0].payload == {"from": FROM}  # a key without a value is not sent


# --- the route's options -------------------------------------------------------------------------


def route_with(to: str) -> RelayConfig:
    return config_of(
        f"""
sources:
  forms: {{}}
routes:
  - name: callback
    source: forms
    phlo_id: phlo-x
    payload:
      to: {to}
"""
    )


def payload_of(to: str, event: dict[str, Any]) -> dict[str, Any]:
    mapped = map_event(route_with(to), "forms", None, event)
    assert mapped.failures == [], mapped.failures
    return mapped.runs[0].payload


def reason_of(to: str, event: dict[str, Any]) -> str:
    mapped = map_event(route_with(to), "forms", None, event)
    assert mapped.runs == []
    return mapped.failures[0].reason


def test_a_literal_region_applies_to_numbers_without_a_country_code() -> None:
    to = "{path: phone, format: e164, default_region: GB}"
    assert payload_of(to, {"phone": "020 7946 0958"}) == {"to": "+442079460958"}
    assert payload_of(to, {"phone": "+1 415 555 0123"}) == {"to": "+14155550123"}


def test_a_literal_region_in_lower_case_is_read_as_its_code() -> None:
    assert payload_of("{path: phone, format: e164, default_region: us}", {"phone": "415.555.0123"}) == {
        "to": "+14155550123"
    }


def test_without_a_region_only_international_numbers_are_valid() -> None:
    to = "{path: phone, format: e164}"
    assert payload_of(to, {"phone": "+44 20 7946 0958"}) == {"to": "+442079460958"}
    assert "no default region" in reason_of(to, {"phone": "020 7946 0958"})


def test_a_region_path_falls_back_to_its_default() -> None:
    to = "{path: phone, format: e164, default_region: {path: country, default: US}}"
    assert payload_of(to, {"phone": "020 7946 0958", "country": "GB"}) == {"to": "+442079460958"}
    assert payload_of(to, {"phone": "(415) 555-0123"}) == {"to": "+14155550123"}
    assert payload_of(to, {"phone": "(415) 555-0123", "country": "United States"}) == {"to": "+14155550123"}


def test_a_required_number_that_is_absent_says_so() -> None:
    reason = reason_of("{path: phone, format: e164, default_region: US, required: true}", {"phone": " "})
    assert reason == "required payload key 'to': path 'phone' found no value"


def test_a_default_number_is_normalised_too() -> None:
    to = "{path: phone, format: e164, default_region: US, default: '(415) 555-0100'}"
    assert payload_of(to, {}) == {"to": "+14155550100"}


def test_a_value_without_format_is_sent_as_stored() -> None:
    assert payload_of("{path: phone}", {"phone": "(415) 555-0123"}) == {"to": "(415) 555-0123"}


def test_the_shape_of_a_value_never_shows_it() -> None:
    assert shape("(415) 555-0123") == "value of 14 chars: digits, spaces, parentheses, hyphens"
    assert shape("+1 415.555.0123") == "value of 15 chars: digits, spaces, dots, a plus sign"
    assert shape("") == "value of 0 chars: none"


# --- the config check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "field", "fragment"),
    [
        (
            "{path: phone, format: e164, default_region: XX}",
            "payload.to.default_region",
            "'XX' is not a region",
        ),
        ("{path: phone, format: e164, default_region: USA}", "payload.to.default_region", "ISO 3166-1"),
        (
            "{path: phone, format: e164, default_region: {path: country, default: Britain}}",
            "payload.to.default_region.default",
            "'Britain' is not a region",
        ),
        (
            "{path: phone, format: e164, default_region: {path: 'country[='}}",
            "payload.to.default_region.path",
            "invalid JMESPath",
        ),
        ("{path: phone, default_region: US}", "payload.to", "add `format: e164`"),
        ("{path: phone, format: E.164}", "payload.to.format", "'e164'"),
    ],
)
def test_a_bad_phone_option_is_reported_at_its_field(to: str, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        route_with(to)
    messages = [f"{problem.location}: {problem.message}" for problem in raised.value.problems]
    assert any(
        message.startswith(f"route 'callback' (routes[0]): field {field}: ") and fragment in message
        for message in messages
    ), messages


# --- e164() in JMESPath: conditions and other paths ------------------------------------------------


BY_COUNTRY = config_of(
    """
sources:
  forms: {}
routes:
  - name: us-callback
    source: forms
    when: "starts_with(e164(phone, country) || '', '+1')"
    phlo_id: phlo-us
    payload:
      to: {path: phone, format: e164, default_region: {path: country}}
  - name: uk-callback
    source: forms
    when: "starts_with(e164(phone, 'GB') || '', '+44')"
    phlo_id: phlo-uk
    payload:
      to: {path: "e164(phone, 'GB')"}
"""
)


@pytest.mark.parametrize(
    ("event", "runs"),
    [
        ({"phone": "(415) 555-0123", "country": "us"}, [("us-callback", "+14155550123")]),
        ({"phone": 4155550123, "country": "US"}, [("us-callback", "+14155550123")]),
        ({"phone": "020 7946 0958", "country": "GB"}, [("uk-callback", "+442079460958")]),
        ({"phone": "+44 20 7946 0958"}, [("uk-callback", "+442079460958")]),
        ({"phone": "+1 415 555 0123"}, [("us-callback", "+14155550123")]),
        ({"phone": "n/a", "country": "US"}, []),  # not a number: e164() is null, no route matches
        ({"phone": None}, []),
        ({"phone": True}, []),  # not a string or a number: JMESPath's type check fails, no value
    ],
)
def test_e164_in_a_condition_routes_by_country(event: dict[str, Any], runs: list[tuple[str, str]]) -> None:
    mapped = map_event(BY_COUNTRY, "forms", None, event)
    assert mapped.failures == []
    assert [(run.route, run.payload["to"]) for run in mapped.runs] == runs
