"""relay.settings: environment and .env in, one Settings object out; errors name variables, never values."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from relay.errors import SettingsError
from relay.settings import PlivoAccount, load_settings

DEFAULT_TOKEN = "tok-default-8c1f3e2a"
EU_TOKEN = "tok-eu-5b9d7a60"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No PLIVO_* / RELAY_* variable of this machine, and a cwd without .env, in any test."""
    for key in list(os.environ):
        if key.upper().startswith(("PLIVO_", "RELAY_")) or key.upper() == "REDIS_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield


def child_env(**extra: str) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.upper().startswith(("PLIVO_", "RELAY_"))
    }
    env.update(extra)
    return env


def test_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.port == 8080
    assert settings.runner_url == "https://phlorunner.plivo.com"
    assert settings.plivo_auth_id is None
    assert settings.plivo_auth_token is None
    assert settings.account("default") is None
    assert settings.account_names() == {"default"}


def test_reads_plivo_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLIVO_AUTH_ID", "MAXXXXXXXXXXXXXXXXXX")
    monkeypatch.setenv("PLIVO_AUTH_TOKEN", DEFAULT_TOKEN)
    settings = load_settings(_env_file=None)
    assert settings.plivo_auth_id == "MAXXXXXXXXXXXXXXXXXX"
    assert settings.plivo_auth_token is not None
    assert settings.plivo_auth_token.get_secret_value() == DEFAULT_TOKEN
    account = settings.account("default")
    assert account is not None
    assert account.auth_id == "MAXXXXXXXXXXXXXXXXXX"
    assert account.auth_token.get_secret_value() == DEFAULT_TOKEN


def test_default_account_needs_both_id_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLIVO_AUTH_ID", "MAXXXXXXXXXXXXXXXXXX")
    assert load_settings(_env_file=None).account("default") is None


def test_reads_relay_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "9123")
    monkeypatch.setenv("RELAY_REDIS_URL", "redis://redis.internal:6380/2")
    monkeypatch.setenv("RELAY_RUNNER_URL", "http://127.0.0.1:8099")
    monkeypatch.setenv("RELAY_CONFIG_PATH", "/etc/relay/routes.yaml")
    monkeypatch.setenv("RELAY_RUN_ATTEMPTS", "5")
    monkeypatch.setenv("RELAY_RUNNER_READ_TIMEOUT_S", "2.5")
    monkeypatch.setenv("RELAY_LOG_LEVEL", "DEBUG")
    settings = load_settings(_env_file=None)
    assert settings.port == 9123
    assert settings.redis_url == "redis://redis.internal:6380/2"
    assert settings.runner_url == "http://127.0.0.1:8099"
    assert settings.config_path == Path("/etc/relay/routes.yaml")
    assert settings.run_attempts == 5
    assert settings.runner_read_timeout_s == 2.5
    assert settings.log_level == "DEBUG"


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "9123")
    assert load_settings(_env_file=None, port=9999).port == 9999


def test_dotenv_in_cwd_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "PLIVO_AUTH_ID=MAFROMDOTENV\n"
        f"PLIVO_AUTH_TOKEN={DEFAULT_TOKEN}\n"
        "RELAY_PORT=9100\n"
        "RELAY_ACCOUNTS__EU__AUTH_ID=MAEU\n"
        f"RELAY_ACCOUNTS__EU__AUTH_TOKEN={EU_TOKEN}\n"
        "UNRELATED=1\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.port == 9100
    assert settings.plivo_auth_id == "MAFROMDOTENV"
    eu = settings.account("eu")
    assert eu is not None
    assert eu.auth_token.get_secret_value() == EU_TOKEN


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("RELAY_PORT=9100\n", encoding="utf-8")
    monkeypatch.setenv("RELAY_PORT", "9200")
    assert load_settings().port == 9200


def test_dotenv_ignored_with_env_file_none(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAY_PORT=9100\n", encoding="utf-8")
    assert load_settings(_env_file=None).port == 8080


def test_invalid_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAY_PORT=port-in-dotenv-x\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "RELAY_PORT" in str(info.value)
    assert "port-in-dotenv-x" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "bad_value"),
    [
        ("RELAY_PORT", "abc-not-a-port"),
        ("RELAY_PORT", "70000"),
        ("RELAY_RUNNER_URL", "ftp://secret-host.example/x"),
        ("RELAY_MAX_BODY_BYTES", "12"),
        ("RELAY_RUN_ATTEMPTS", "0"),
        ("RELAY_QUEUE_NAME", "bad queue name!"),
        ("RELAY_LOG_LEVEL", "CHATTY-LEVEL"),
        ("RELAY_RUNNER_CONNECT_TIMEOUT_S", "-1.5"),
    ],
)
def test_invalid_value_names_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, bad_value: str
) -> None:
    monkeypatch.setenv(variable, bad_value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert variable in message
    assert bad_value not in message
    assert bad_value not in repr(info.value)


def test_every_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "abc")
    monkeypatch.setenv("RELAY_RUNNER_URL", "ftp://x")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert "RELAY_PORT" in str(info.value)
    assert "RELAY_RUNNER_URL" in str(info.value)


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLIVO_AUTH_ID", "MAXXXXXXXXXXXXXXXXXX")
    monkeypatch.setenv("PLIVO_AUTH_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_ID", "MAEU")
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_TOKEN", EU_TOKEN)
    settings = load_settings(_env_file=None)
    eu = settings.account("eu")
    default = settings.account("default")
    assert eu is not None
    assert default is not None
    for shown in (
        repr(settings),
        str(settings),
        repr(eu),
        str(eu),
        repr(default),
        str(settings.model_dump()),
    ):
        assert DEFAULT_TOKEN not in shown
        assert EU_TOKEN not in shown
    assert "MAXXXXXXXXXXXXXXXXXX" in repr(settings)  # the ids are not secret; the test would see them


def test_named_account_from_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_ID", "MAEU")
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_TOKEN", EU_TOKEN)
    settings = load_settings(_env_file=None)
    eu = settings.account("eu")
    assert eu == PlivoAccount(auth_id="MAEU", auth_token=SecretStr(EU_TOKEN))
    assert eu is not None
    assert eu.auth_token.get_secret_value() == EU_TOKEN
    assert settings.account("us") is None
    assert settings.account_names() == {"default", "eu"}


def test_nested_account_without_token_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_ID", "MAEU")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert "RELAY_ACCOUNTS__EU__AUTH_TOKEN" in str(info.value)


def test_nested_account_with_empty_id_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_ID", "")
    monkeypatch.setenv("RELAY_ACCOUNTS__EU__AUTH_TOKEN", EU_TOKEN)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert "RELAY_ACCOUNTS__EU__AUTH_ID" in str(info.value)
    assert EU_TOKEN not in str(info.value)


def test_accounts_json_that_does_not_parse_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # RELAY_ACCOUNTS is what as_environment() writes; a broken value must be a SettingsError naming it
    # (so `relay` exits 2 with a message), not pydantic-settings' own exception and a traceback.
    monkeypatch.setenv("RELAY_ACCOUNTS", f'{{"eu": {{"auth_id": "MAEU", "auth_token": "{EU_TOKEN}"')
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    assert "RELAY_ACCOUNTS" in str(info.value)
    assert EU_TOKEN not in str(info.value)


def test_as_environment_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    original = load_settings(
        _env_file=None,
        plivo_auth_id="MAXXXXXXXXXXXXXXXXXX",
        plivo_auth_token=DEFAULT_TOKEN,
        accounts={"eu": {"auth_id": "MAEU", "auth_token": EU_TOKEN}},
        redis_url="redis://127.0.0.1:6390/3",
        runner_url="http://127.0.0.1:8099",
        config_path=tmp_path / "routes.yaml",
        port=9001,
        runner_read_timeout_s=2.5,
        retry_base_delay_s=0,
        log_level="WARNING",
    )
    env = original.as_environment()
    assert env["PLIVO_AUTH_TOKEN"] == DEFAULT_TOKEN  # secrets are included for the child process
    assert EU_TOKEN in env["RELAY_ACCOUNTS"]
    assert all(isinstance(value, str) for value in env.values())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rebuilt = load_settings(_env_file=None)
    assert rebuilt == original
    eu = rebuilt.account("eu")
    assert eu is not None
    assert eu.auth_token.get_secret_value() == EU_TOKEN


def test_as_environment_round_trips_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings(_env_file=None)
    env = original.as_environment()
    assert "PLIVO_AUTH_ID" not in env
    assert "PLIVO_AUTH_TOKEN" not in env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings(_env_file=None) == original


def run_relay(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", [["worker"], ["check"], ["serve"]])
def test_cli_exits_2_naming_the_invalid_variable(tmp_path: Path, command: list[str]) -> None:
    result = run_relay(*command, cwd=tmp_path, RELAY_PORT="abc-not-a-port")
    assert result.returncode == 2, result.stderr
    assert "RELAY_PORT" in result.stderr
    assert "abc-not-a-port" not in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reads_dotenv_in_cwd(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAY_LOG_LEVEL=LOUD\n", encoding="utf-8")
    result = run_relay("check", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "RELAY_LOG_LEVEL" in result.stderr
