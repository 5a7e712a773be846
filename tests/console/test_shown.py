"""What the console shows of a sender's values: phone numbers and e-mail addresses masked, however nested."""

from __future__ import annotations

from relay.ingress.console.shown import shown, with_reveal


def test_every_string_and_phone_like_number_is_masked_unless_revealed() -> None:
    value = {
        "to": "+14155550123",
        "ada@example.com": ["call 415-555-0123", 14155550123, 42, 3.5, True, None],
        "nested": {"email": "grace.hopper@example.org"},
    }
    assert shown(value, False) == {
        "to": "+1415*****23",
        "a***@example.com": ["call 415-***-**23", "1415*****23", 42, 3.5, True, None],
        "nested": {"email": "g***@example.org"},
    }
    assert shown(value, True) == value


def test_reveal_links_keep_the_query() -> None:
    query = {"source": "website-form", "reveal": "1", "route": ""}
    assert with_reveal("/console/events", query, False) == "/console/events?source=website-form"
    assert with_reveal("/console/events", query, True) == "/console/events?source=website-form&reveal=1"
    assert with_reveal("/console/events/evt_1", {}, False) == "/console/events/evt_1"
