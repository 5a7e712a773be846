"""Mapping config validation: every problem names the file, the route (or source) and the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.errors import ConfigError, ConfigProblem
from relay.mapping.config import LiteralValue, PathValue, RelayConfig, load_config, parse_config
from relay.mapping.expressions import locate
from relay.mapping.routes import map_event

FILE = "routes.yaml"
CONFIG_DIR = Path(__file__).parents[2] / "config"
SHIPPED_CONFIG = CONFIG_DIR / "routes.yaml"

SOURCES = """
sources:
  forms:
    event_id: {path: id}
    event_type: {path: type}
  crm:
    event_id: {header: X-Request-Id}
"""


def problems_of(text: str, accounts: set[str] | None = None) -> list[ConfigProblem]:
    """The problems parse_config reports for a config that must be refused."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE, accounts)
    problems = info.value.problems
    assert problems, "a ConfigError must list at least one problem"
    assert all(problem.file == FILE for problem in problems)
    return problems


def only_problem(text: str, accounts: set[str] | None = None) -> ConfigProblem:
    problems = problems_of(text, accounts)
    assert len(problems) == 1, problems
    return problems[0]


def with_routes(routes: str) -> str:
    return SOURCES + "routes:\n" + routes


def clean_env() -> dict[str, str]:
    """This process's environment without any RELAY_* / PLIVO_* variable."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("RELAY_", "PLIVO_"))}


# --- YAML and top level -------------------------------------------------------------------------------


def test_invalid_yaml_reports_the_line() -> None:
    problem = only_problem("sources:\n  forms: {}\nroutes: [\n  - name: x\n")
    assert problem.location.startswith("line ")
    line = int(problem.location.split()[1].rstrip(","))
    assert line >= 3
    assert "not valid YAML" in problem.message
    assert str(problem).startswith(f"{FILE}: line {line}")


def test_invalid_yaml_line_is_the_offending_line() -> None:
    problem = only_problem("sources:\n  forms: {}\nroutes: [1\nfoo: 2\n")
    assert problem.location.startswith("line 4,")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    problem = only_problem(text)
    assert problem.location == "top level"
    assert "mapping" in problem.message


def test_unknown_top_level_key_is_refused() -> None:
    problem = only_problem(SOURCES + "rotues: []\n")
    assert problem.location == "top level: field rotues"


def test_missing_sources_is_reported() -> None:
    problem = only_problem("routes: []\n")
    assert problem.location == "top level: field sources"


# --- routes ---------------------------------------------------------------------------------------------


def test_route_with_unknown_source_lists_known_sources() -> None:
    problem = only_problem(with_routes("  - {name: x, source: froms, phlo_id: p1}\n"))
    assert problem.location == "route 'x' (routes[0]): field source"
    assert "'froms'" in problem.message
    assert "crm, forms" in problem.message


def test_route_without_phlo_id() -> None:
    problem = only_problem(with_routes("  - {name: x, source: forms}\n"))
    assert problem.location == "route 'x' (routes[0]): field phlo_id"
    assert "required" in problem.message.lower()


@pytest.mark.parametrize("phlo_id", ["has space", "a/b", "x" * 65, "'.'", "'é'"])
def test_phlo_id_with_bad_characters(phlo_id: str) -> None:
    problem = only_problem(with_routes(f"  - {{name: x, source: forms, phlo_id: {phlo_id}}}\n"))
    assert problem.location == "route 'x' (routes[0]): field phlo_id"


@pytest.mark.parametrize("name", ["'has space'", "-leading-dash", "a.b", "x" * 65])
def test_bad_route_name(name: str) -> None:
    problem = only_problem(with_routes(f"  - {{name: {name}, source: forms, phlo_id: p1}}\n"))
    assert problem.location.endswith("(routes[0]): field name")


def test_route_index_is_reported_without_a_name() -> None:
    problems = problems_of(with_routes("  - {name: ok, source: forms, phlo_id: p1}\n  - {source: forms}\n"))
    assert [problem.location for problem in problems] == ["routes[1]: field name", "routes[1]: field phlo_id"]


def test_invalid_jmespath_in_when() -> None:
    problem = only_problem(with_routes("  - {name: x, source: forms, phlo_id: p1, when: 'a[='}\n"))
    assert problem.location == "route 'x' (routes[0]): field when"
    assert "invalid JMESPath" in problem.message
    assert "'a[='" in problem.message


@pytest.mark.parametrize(
    ("payload", "field", "fragments"),
    [
        ("{to: {path: 'phone[='}}", "payload.to.path", ["invalid JMESPath", "'phone[='"]),
        # A typo is refused, not taken as a literal object sent to the PHLO.
        ("{to: {paht: phone}}", "payload.to", ["{path: ...,", "{value: ...}"]),
        ("{to: {value: 1, default: 2}}", "payload.to", ["{value: ...}"]),
        ("{to: {path: phone, requird: true}}", "payload.to.requird", ["not permitted"]),
    ],
)
def test_bad_payload_value_is_reported_at_its_key(payload: str, field: str, fragments: list[str]) -> None:
    problem = only_problem(with_routes(f"  - {{name: x, source: forms, phlo_id: p1, payload: {payload}}}\n"))
    assert problem.location == f"route 'x' (routes[0]): field {field}"
    for fragment in fragments:
        assert fragment in problem.message


def test_every_bad_payload_key_is_reported() -> None:
    problems = problems_of(
        with_routes(
            "  - name: x\n    source: forms\n    phlo_id: p1\n"
            "    payload: {to: {paht: phone}, name: {path: 'name[='}}\n"
        )
    )
    assert len(problems) == 2, problems


def test_literal_value_object_is_accepted() -> None:
    config = parse_config(
        with_routes(
            "  - name: x\n    source: forms\n    phlo_id: p1\n"
            "    payload:\n      meta: {value: {path: not-a-path, n: 1}}\n      to: {path: phone}\n"
            "      n: 3\n      tags: [a, b]\n"
        ),
        FILE,
    )
    payload = config.routes[0].payload
    assert payload["meta"] == LiteralValue(value={"path": "not-a-path", "n": 1})
    assert payload["n"] == LiteralValue(value=3)
    assert payload["tags"] == LiteralValue(value=["a", "b"])
    assert isinstance(payload["to"], PathValue)
    assert payload["to"].path == "phone"


def test_duplicate_route_names() -> None:
    problem = only_problem(
        with_routes(
            "  - {name: x, source: forms, phlo_id: p1}\n"
            "  - {name: y, source: forms, phlo_id: p2}\n"
            "  - {name: x, source: crm, phlo_id: p3}\n"
        )
    )
    assert problem.location == "route 'x' (routes[2]): field name"
    assert "another route" in problem.message


def test_events_on_a_source_without_event_type() -> None:
    problem = only_problem(with_routes("  - {name: x, source: crm, phlo_id: p1, events: [contact.*]}\n"))
    assert problem.location == "route 'x' (routes[0]): field events"
    assert "'crm'" in problem.message
    assert "event_type" in problem.message


def test_events_on_a_source_with_event_type_is_accepted() -> None:
    config = parse_config(with_routes("  - {name: x, source: forms, phlo_id: p1, events: [a, b*]}\n"), FILE)
    assert config.routes[0].events == ["a", "b*"]


def test_empty_events_list_is_refused() -> None:
    problem = only_problem(with_routes("  - {name: x, source: forms, phlo_id: p1, events: []}\n"))
    assert problem.location == "route 'x' (routes[0]): field events"


def test_unknown_account_names_the_settings_variables() -> None:
    problem = only_problem(
        with_routes("  - {name: x, source: forms, phlo_id: p1, account: eu}\n"), accounts={"default"}
    )
    assert problem.location == "route 'x' (routes[0]): field account"
    assert "'eu'" in problem.message
    assert "RELAY_ACCOUNTS__EU__AUTH_ID" in problem.message
    assert "__AUTH_TOKEN" in problem.message


def test_known_account_is_accepted() -> None:
    config = parse_config(
        with_routes("  - {name: x, source: forms, phlo_id: p1, account: eu}\n"), FILE, {"default", "eu"}
    )
    assert config.routes[0].account == "eu"


def test_any_account_is_accepted_when_accounts_are_not_given() -> None:
    config = parse_config(with_routes("  - {name: x, source: forms, phlo_id: p1, account: eu}\n"), FILE, None)
    assert config.routes[0].account == "eu"


def test_default_account_is_used_when_route_names_none() -> None:
    config = parse_config(with_routes("  - {name: x, source: forms, phlo_id: p1}\n"), FILE, {"default"})
    assert config.routes[0].account == "default"


# --- sources ----------------------------------------------------------------------------------------------


def test_invalid_jmespath_in_source_event_id() -> None:
    problem = only_problem("sources:\n  forms:\n    event_id: {path: 'id[='}\n")
    assert problem.location == "source 'forms': field event_id"
    assert "invalid JMESPath" in problem.message


@pytest.mark.parametrize("locator", ["{path: id, header: X-Id}", "{}"])
def test_locator_needs_exactly_one_of_path_and_header(locator: str) -> None:
    problem = only_problem(f"sources:\n  forms:\n    event_type: {locator}\n")
    assert problem.location == "source 'forms': field event_type"
    assert "exactly one of `path`" in problem.message


def test_unknown_source_key_is_refused() -> None:
    problem = only_problem("sources:\n  forms:\n    event_idd: {path: id}\n")
    assert problem.location == "source 'forms': field event_idd"


def test_bad_source_name_is_refused() -> None:
    problem = only_problem("sources:\n  'bad name': {}\n")
    assert problem.location.startswith("source 'bad name'")


@pytest.mark.parametrize(
    ("verify", "field", "fragment"),
    [
        ("{scheme: stripe}", "verify[0].secrets", "Field required"),
        ("{scheme: stripe, secrets: []}", "verify[0].secrets", "at least 1"),
        ("{scheme: nope, secrets: [A]}", "verify[0]", "`scheme` must be one of: standard-webhooks"),
        ("{scheme: github, secrets: ['lower-case-dash']}", "verify[0].secrets[0]", "pattern"),
        ("{scheme: github, secrets: [A], tolerance_s: 0}", "verify[0].tolerance_s", "greater than"),
        ("{scheme: hmac, secrets: [A]}", "verify[0].header", "Field required"),
        (
            "{scheme: hmac, secrets: [A], header: X, signed: '{timestamp}.{body}'}",
            "verify[0]",
            "timestamp_header",
        ),
        ("{scheme: hmac, secrets: [A], header: X, signed: '{timestamp}'}", "verify[0].signed", "pattern"),
        ("{scheme: hmac, secrets: [A], header: X, algorithm: md5}", "verify[0].algorithm", "sha256"),
        ("{scheme: token, secrets: [A]}", "verify[0]", "exactly one of `header` or `query`"),
        ("{scheme: ip-allow, networks: [300.1.1.1/8]}", "verify[0].networks[0]", "IPv4 or IPv6 network"),
        ("[{scheme: basic, secrets: [A]}, {scheme: ip-allow}]", "verify[1].networks", "Field required"),
    ],
)
def test_bad_verification_is_reported_at_its_field(verify: str, field: str, fragment: str) -> None:
    problem = only_problem(f"sources:\n  forms:\n    verify: {verify}\n")
    assert problem.location == f"source 'forms': field {field}"
    assert fragment in problem.message


def test_one_verification_or_a_list_of_them() -> None:
    one = parse_config("sources:\n  s:\n    verify: {scheme: github, secrets: [GH]}\n", FILE)
    both = parse_config(
        "sources:\n  s:\n    verify:\n      - {scheme: ip-allow, networks: [10.0.0.0/8]}\n"
        "      - {scheme: token, query: key, secrets: [KEY, KEY_OLD]}\n",
        FILE,
    )
    assert [spec.scheme for spec in one.sources["s"].verify] == ["github"]
    assert [spec.scheme for spec in both.sources["s"].verify] == ["ip-allow", "token"]


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        ("batch: 'items[='", "batch", "invalid JMESPath"),
        ("reply: soap", "reply", "salesforce-ack"),
        ("dedupe_window_s: -1", "dedupe_window_s", "greater than or equal"),
    ],
)
def test_bad_source_options(line: str, field: str, fragment: str) -> None:
    problem = only_problem(f"sources:\n  forms:\n    {line}\n")
    assert problem.location == f"source 'forms': field {field}"
    assert fragment in problem.message


# --- many problems at once ---------------------------------------------------------------------------


def test_several_errors_are_all_reported_at_once() -> None:
    text = (
        "sources:\n"
        "  forms:\n"
        "    event_id: {path: 'id[='}\n"
        "routes:\n"
        "  - {name: a, source: forms, phlo_id: 'bad id'}\n"
        "  - {name: b, source: forms, phlo_id: p1, when: 'x[='}\n"
        "  - {name: c, source: forms}\n"
        "unknown: 1\n"
    )
    problems = problems_of(text)
    assert len(problems) == 5, problems
    locations = {problem.location for problem in problems}
    assert locations == {
        "source 'forms': field event_id",
        "route 'a' (routes[0]): field phlo_id",
        "route 'b' (routes[1]): field when",
        "route 'c' (routes[2]): field phlo_id",
        "top level: field unknown",
    }


def test_several_cross_route_errors_are_all_reported_at_once() -> None:
    text = with_routes(
        "  - {name: a, source: nope, phlo_id: p1}\n"
        "  - {name: a, source: crm, phlo_id: p2, events: [x]}\n"
        "  - {name: c, source: forms, phlo_id: p3, account: eu}\n"
    )
    problems = problems_of(text, accounts={"default"})
    assert [problem.location for problem in problems] == [
        "route 'a' (routes[0]): field source",
        "route 'a' (routes[1]): field name",
        "route 'a' (routes[1]): field events",
        "route 'c' (routes[2]): field account",
    ]


def test_schema_and_cross_route_errors_are_reported_together() -> None:
    # One `relay check` run must list every problem: a bad phlo_id in one route must not hide an
    # unknown source in another.
    text = with_routes(
        "  - {name: a, source: forms, phlo_id: 'bad id'}\n  - {name: b, source: nope, phlo_id: p2}\n"
    )
    problems = problems_of(text)
    assert {problem.location for problem in problems} == {
        "route 'a' (routes[0]): field phlo_id",
        "route 'b' (routes[1]): field source",
    }


# --- files ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.file == str(path)
    assert problem.location == "file"
    assert "cannot be read" in problem.message


def test_load_config_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(with_routes("  - {name: x, source: nope, phlo_id: p1}\n"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.file == str(path)
    assert str(info.value).startswith(f"{path}: route 'x' (routes[0]): field source")


def test_load_config_checks_accounts(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(with_routes("  - {name: x, source: forms, phlo_id: p1, account: eu}\n"), encoding="utf-8")
    assert load_config(path, {"default", "eu"}).routes[0].account == "eu"
    with pytest.raises(ConfigError):
        load_config(path, {"default"})


def test_shipped_config_validates() -> None:
    config = load_config(SHIPPED_CONFIG, {"default"})
    assert isinstance(config, RelayConfig)
    assert config.routes
    assert {route.source for route in config.routes} <= set(config.sources)


SAMPLES = sorted((CONFIG_DIR / "samples").glob("*.json"))


def test_there_are_samples_for_every_source() -> None:
    config = load_config(SHIPPED_CONFIG)
    assert {sample.stem for sample in SAMPLES} == set(config.sources)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: path.stem)
def test_every_sample_maps_to_a_run(sample: Path) -> None:
    config = load_config(SHIPPED_CONFIG)
    source = config.sources[sample.stem]
    document = json.loads(sample.read_text(encoding="utf-8"))
    assert locate(source.event_id, document, {}) is not None
    event_type = locate(source.event_type, document, {})
    mapped = map_event(config, sample.stem, event_type, document)
    assert mapped.failures == []
    assert len(mapped.runs) >= 1
    for run in mapped.runs:
        assert run.payload.get("to"), run
        assert run.payload.get("from"), run


# --- relay check ---------------------------------------------------------------------------------------


def run_check(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", str(path)],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_relay_check_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        SOURCES
        + "routes:\n"
        + "  - {name: a, source: forms, phlo_id: 'bad id'}\n"
        + "  - {name: b, source: forms, phlo_id: p1, when: 'x[='}\n"
        + "  - {name: c, source: forms, phlo_id: p2, payload: {to: {paht: phone}}}\n",
        encoding="utf-8",
    )
    result = run_check(path, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "config errors (3):" in result.stderr
    assert f"{path}: route 'a' (routes[0]): field phlo_id:" in result.stderr
    assert f"{path}: route 'b' (routes[1]): field when:" in result.stderr
    assert f"{path}: route 'c' (routes[2]): field payload" in result.stderr
    assert "Traceback" not in result.stderr
    assert "OK" not in result.stdout


def test_relay_check_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_check(path, tmp_path)
    assert result.returncode == 2
    assert f"{path}: file: cannot be read" in result.stderr


def test_relay_check_shipped_config(tmp_path: Path) -> None:
    result = run_check(SHIPPED_CONFIG, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert str(SHIPPED_CONFIG) in result.stdout


@pytest.mark.parametrize(
    ("text", "location", "fragment"),
    [
        ("sources: " + "[" * 5000 + "]" * 5000, "YAML", "not valid YAML: nested too deeply"),
        (
            with_routes(
                "  - {name: r, source: forms, phlo_id: p, when: '" + "(" * 3000 + "a" + ")" * 3000 + "'}"
            ),
            "route 'r' (routes[0]): field when",
            "is nested too deeply",
        ),
        ("sources: {s: {batch: '" + "!" * 3000 + "a'}}", "source 's': field batch", "is nested too deeply"),
        (
            "sources: {s: {event_id: {path: '`" + "[" * 3000 + "`'}}}",
            "source 's': field event_id",
            "is nested too deeply",
        ),
    ],
    ids=["yaml", "when", "batch", "literal"],
)
def test_a_config_nested_too_deeply_is_a_config_error(text: str, location: str, fragment: str) -> None:
    """Regression: PyYAML and JMESPath's parser raised RecursionError, so `relay check` died with a
    traceback instead of naming the field."""
    problem = only_problem(text)
    assert problem.location == location
    assert fragment in problem.message
