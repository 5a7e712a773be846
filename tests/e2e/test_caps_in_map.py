"""`relay map` shows the caps a run would be counted under, naming the recipient by its hash only."""

from __future__ import annotations

import json

from relay.mapping.caps import recipient_hash
from tests.e2e.test_map_and_send import relay
from tests.e2e.test_sender_examples import EXAMPLES

SAMPLE = str(EXAMPLES / "samples" / "hubspot-workflow.json")
CONFIG = str(EXAMPLES / "hubspot-workflow.yaml")


def test_relay_map_shows_the_route_and_account_caps_of_the_hubspot_example() -> None:
    text = relay("map", "hubspot-workflow", SAMPLE, "--config", CONFIG)
    assert text.returncode == 0, text.stderr
    assert "capped: 1 per 86400 s per recipient (route hubspot-new-contact-sms" in text.stdout
    assert "capped: 3 per 604800 s per recipient (account default" in text.stdout
    shown = relay("map", "hubspot-workflow", SAMPLE, "--config", CONFIG, "--json")
    [route] = json.loads(shown.stdout)["events"][0]["routes"]
    by_contact, by_number = route["caps"]
    assert by_contact == {
        "kind": "route", "name": "hubspot-new-contact-sms", "recipient": recipient_hash(3201), "max": 1,
        "per_s": 86400,
    }  # fmt: skip
    assert by_number["recipient"] == recipient_hash(route["payload"]["to"])
