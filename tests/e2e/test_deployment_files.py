"""Dockerfile, docker-compose.yml, Procfile and deploy/ say only what the relay understands.

No Docker engine is needed: the compose file is checked against the Compose Specification's JSON schema
(tests/e2e/data/compose-spec.json), and with ``docker compose``/``docker-compose``, ``haproxy`` and
``promtool`` when they are installed. Every command must parse with the relay's own argument parser, every
variable must be a setting, and every metric a dashboard or alert reads must be one the relay exports.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from dotenv import dotenv_values
from pydantic import AliasChoices

from relay.cli import build_parser
from relay.infra.metrics import METRIC_NAMES
from relay.settings import ENV_PREFIX, Settings, env_name, load_settings
from tests.conftest import missing
from tests.e2e.deployment_files import (
    COMPOSE_FILE,
    ROOT,
    compose,
    dashboard_arguments,
    dockerfile_stages,
    interpolate,
)

DEPLOY = ROOT / "deploy"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "phlo-relay.json"
ALERTS_FILE = DEPLOY / "prometheus-alerts.yml"
SANDBOX_ENV = {"PHLO_RELAY_ENV_FILE": "deploy/sandbox.env"}


def relay_services(env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The services that run the relay's image."""
    services = compose(env)["services"].items()
    return {name: service for name, service in services if service.get("build", {}).get("target") == "relay"}


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """What a container's environment gets from the compose file: its env file, then `environment`."""
    env = {key: value or "" for key, value in dotenv_values(ROOT / service["env_file"]).items()}
    return {**env, **{key: str(value) for key, value in service.get("environment", {}).items()}}


def setting_names() -> set[str]:
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        names.add(env_name(field))
        if isinstance(info.validation_alias, AliasChoices):  # REDIS_URL beside RELAY_REDIS_URL, ...
            names.update(str(choice) for choice in info.validation_alias.choices)
    return names


def is_setting(name: str) -> bool:
    return name in setting_names() or name.startswith(f"{ENV_PREFIX}ACCOUNTS__")


def duration_s(text: str) -> float:
    """A Compose duration (``1m30s``, ``45s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(number + unit for number, unit in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


# --- docker-compose.yml -------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, SANDBOX_ENV], ids=["production", "sandbox"])
def test_compose_file_follows_the_compose_specification(env: dict[str, str]) -> None:
    schema = json.loads((ROOT / "tests" / "e2e" / "data" / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    assert [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(compose(env))] == []
    broken = compose(env)
    broken["services"]["redis"]["healthcheck"]["intervall"] = "5s"
    assert list(validator.iter_errors(broken)), "the schema must refuse an unknown key"


def compose_tools() -> list[list[str]]:
    tools = []
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            tools.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        tools.append(["docker-compose"])
    return tools


def test_installed_compose_accepts_the_file() -> None:
    tools = compose_tools()
    if not tools:
        missing("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    profiles = ["--profile", "sandbox", "--profile", "monitoring"]
    for tool in tools:
        for env, arguments in (({}, []), (SANDBOX_ENV, profiles)):
            result = subprocess.run(
                [
                    *tool,
                    "--project-directory",
                    str(ROOT),
                    "-f",
                    str(COMPOSE_FILE),
                    *arguments,
                    "config",
                    "-q",
                ],
                capture_output=True,
                text=True,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
                check=False,
            )
            assert result.returncode == 0, f"{' '.join(tool)} {' '.join(arguments)}: {result.stderr}"


def test_every_file_compose_refers_to_exists() -> None:
    stages = dockerfile_stages()
    for env in ({}, SANDBOX_ENV):
        for name, service in compose(env)["services"].items():
            if "build" in service:
                assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
                assert service["build"]["target"] in stages, name
            if "env_file" in service:
                assert (ROOT / service["env_file"]).is_file(), name
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("./"):
                    assert (ROOT / source).exists(), f"{name}: {source}"


def test_every_relay_command_in_compose_is_a_real_command() -> None:
    commands = {name: service["command"] for name, service in relay_services().items()}
    commands.update({name: service["command"] for name, service in relay_services(SANDBOX_ENV).items()})
    assert set(commands) >= {"ingress", "worker", "sandbox"}
    for name, command in commands.items():
        assert command[0] == "relay", name
        build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or option
    assert commands["ingress"][:2] == ["relay", "serve"]
    assert commands["worker"][:2] == ["relay", "worker"]
    assert build_parser().parse_args(commands["sandbox"][1:]).host == "0.0.0.0"


def test_rq_dashboard_gets_real_options_and_reads_json_jobs() -> None:
    from rq_dashboard.cli import run

    context = run.make_context("rq-dashboard", dashboard_arguments())  # raises on an unknown option
    assert context.params["json"] is True  # the relay's jobs use RQ's JSONSerializer
    dashboard_redis = compose()["services"]["rq-dashboard"]["environment"]["RQ_DASHBOARD_REDIS_URL"]
    assert dashboard_redis == relay_services()["worker"]["environment"]["RELAY_REDIS_URL"]


@pytest.mark.parametrize("env", [{}, SANDBOX_ENV], ids=["production", "sandbox"])
def test_compose_sets_only_real_settings_and_valid_values(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    network = ipaddress.ip_network(compose(env)["networks"]["relay"]["ipam"]["config"][0]["subnet"])
    for name, service in relay_services(env).items():
        environment = service_environment(service)
        relay_names = [key for key in environment if key.startswith((ENV_PREFIX, "PLIVO_"))]
        assert [key for key in relay_names if not is_setting(key)] == [], name
        for key in list(setting_names()):
            monkeypatch.delenv(key, raising=False)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(_env_file=None)  # raises SettingsError naming a bad value
        assert settings.trusted_proxies == [network], name  # the load balancer's network, nothing wider
        assert settings.redis_url == "redis://redis:6379/0"


def test_env_files_name_only_real_settings() -> None:
    for path in [DEPLOY / "relay.env", DEPLOY / "sandbox.env"]:
        names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(encoding="utf-8"), re.MULTILINE)
        relay_names = [name for name in names if name.startswith((ENV_PREFIX, "PLIVO_"))]
        assert relay_names, path
        assert [name for name in relay_names if not is_setting(name)] == [], path


def test_sandbox_env_file_points_the_relay_at_the_sandbox_service() -> None:
    sandbox = compose(SANDBOX_ENV)["services"]["sandbox"]
    runner_url = dotenv_values(DEPLOY / "sandbox.env")["RELAY_RUNNER_URL"]
    options = build_parser().parse_args(sandbox["command"][1:])
    assert runner_url == f"http://sandbox:{options.port}"
    assert sandbox["profiles"] == ["sandbox"]


def test_stop_grace_periods_outlast_the_relays_own_shutdown() -> None:
    services, defaults = compose()["services"], Settings.model_fields
    drain_s, grace_s = defaults["drain_delay_s"].default, defaults["shutdown_grace_s"].default
    assert services["ingress"]["stop_signal"] == services["worker"]["stop_signal"] == "SIGTERM"
    assert duration_s(services["ingress"]["stop_grace_period"]) > drain_s + grace_s
    # A worker's runs finish within the grace; its supervisor (relay.worker.loop) kills 5 s after that.
    assert duration_s(services["worker"]["stop_grace_period"]) > grace_s + 5


def test_health_checks_ask_the_endpoints_each_process_serves() -> None:
    services = compose()["services"]
    ingress_check = " ".join(services["ingress"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/readyz" in ingress_check
    port = services["worker"]["environment"]["RELAY_WORKER_METRICS_PORT"]
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/metrics" in worker_check
    # The worker's /metrics takes the admin token: the check sends the container's own.
    assert "'Authorization': 'Bearer ' + os.environ.get('RELAY_ADMIN_TOKEN', '')" in worker_check
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in services["ingress"], "a fixed host port would stop --scale ingress=N"


def test_redis_keeps_every_accepted_run() -> None:
    command = compose()["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction"}
    assert compose()["services"]["redis"]["volumes"] == ["redis-data:/data"]


def test_only_the_public_port_is_published_beyond_the_hosts_loopback() -> None:
    published = {
        name: service.get("ports", [])
        for name, service in compose(SANDBOX_ENV)["services"].items()
        if service.get("ports")
    }
    public = [port for ports in published.values() for port in ports if not port.startswith("127.0.0.1:")]
    assert public == ["8080:8080"]
    assert "8080:8080" in published["lb"]


# --- Dockerfile and Procfile ---------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_relay_image_by_default() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "relay"  # `docker build .` builds the last stage
    relay = " ".join(stages["relay"])
    assert 'CMD ["relay", "serve"]' in relay
    assert "/healthz" in relay and "HEALTHCHECK" in relay
    for name in ("relay", "dashboard"):
        users = [line for line in stages[name] if line.startswith("USER ")]
        assert users and users[-1] != "USER root", name
    env_names = re.findall(r"\b(RELAY_[A-Z_]+)=", relay)
    assert "RELAY_METRICS_DIR" in env_names
    assert [name for name in env_names if not is_setting(name)] == []
    assert "PYTHONUNBUFFERED=1" in " ".join(stages["runtime"])


def test_dashboard_image_pins_the_rq_dashboard_the_browser_test_drives() -> None:
    from importlib.metadata import version

    dashboard = " ".join(dockerfile_stages()["dashboard"])
    assert f"rq-dashboard=={version('rq-dashboard')}" in dashboard
    assert dockerfile_stages()["dashboard"][0] == "FROM runtime AS dashboard"  # the relay's own rq and redis


def procfile_argv(command: str, env: dict[str, str]) -> list[str]:
    """A Procfile command's words once the platform's shell expanded them (it runs commands with bash)."""
    result = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {command}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    )
    return result.stdout.splitlines()


@pytest.mark.parametrize(
    ("env", "web_processes", "worker_processes"),
    [
        ({"PORT": "5000"}, 1, 1),
        # The buildpack's WEB_CONCURRENCY sizes the web only: a worker process per core holds many runs.
        ({"PORT": "5000", "WEB_CONCURRENCY": "3"}, 3, 1),
        ({"PORT": "5000", "WEB_CONCURRENCY": "3", "RELAY_WORKER_PROCESSES": "2"}, 3, 2),
    ],
)
def test_procfile_honours_port_and_concurrency(
    env: dict[str, str], web_processes: int, worker_processes: int
) -> None:
    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines())
    assert set(lines) == {"web", "worker"}
    web = procfile_argv(lines["web"], env)
    worker = procfile_argv(lines["worker"], env)
    assert web[0] == worker[0] == "relay"
    web_args, worker_args = build_parser().parse_args(web[1:]), build_parser().parse_args(worker[1:])
    assert (web_args.command, web_args.host, web_args.port) == ("serve", "0.0.0.0", 5000)
    assert web_args.processes == web_processes
    assert (worker_args.command, worker_args.processes) == ("worker", worker_processes)
    assert worker_args.concurrency is None  # RELAY_WORKER_CONCURRENCY applies


# --- deploy/haproxy.cfg ---------------------------------------------------------------------------------


def haproxy_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(" ".join(line.split()))
    return sections


def test_load_balancer_passes_only_webhooks_on_the_public_port() -> None:
    public = haproxy_sections()["frontend public"]
    [acl] = [line for line in public if line.startswith("acl webhook path -m reg ")]
    allowed = re.compile(acl.removeprefix("acl webhook path -m reg "))
    assert "http-request deny deny_status 404 unless webhook" in public
    assert allowed.search("/hooks/website-form") and allowed.search("/hooks/hubspot_app-2")
    refused = [
        "/metrics",
        "/admin/dead-letters",
        "/events/evt_1",
        "/readyz",
        "/hooks/../metrics",
        "/hooks/%2e%2e/metrics",
        "/hooks/website-form/../../admin/dead-letters",
        "/hooks//metrics",
        "/hooks/..",
        "/hooks/%6detrics",
    ]
    assert [path for path in refused if allowed.search(path)] == []
    assert "option forwardfor" in public
    assert any(line.startswith("http-request set-header X-Forwarded-Proto") for line in public)


def test_load_balancer_finds_every_ingress_replica_and_checks_readiness() -> None:
    backend = haproxy_sections()["backend ingress"]
    [template] = [line for line in backend if line.startswith("server-template ")]
    host, port = template.split()[-1].split(":")
    assert host in compose()["services"] and port == "8080"
    assert "http-check send meth GET uri /readyz" in backend
    [defaults] = [line for line in backend if line.startswith("default-server ")]
    inter_s = duration_s(re.search(r"\binter (\S+)", defaults)[1])  # type: ignore[index]
    fall = int(re.search(r"\bfall (\d+)", defaults)[1])  # type: ignore[index]
    # A draining replica (503 from /readyz) must be out before it stops accepting.
    assert inter_s * fall < Settings.model_fields["drain_delay_s"].default
    assert "resolvers docker" in defaults and "resolvers docker" in haproxy_sections()


def test_haproxy_accepts_its_config() -> None:
    if shutil.which("haproxy") is None:
        missing("haproxy is not installed (apt-get install haproxy)")
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Prometheus and Grafana ----------------------------------------------------------------------------

_GROUPING = "by|without|on|ignoring|group_left|group_right"
_PROMQL_WORDS = {*_GROUPING.split("|"), "bool", "and", "or", "unless", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(rf"\b(?:{_GROUPING})\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return set(names) - _PROMQL_WORDS


def relay_metric(name: str) -> str:
    """The name METRIC_NAMES lists for a series name (histograms' _bucket, _sum and _count stripped)."""
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base if base in METRIC_NAMES and base != name else name


def test_promql_metric_names_finds_the_series_an_expression_reads() -> None:
    expr = 'sum by (le, route) (rate(relay_x_bucket{route=~"$r"}[$__rate_interval])) / up offset 5m > 0.5'
    assert promql_metric_names(expr) == {"relay_x_bucket", "up"}
    assert promql_metric_names("max(relay_redis_up) < 1") == {"relay_redis_up"}


def grafana_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return dashboard


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in grafana_dashboard()["panels"] for target in panel.get("targets", [])]


def test_grafana_dashboard_reads_only_and_every_relay_metric() -> None:
    used = {relay_metric(name) for expr in dashboard_exprs() for name in promql_metric_names(expr)}
    assert sorted(used - METRIC_NAMES) == []
    assert sorted(METRIC_NAMES - used) == []


def test_grafana_dashboard_is_a_provisionable_dashboard() -> None:
    dashboard = grafana_dashboard()
    assert dashboard["uid"] == "phlo-relay" and dashboard["schemaVersion"] >= 39
    [source] = [var for var in dashboard["templating"]["list"] if var["type"] == "datasource"]
    assert source["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        assert columns.start >= 0 and columns.stop <= 24, panel["title"]
        area = {(x, y) for x in columns for y in rows}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
    titles = " ".join(panel["title"].lower() for panel in panels)
    wanted = ["events", "refusals", "ingress latency", "outcome", "runner latency", "retries", "dead letters"]
    wanted += ["runs in flight", "saturation", "start delay", "abandoned", "config version"]
    assert [title for title in wanted if title not in titles] == []


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    services = compose()["services"]
    volumes = services["grafana"]["volumes"]
    mounts = dict(volume.split(":")[:2] for volume in volumes if volume.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards/phlo-relay.yml").read_text())["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert set(services["grafana"]["profiles"]) == set(services["prometheus"]["profiles"]) == {"monitoring"}


def test_prometheus_scrapes_every_ingress_and_worker_replica() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    services = compose()["services"]
    targets = {
        (sd["names"][0], sd["port"]): job["metrics_path"]
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    worker_port = int(services["worker"]["environment"]["RELAY_WORKER_METRICS_PORT"])
    assert targets == {("ingress", 8080): "/metrics", ("worker", worker_port): "/metrics"}
    # /metrics takes the admin token: every job sends it from the file compose mounts beside the config.
    for job in config["scrape_configs"]:
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "relay-admin-token"}, job
    mounts = prometheus_mounts()
    assert mounts["relay-admin-token"].startswith("${RELAY_ADMIN_TOKEN_FILE:-./deploy/")
    for rule_file in config["rule_files"]:
        assert (DEPLOY / rule_file).is_file()
        mounted = f"./deploy/{rule_file}:/etc/prometheus/{rule_file}:ro"
        assert mounted in services["prometheus"]["volumes"]


def prometheus_mounts() -> dict[str, str]:
    """What compose mounts into /etc/prometheus: file name there -> the source as written (uninterpolated)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]["prometheus"]["volumes"]
    mounts = {}
    for volume in raw:
        source, _, target = volume.removesuffix(":ro").rpartition(":")
        if target.startswith("/etc/prometheus/"):
            mounts[target.removeprefix("/etc/prometheus/")] = source
    return mounts


def test_prometheus_token_file_by_default_holds_the_sandbox_env_files_admin_token() -> None:
    """Trying it out (deploy/sandbox.env and the monitoring profile), Prometheus's token is the relay's."""
    default = interpolate(prometheus_mounts()["relay-admin-token"], {})
    token = (ROOT / default).read_text(encoding="utf-8").strip()
    assert token == dotenv_values(DEPLOY / "sandbox.env")["RELAY_ADMIN_TOKEN"]
    elsewhere = compose({"RELAY_ADMIN_TOKEN_FILE": "/etc/phlo-relay/admin-token"})["services"]["prometheus"]
    assert "/etc/phlo-relay/admin-token:/etc/prometheus/relay-admin-token:ro" in elsewhere["volumes"]


def test_alert_rules_read_only_relay_metrics() -> None:
    rules = [rule for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        names = {relay_metric(name) for name in promql_metric_names(rule["expr"])}
        assert names and names <= METRIC_NAMES, rule["alert"]


def test_promtool_accepts_the_config_and_the_alerts_fire_as_documented(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        missing("promtool is not installed (apt-get install prometheus)")
    # /etc/prometheus as compose lays it out (the token file by default), since promtool opens the files
    # the config names.
    for name, source in prometheus_mounts().items():
        shutil.copy(ROOT / interpolate(source, {}), tmp_path / name)
    for command in (
        ["check", "config", str(tmp_path / "prometheus.yml")],
        ["test", "rules", str(ROOT / "tests" / "e2e" / "data" / "prometheus-alerts-test.yml")],
    ):
        result = subprocess.run(["promtool", *command], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
