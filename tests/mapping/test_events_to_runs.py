"""relay.mapping.routes (events to PHLO runs) and relay.mapping.parse (request bodies to event documents)."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from relay.errors import MalformedHeader
from relay.mapping.config import RelayConfig, parse_config
from relay.mapping.expressions import Locator, locate
from relay.mapping.routes import PlannedRun, UnmappedRun, map_event

FROM = "+14155550100"


def config_of(text: str) -> RelayConfig:
    return parse_config(text, "test.yaml")


# --- the use cases, as config ---------------------------------------------------------------------


HUBSPOT = config_of(
    f"""
sources:
  hubspot-workflow:
    event_id: {{path: "to_string(vid)"}}
routes:
  - name: new-contact
    source: hubspot-workflow
    phlo_id: phlo-x
    payload:
      from: "{FROM}"
      to: {{path: properties.phone.value, required: true}}
"""
)


def test_hubspot_workflow_contact_runs_phlo_with_its_phone() -> None:
    body = {"vid": 1, "properties": {"phone": {"value": "+14155550124"}, "firstname": {"value": "Jane"}}}
    mapped = map_event(HUBSPOT, "hubspot-workflow", None, body)
    assert mapped.runs == [
        PlannedRun(
            route="new-contact",
            phlo_id="phlo-x",
            account="default",
            payload={"from": FROM, "to": "+14155550124"},
        )
    ]
    assert mapped.failures == []
    assert not mapped.ignored


def test_hubspot_contact_without_phone_is_a_failure_not_a_run() -> None:
    mapped = map_event(HUBSPOT, "hubspot-workflow", None, {"vid": 1, "properties": {}})
    assert mapped.runs == []
    assert [failure.route for failure in mapped.failures] == ["new-contact"]
    assert not mapped.ignored


TYPEFORM = config_of(
    """
sources:
  typeform:
    event_id: {path: event_id}
    event_type: {path: event_type}
routes:
  - name: phone-answer
    source: typeform
    events: [form_response]
    phlo_id: phlo-t
    payload:
      to: {path: "form_response.answers[?field.ref=='phone'] | [0].phone_number", required: true}
      email: {path: "form_response.answers[?field.ref=='email'] | [0].email"}
"""
)


def typeform_event(*answers: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": "e1", "event_type": "form_response", "form_response": {"answers": list(answers)}}


def test_typeform_takes_the_answer_whose_ref_is_phone() -> None:
    event = typeform_event(
        {"type": "email", "email": "laura@example.com", "field": {"ref": "email"}},
        {"type": "phone_number", "phone_number": "+14155550999", "field": {"ref": "other-phone"}},
        {"type": "phone_number", "phone_number": "+14155550125", "field": {"ref": "phone"}},
    )
    mapped = map_event(TYPEFORM, "typeform", "form_response", event)
    assert [run.payload for run in mapped.runs] == [{"to": "+14155550125", "email": "laura@example.com"}]


def test_typeform_without_phone_answer_fails_and_optional_email_is_omitted() -> None:
    event = typeform_event({"type": "text", "text": "hi", "field": {"ref": "comment"}})
    mapped = map_event(TYPEFORM, "typeform", "form_response", event)
    assert mapped.runs == []
    [failure] = mapped.failures
    assert failure.route == "phone-answer"
    assert "'to'" in failure.reason


def test_typeform_other_event_type_is_ignored() -> None:
    mapped = map_event(TYPEFORM, "typeform", "form_partial", typeform_event())
    assert mapped.ignored


# --- payload values -------------------------------------------------------------------------------


PAYLOADS = config_of(
    """
sources:
  forms:
    event_id: {path: id}
    event_type: {path: type}
  crm:
    event_id: {path: id}
routes:
  - name: callback
    source: forms
    phlo_id: phlo-a
    account: eu
    payload:
      to: {path: phone, required: true}
      name: {path: name, default: there}
      company: {path: company}
      count: 3
      ratio: 0.5
      flag: false
      tags: [a, b]
      meta: {value: {source: web, ids: [1, 2]}}
  - name: alert
    source: forms
    phlo_id: phlo-b
    payload:
      lead: {path: phone}
  - name: crm-only
    source: crm
    phlo_id: phlo-c
    payload:
      to: {path: phone}
"""
)


def test_default_used_when_path_absent() -> None:
    [run, _] = map_event(PAYLOADS, "forms", None, {"phone": "+1"}).runs
    assert run.payload["name"] == "there"


def test_default_used_when_value_is_empty_string() -> None:
    [run, _] = map_event(PAYLOADS, "forms", None, {"phone": "+1", "name": ""}).runs
    assert run.payload["name"] == "there"


def test_default_used_when_value_is_null() -> None:
    [run, _] = map_event(PAYLOADS, "forms", None, {"phone": "+1", "name": None}).runs
    assert run.payload["name"] == "there"


def test_present_value_wins_over_default() -> None:
    [run, _] = map_event(PAYLOADS, "forms", None, {"phone": "+1", "name": "Ada"}).runs
    assert run.payload["name"] == "Ada"


def test_falsy_values_found_by_path_are_kept() -> None:
    config = config_of(
        """
sources: {s: {}}
routes:
  - {name: r, source: s, phlo_id: p, payload: {zero: {path: a, default: 9}, flag: {path: b, required: true}}}
"""
    )
    [run] = map_event(config, "s", None, {"a": 0, "b": False}).runs
    assert run.payload == {"zero": 0, "flag": False}


def test_required_key_absent_is_unmapped_and_other_routes_still_map() -> None:
    mapped = map_event(PAYLOADS, "forms", None, {"name": "Ada"})
    assert mapped.failures == [
        UnmappedRun(route="callback", phlo_id="phlo-a", account="eu", reason=mapped.failures[0].reason)
    ]
    reason = mapped.failures[0].reason
    assert "'to'" in reason
    assert "'phone'" in reason
    # The alert route matched too; its payload has no required key, and its absent optional key is omitted.
    assert mapped.runs == [PlannedRun(route="alert", phlo_id="phlo-b", account="default", payload={})]


def test_required_key_empty_string_is_unmapped() -> None:
    mapped = map_event(PAYLOADS, "forms", None, {"phone": ""})
    assert [failure.route for failure in mapped.failures] == ["callback"]


def test_optional_absent_key_is_omitted() -> None:
    [run, _] = map_event(PAYLOADS, "forms", None, {"phone": "+1"}).runs
    assert "company" not in run.payload


def test_literals_are_passed_through() -> None:
    [run, alert] = map_event(PAYLOADS, "forms", None, {"phone": "+1", "company": "ACME"}).runs
    assert run == PlannedRun(
        route="callback",
        phlo_id="phlo-a",
        account="eu",
        payload={
            "to": "+1",
            "name": "there",
            "company": "ACME",
            "count": 3,
            "ratio": 0.5,
            "flag": False,
            "tags": ["a", "b"],
            "meta": {"source": "web", "ids": [1, 2]},
        },
    )
    assert alert.payload == {"lead": "+1"}


def test_path_value_can_be_an_object() -> None:
    config = config_of(
        "sources: {s: {}}\nroutes:\n  - {name: r, source: s, phlo_id: p, payload: {a: {path: o}}}\n"
    )
    [run] = map_event(config, "s", None, {"o": {"k": [1]}}).runs
    assert run.payload == {"a": {"k": [1]}}


def test_route_of_another_source_never_matches() -> None:
    mapped = map_event(PAYLOADS, "crm", None, {"phone": "+1"})
    assert [run.route for run in mapped.runs] == ["crm-only"]
    assert mapped.failures == []


def test_unknown_source_maps_to_nothing() -> None:
    assert map_event(PAYLOADS, "nope", None, {"phone": "+1"}).ignored


def test_fan_out_follows_config_order() -> None:
    config = config_of(
        """
sources: {a: {}, b: {}}
routes:
  - {name: third, source: a, phlo_id: p3}
  - {name: other, source: b, phlo_id: p0}
  - {name: first, source: a, phlo_id: p1}
  - {name: second, source: a, phlo_id: p2}
"""
    )
    mapped = map_event(config, "a", None, {})
    assert [(run.route, run.phlo_id) for run in mapped.runs] == [
        ("third", "p3"),
        ("first", "p1"),
        ("second", "p2"),
    ]


# --- matching: when and events -------------------------------------------------------------------------


MATCHING = config_of(
    """
sources:
  crm:
    event_id: {path: id}
    event_type: {header: X-Event}
routes:
  - {name: big, source: crm, phlo_id: p1, when: "company_size == '500+'"}
  - {name: tagged, source: crm, phlo_id: p2, when: tags}
  - {name: contacts, source: crm, phlo_id: p3, events: ["contact.*"]}
  - {name: deals-or-tickets, source: crm, phlo_id: p4, events: [deal.created, "ticket.?"]}
"""
)


def routes_for(event_type: str | None, document: Any) -> list[str]:
    return [run.route for run in map_event(MATCHING, "crm", event_type, document).runs]


def test_when_truthy_matches() -> None:
    assert routes_for(None, {"company_size": "500+", "tags": ["vip"]}) == ["big", "tagged"]


@pytest.mark.parametrize(
    "document",
    [{"company_size": "10"}, {"tags": []}, {"tags": {}}, {"tags": ""}, {"tags": False}, {"tags": None}, {}],
)
def test_when_falsy_does_not_match(document: dict[str, Any]) -> None:
    assert routes_for(None, document) == []


def test_when_on_a_non_object_document_does_not_match() -> None:
    assert routes_for(None, ["company_size"]) == []


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("contact.created", ["contacts"]),
        ("contact.deleted", ["contacts"]),
        ("contact", []),
        ("Contact.created", []),
        ("deal.created", ["deals-or-tickets"]),
        ("deal.deleted", []),
        ("ticket.1", ["deals-or-tickets"]),
        ("ticket.10", []),
        (None, []),
    ],
)
def test_events_are_shell_patterns(event_type: str | None, expected: list[str]) -> None:
    assert routes_for(event_type, {}) == expected


def test_route_without_events_matches_any_event_type() -> None:
    assert routes_for("anything", {"company_size": "500+"}) == ["big"]


# --- locate -----------------------------------------------------------------------------------------------


def test_locate_header_is_case_insensitive() -> None:
    headers = CIMultiDict({"x-hubspot-request-id": "req-1"})
    assert locate(Locator(header="X-HubSpot-Request-Id"), {"id": "body"}, headers) == "req-1"


def test_locate_missing_or_empty_header() -> None:
    assert locate(Locator(header="X-Id"), {}, CIMultiDict[str]()) is None
    assert locate(Locator(header="X-Id"), {}, CIMultiDict({"X-Id": ""})) is None


def test_locate_body_path() -> None:
    document = {"a": {"b": "x"}, "n": 42, "f": 1.5, "z": 0}
    assert locate(Locator(path="a.b"), document, {}) == "x"
    assert locate(Locator(path="n"), document, {}) == "42"
    assert locate(Locator(path="f"), document, {}) == "1.5"
    assert locate(Locator(path="z"), document, {}) == "0"


@pytest.mark.parametrize("value", [{"k": 1}, [1, 2], [], {}, "", None])
def test_locate_returns_none_for_objects_lists_and_empty(value: Any) -> None:
    assert locate(Locator(path="v"), {"v": value}, {}) is None


def test_locate_absent_path_or_no_locator() -> None:
    assert locate(Locator(path="a.b"), {"a": "not an object"}, {}) is None
    assert locate(None, {"id": "x"}, {}) is None


def test_locate_refuses_a_header_that_is_not_utf8() -> None:
    """Regression: an event id header with a byte that is not UTF-8 reached Redis and failed there (a 500)."""
    headers = CIMultiDict({"X-Id": "evt-\udcff"})  # how aiohttp hands such a byte over
    with pytest.raises(MalformedHeader, match="header X-Id is not valid UTF-8"):
        locate(Locator(header="X-Id"), {}, headers)
    assert locate(Locator(header="X-Id"), {}, CIMultiDict({"X-Id": "évt-1"})) == "évt-1"


def one_path_route(path: str, when: str | None = None) -> RelayConfig:
    condition = f", when: {when!r}" if when else ""
    return config_of(
        f"sources: {{s: {{}}}}\nroutes:\n  - {{name: r, source: s, phlo_id: p{condition}, "
        f"payload: {{x: {{path: {path!r}}}, y: {{path: y}}}}}}\n"
    )


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("floor(to_number(a))", {"a": "1.0e999"}),  # OverflowError: cannot convert float infinity
        ("ceil(sum(a))", {"a": [1e308, 1e308]}),
        ("a[::0]", {"a": [1]}),  # ValueError: slice step cannot be zero
        ("merge(a, b)", {"a": {}, "b": 1}),  # TypeError: 'int' object is not iterable
        ("a" + " | a" * 400, {"a": 1}),  # RecursionError
    ],
    ids=["overflow", "overflow-sum", "zero-step", "merge-number", "recursion"],
)
def test_an_expression_that_fails_on_the_document_counts_as_no_value(path: str, document: Any) -> None:
    """Regression: JMESPath raised plain Python errors on these documents, which escaped map_event: a 500."""
    [run] = map_event(one_path_route(path), "s", None, {**document, "y": 1}).runs
    assert run.payload == {"y": 1}
    assert map_event(one_path_route("y", when=path), "s", None, document).ignored


@pytest.mark.parametrize("text", ["1.0e999", "-1.0e999", "NaN", "inf"])
def test_a_number_json_cannot_carry_is_a_mapping_failure(text: str) -> None:
    """Regression: to_number() made an infinity or NaN, which the worker could not send (a failure each
    attempt, with a misleading reason); now the route is dead-lettered at once, saying why."""
    for path in ("to_number(a)", "[to_number(a)]"):
        mapped = map_event(one_path_route(path), "s", None, {"a": text})
        assert mapped.runs == []
        [failure] = mapped.failures
        assert failure.reason.startswith(
            "payload key 'x' holds an infinity, a NaN or an expression reference"
        )


@pytest.mark.parametrize("path", ["&a", "[&a]", "{k: &a}"])
def test_a_path_to_an_expression_reference_is_a_mapping_failure_not_a_crash(path: str) -> None:
    """Regression: `&a` compiles and evaluates to a JMESPath object, which no JSON encoder takes: the
    queued job failed to serialize (a 500). Found by tests/e2e/test_fuzz.py."""
    [failure] = map_event(one_path_route(path), "s", None, {"a": 1}).failures
    assert "expression reference" in failure.reason
    assert locate(Locator(path=path), {"a": 1}, {}) is None  # an event id that is a JMESPath object
