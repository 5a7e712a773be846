"""The frequency cap's Lua script against the suite's real Redis: the window slides, a run counted once passes
again (its retries), route and account scopes count separately, an override is counted without the check;
and what the mapping resolves for a run (hashes, never the number)."""

from __future__ import annotations

import pytest
from redis import Redis

from relay.errors import ConfigError
from relay.mapping.caps import recipient_hash
from relay.mapping.config import parse_config
from relay.mapping.routes import map_event
from relay.queue.caps import Scope, admit

HOUR_MS = 3_600_000
T0_MS = 1_800_000_000_000
PHONE = "+14155550123"


def scope(kind: str = "route", name: str = "call", max_runs: int = 1, per_s: int = 86400) -> Scope:
    return Scope(kind, name, recipient_hash(PHONE), max_runs, per_s)


def test_a_second_run_in_the_window_is_over_and_names_the_first(redis: Redis) -> None:
    caps = [scope()]
    assert admit(redis, caps, "evt_a", "evt_a-call", now_ms=T0_MS) is None
    over = admit(redis, caps, "evt_b", "evt_b-call", now_ms=T0_MS + 1)
    assert over is not None
    assert (over.event_id, over.job_id, over.scope) == ("evt_a", "evt_a-call", caps[0])
    # The suppressed run was not counted: the window holds the first alone.
    assert redis.zrange(caps[0].key, 0, -1) == [b"evt_a evt_a-call"]


def test_the_window_slides(redis: Redis) -> None:
    caps = [scope(max_runs=2, per_s=3600)]
    assert admit(redis, caps, "evt_a", "evt_a-call", now_ms=T0_MS) is None
    assert admit(redis, caps, "evt_b", "evt_b-call", now_ms=T0_MS + HOUR_MS // 2) is None
    over = admit(redis, caps, "evt_c", "evt_c-call", now_ms=T0_MS + HOUR_MS - 1)
    assert over is not None and over.job_id == "evt_a-call"  # the oldest in the window
    # One hour after the first, it has left the window: one place is free, for one run.
    assert admit(redis, caps, "evt_c", "evt_c-call", now_ms=T0_MS + HOUR_MS) is None
    over = admit(redis, caps, "evt_d", "evt_d-call", now_ms=T0_MS + HOUR_MS + 1)
    assert over is not None and over.job_id == "evt_b-call"
    # The key lives as long as its newest member's window, no longer.
    assert 0 < redis.pttl(caps[0].key) <= HOUR_MS


def test_a_retry_of_a_counted_run_passes_and_is_not_counted_twice(redis: Redis) -> None:
    caps = [scope(max_runs=2)]
    for attempt in range(3):
        assert admit(redis, caps, "evt_a", "evt_a-call", now_ms=T0_MS + attempt) is None
    assert redis.zcard(caps[0].key) == 1
    # Its score stays the time it was first counted: retries do not move its window.
    assert redis.zscore(caps[0].key, "evt_a evt_a-call") == T0_MS
    assert admit(redis, caps, "evt_b", "evt_b-call", now_ms=T0_MS + 5) is None
    assert admit(redis, caps, "evt_a", "evt_a-call", now_ms=T0_MS + 6) is None  # still in: passes
    assert admit(redis, caps, "evt_c", "evt_c-call", now_ms=T0_MS + 7) is not None


def test_route_and_account_scopes_count_apart_and_a_run_must_fit_both(redis: Redis) -> None:
    account = scope("account", "default", max_runs=2)
    sms, call = scope("route", "sms"), scope("route", "call")
    assert admit(redis, [sms, account], "evt_a", "evt_a-sms", now_ms=T0_MS) is None
    # Another route's cap is its own: the call route has sent nothing to this recipient.
    assert admit(redis, [call, account], "evt_a", "evt_a-call", now_ms=T0_MS + 1) is None
    # The account's cap of 2 is now full, whatever the route.
    over = admit(redis, [Scope("route", "other", recipient_hash(PHONE), 5, 86400), account], "evt_b",
                 "evt_b-other", now_ms=T0_MS + 2)  # fmt: skip
    assert over is not None and over.scope == account and over.job_id == "evt_a-sms"
    # Over one scope counts it in none (the route scope 'other' stays empty).
    assert redis.exists(Scope("route", "other", recipient_hash(PHONE), 5, 86400).key) == 0
    # Another recipient has caps of its own.
    elsewhere = Scope("account", "default", recipient_hash("+442079460958"), 2, 86400)
    assert admit(redis, [elsewhere], "evt_c", "evt_c-sms", now_ms=T0_MS + 3) is None


def test_an_override_is_counted_without_the_check(redis: Redis) -> None:
    caps = [scope()]
    assert admit(redis, caps, "evt_a", "evt_a-call", now_ms=T0_MS) is None
    assert admit(redis, caps, "evt_b", "evt_b-call", override=True, now_ms=T0_MS + 1) is None
    assert redis.zcard(caps[0].key) == 2
    over = admit(redis, caps, "evt_c", "evt_c-call", now_ms=T0_MS + 2)
    assert over is not None and over.job_id == "evt_a-call"


def test_redis_clock_is_used_without_now(redis: Redis) -> None:
    caps = [scope()]
    assert admit(redis, caps, "evt_a", "evt_a-call") is None
    assert admit(redis, caps, "evt_b", "evt_b-call") is not None
    seconds, _ = redis.time()
    assert abs(redis.zscore(caps[0].key, "evt_a evt_a-call") - seconds * 1000) < 60_000  # type: ignore[operator]


CONFIG = """
sources:
  forms: {}
accounts:
  default:
    limit_per_recipient: {max: 3, per: 7d}
routes:
  - name: call
    source: forms
    phlo_id: phlo-a
    payload: {to: {path: phone}}
    limit_per_recipient: {max: 1, per: 24h}
  - name: sms
    source: forms
    phlo_id: phlo-b
    payload: {to: {path: phone}}
    limit_per_recipient: {key: {path: contact.id}, per: 30m}
"""


def test_the_mapping_resolves_each_cap_to_the_recipients_hash() -> None:
    config = parse_config(CONFIG, "caps.yaml")
    mapped = map_event(config, "forms", None, {"phone": f" {PHONE} ", "contact": {"id": 42}})
    call, sms = mapped.runs
    assert call.cap == {
        "scopes": [
            {"kind": "route", "name": "call", "recipient": recipient_hash(PHONE), "max": 1, "per_s": 86400},
            {"kind": "account", "name": "default", "recipient": recipient_hash(PHONE), "max": 3,
             "per_s": 7 * 86400},
        ]
    }  # fmt: skip
    assert sms.cap is not None and sms.cap["scopes"][0]["recipient"] == recipient_hash(42)
    assert sms.cap["scopes"][0]["max"] == 1 and sms.cap["scopes"][0]["per_s"] == 1800
    assert PHONE not in repr(call.cap) and PHONE.strip("+") not in repr(call.cap)


def test_a_cap_whose_recipient_is_missing_makes_the_run_a_mapping_failure() -> None:
    config = parse_config(CONFIG, "caps.yaml")
    mapped = map_event(config, "forms", None, {"phone": PHONE})
    assert [run.route for run in mapped.runs] == ["call"]
    [failure] = mapped.failures
    assert failure.route == "sms"
    assert failure.reason == "limit_per_recipient of the route: path 'contact.id' found no recipient"


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        ("{max: 1, per: 24 hours}", "is not a duration"),
        ("{max: 0, per: 24h}", "greater than or equal to 1"),
        ("{max: 1}", "Field required"),
        ("{max: 1, per: 1h, key: {paht: x}}", "Extra inputs"),
        ("{max: 1, per: 400d}", "less than or equal to"),
    ],
)
def test_bad_caps_are_config_errors_naming_the_field(limit: str, problem: str) -> None:
    text = CONFIG.replace("{max: 1, per: 24h}", limit)
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "caps.yaml")
    assert any(
        "route 'call'" in str(found) and "limit_per_recipient" in str(found) and problem in str(found)
        for found in raised.value.problems
    ), raised.value.problems


def test_an_accounts_block_names_known_accounts_only() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(CONFIG.replace("  default:\n", "  marketing:\n"), "caps.yaml", {"default"})
    assert [str(problem) for problem in raised.value.problems] == [
        "caps.yaml: account 'marketing': no Plivo account 'marketing' in settings"
    ]
