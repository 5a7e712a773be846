"""``relay check --runner`` as an operator runs it: a child process, its settings from the environment,
each route's PHLO fetched from the sandbox over HTTP."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from relay.dev.redis_server import free_port
from relay.runner.sandbox import SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN, SandboxConfig, SandboxThread
from relay.settings import PlivoAccount, Settings
from tests.conftest import ALERT_PHLO, KNOWN_PHLO, UNKNOWN_PHLO, Sandbox, clean_environment

WRONG_TOKEN = "wrong-token-61f0a9d3b7"
OTHER_ID, OTHER_TOKEN = "MAOTHER000000000000", "other-token-0c4e2b8a19"


def routes_config(tmp_path: Path, *routes: tuple[str, str, str]) -> Path:
    """A config of one unsigned source and a route per (name, PHLO id, account)."""
    lines = ["sources:", "  form:", "    event_id: {path: id}", "routes:"]
    for name, phlo_id, account in routes:
        lines += [
            f"  - name: {name}",
            "    source: form",
            f"    phlo_id: {phlo_id}",
            f"    account: {account}",
        ]
    path = tmp_path / "check.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def relay_check(settings: Settings, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", str(path), "--runner", *options],
        env=clean_environment(**settings.as_environment()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_token(result: subprocess.CompletedProcess[str], *tokens: str) -> None:
    """No token, nor the Basic credentials carrying it, in stdout or stderr (only labels are shown)."""
    shown = result.stdout + result.stderr
    for auth_id, token in ((SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN), *((SANDBOX_AUTH_ID, t) for t in tokens)):
        basic = base64.b64encode(f"{auth_id}:{token}".encode()).decode()
        assert token not in shown, "a token is shown"
        assert basic not in shown, "Basic credentials are shown"


def test_known_phlos_pass(settings: Settings, sandbox: Sandbox, tmp_path: Path) -> None:
    path = routes_config(tmp_path, ("callback", KNOWN_PHLO, "default"), ("alert", ALERT_PHLO, "default"))

    result = relay_check(settings, path)

    assert result.returncode == 0, result.stderr
    assert f"{settings.runner_url}: OK" in result.stdout
    assert sandbox.runs() == []  # fetching a PHLO runs nothing
    assert_no_token(result)


def test_unknown_phlo_exits_1_naming_the_route(settings: Settings, sandbox: Sandbox, tmp_path: Path) -> None:
    path = routes_config(tmp_path, ("callback", KNOWN_PHLO, "default"), ("typo", UNKNOWN_PHLO, "default"))

    result = relay_check(settings, path)

    assert result.returncode == 1
    [problem] = [line for line in result.stderr.splitlines() if line.startswith("  route ")]
    assert problem.startswith("  route 'typo': unknown PHLO")
    assert UNKNOWN_PHLO in problem
    assert_no_token(result)


def test_wrong_token_exits_1_naming_each_route_and_the_account(
    settings: Settings, sandbox: Sandbox, tmp_path: Path
) -> None:
    path = routes_config(tmp_path, ("callback", KNOWN_PHLO, "default"), ("alert", ALERT_PHLO, "default"))
    wrong = settings.model_copy(update={"plivo_auth_token": SecretStr(WRONG_TOKEN)})

    result = relay_check(wrong, path)

    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("  route ")]
    assert [line.split(":")[0] for line in problems] == ["  route 'callback'", "  route 'alert'"]
    for line in problems:
        assert "wrong credentials" in line
        assert f"account 'default' (auth id {SANDBOX_AUTH_ID})" in line
    assert_no_token(result, WRONG_TOKEN)


def test_a_phlo_of_another_configured_account_is_named_as_such(settings: Settings, tmp_path: Path) -> None:
    credentials = {SANDBOX_AUTH_ID: SANDBOX_AUTH_TOKEN, OTHER_ID: OTHER_TOKEN}
    config = SandboxConfig(credentials=credentials, owners={ALERT_PHLO: OTHER_ID})
    path = routes_config(tmp_path, ("callback", KNOWN_PHLO, "default"), ("alert", ALERT_PHLO, "default"))
    with SandboxThread(config) as sandbox:
        other = PlivoAccount(auth_id=OTHER_ID, auth_token=SecretStr(OTHER_TOKEN))
        two = settings.model_copy(update={"runner_url": sandbox.url, "accounts": {"other": other}})
        result = relay_check(two, path)

    assert result.returncode == 1
    [problem] = [line for line in result.stderr.splitlines() if line.startswith("  route ")]
    assert problem.startswith(f"  route 'alert': PHLO {ALERT_PHLO} is of another account, 'other'")
    assert_no_token(result, OTHER_TOKEN)


def test_closed_port_is_reported_unreachable_for_each_route(settings: Settings, tmp_path: Path) -> None:
    path = routes_config(tmp_path, ("callback", KNOWN_PHLO, "default"), ("alert", ALERT_PHLO, "default"))
    closed = settings.model_copy(update={"runner_url": f"http://127.0.0.1:{free_port()}"})

    result = relay_check(closed, path)

    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("  route ")]
    assert [line.split(":")[0] for line in problems] == ["  route 'callback'", "  route 'alert'"]
    assert all("runner unreachable: ConnectError" in line for line in problems)


def test_a_silent_runner_is_reported_within_the_overall_bound(settings: Settings, tmp_path: Path) -> None:
    path = routes_config(tmp_path, ("callback", KNOWN_PHLO, "default"))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        slow = settings.model_copy(update={"runner_url": url, "runner_read_timeout_s": 120.0})
        started = time.monotonic()
        result = relay_check(slow, path, "--timeout-s", "2")
        elapsed_s = time.monotonic() - started

    assert result.returncode == 1
    assert "route 'callback': no answer from the runner within the 2 s bound" in result.stderr
    assert elapsed_s < 30, elapsed_s  # the read timeout alone would hold it for 120 s
