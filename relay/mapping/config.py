"""The mapping config: which sources the relay accepts and which PHLO runs their events become.

Here the routes' schema, the whole config's and its loading; a source's schema is in ``sources``. Loaded
from YAML and validated with pydantic; every problem is reported with the file, the route (or source) and
the field, so ``relay check`` can list them all at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.errors import ConfigError, ConfigProblem
from relay.mapping.caps import AccountOptions, RecipientLimit
from relay.mapping.expressions import Expression, check_expression
from relay.mapping.phones import check_region
from relay.mapping.quiet_hours import DeliverBetween
from relay.mapping.sources import Source
from relay.settings import DEFAULT_ACCOUNT

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class RetryOverride(BaseModel):
    """A route's own limits (``retry:`` in the config); what it leaves out comes from the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int | None = Field(default=None, ge=1, le=50)
    max_age_s: int | None = Field(default=None, ge=1)
    base_delay_s: float | None = Field(default=None, ge=0)
    max_delay_s: float | None = Field(default=None, ge=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegionPath(_Strict):
    """A phone number's default region read from the event (a country field), with a fallback code."""

    path: Expression
    default: str | None = None

    @field_validator("path")
    @classmethod
    def _compiles(cls, path: str) -> str:
        return check_expression(path)

    @field_validator("default")
    @classmethod
    def _known_default(cls, default: str | None) -> str | None:
        return None if default is None else check_region(default)


class PathValue(_Strict):
    """A payload value taken from the event with a JMESPath expression."""

    path: Expression
    default: Any = None
    required: bool = False
    format: Literal["e164"] | None = Field(
        default=None, description="e164: normalise a phone number; one that is not valid dead-letters the run"
    )
    default_region: str | RegionPath | None = Field(
        default=None, description="region code (US) or {path, default} for numbers without a country code"
    )

    @field_validator("path")
    @classmethod
    def _compiles(cls, path: str) -> str:
        return check_expression(path)

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, region: str | RegionPath | None) -> str | RegionPath | None:
        return check_region(region) if isinstance(region, str) else region

    @model_validator(mode="after")
    def _region_needs_format(self) -> PathValue:
        if self.default_region is not None and self.format is None:
            raise ValueError("`default_region` applies to phone numbers: add `format: e164`")
        return self


class LiteralValue(_Strict):
    """A payload value given as is (any JSON value, objects included)."""

    value: Any


def _as_literal(raw: Any) -> Any:
    """A bare scalar or list is a literal value."""
    return raw if isinstance(raw, dict) else {"value": raw}


def _payload_kind(raw: Any) -> str | None:
    # A mapping must say what it is, so that a typo such as `{paht: ...}` is an error instead of a
    # literal object silently sent to the PHLO.
    if isinstance(raw, dict):
        if "path" in raw:
            return "PathValue"
        if set(raw) == {"value"}:
            return "LiteralValue"
    return None


PayloadValue = Annotated[
    Annotated[
        Annotated[PathValue, Tag("PathValue")] | Annotated[LiteralValue, Tag("LiteralValue")],
        Discriminator(
            _payload_kind,
            custom_error_type="payload_value",
            custom_error_message="a mapping must be {path: ..., default: ..., required: ...} or {value: ...}",
        ),
    ],
    BeforeValidator(_as_literal),
]


class Route(_Strict):
    """Which events of a source become a run of which PHLO, with which payload."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str
    events: list[str] | None = Field(
        default=None, min_length=1, description="event types (shell-style patterns) this route applies to"
    )
    when: Expression | None = Field(
        default=None, description="JMESPath condition on the event; truthy matches"
    )
    phlo_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    account: str = DEFAULT_ACCOUNT
    payload: dict[str, PayloadValue] = Field(default_factory=dict)
    retry: RetryOverride | None = Field(
        default=None, description="attempts, max_age_s, base_delay_s, max_delay_s of this route's runs"
    )
    deliver_between: DeliverBetween | None = Field(
        default=None, description="quiet hours: the local hours (in the contact's time zone) runs may start"
    )
    limit_per_recipient: RecipientLimit | None = Field(
        default=None, description="frequency cap: {key: {path: ...}, max: 1, per: 24h} (relay.mapping.caps)"
    )

    @field_validator("when")
    @classmethod
    def _when_compiles(cls, when: str | None) -> str | None:
        return None if when is None else check_expression(when)

    @field_validator("payload", mode="before")
    @classmethod
    def _empty_payload(cls, raw: Any) -> Any:
        return {} if raw is None else raw

    @model_validator(mode="after")
    def _number_is_a_payload_key(self) -> Route:
        window = self.deliver_between
        if window is not None and window.infer_from_number not in (None, *self.payload):
            raise ValueError(
                f"deliver_between.infer_from_number: {window.infer_from_number!r} is not a payload key"
            )
        return self


class RelayConfig(_Strict):
    """The whole mapping config."""

    sources: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Source]
    routes: list[Route] = Field(default_factory=list)
    accounts: dict[str, AccountOptions] = Field(
        default_factory=dict, description="per Plivo account: limit_per_recipient (credentials: settings)"
    )

    def routes_for(self, source: str) -> list[Route]:
        """The routes of one source, in config order."""
        return [route for route in self.routes if route.source == source]

    def phlo_ids(self) -> set[str]:
        """Every PHLO id any route runs."""
        return {route.phlo_id for route in self.routes}


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    """Name a pydantic error location the way a user reads the YAML: ``route 'x' (routes[0]) payload.to``."""
    if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
        routes = data.get("routes") if isinstance(data, dict) else None
        name = None
        if isinstance(routes, list) and loc[1] < len(routes) and isinstance(routes[loc[1]], dict):
            name = routes[loc[1]].get("name")
        where = f"route {name!r} (routes[{loc[1]}])" if name else f"routes[{loc[1]}]"
        rest = loc[2:]
    elif len(loc) >= 2 and loc[0] == "sources":
        where, rest = f"source {loc[1]!r}", loc[2:]
    elif len(loc) >= 2 and loc[0] == "accounts":
        where, rest = f"account {loc[1]!r}", loc[2:]
    else:
        where, rest = "top level", loc
    # pydantic names the union member it tried (`PathValue`, `function-after[...]`); users never wrote those.
    path = ""
    for part in rest:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part[:1].isupper() and "[" not in part:
            path += f".{part}" if path else part
    return f"{where}: field {path}" if path else where


def _cross_check(data: dict[str, Any], file: str, accounts: set[str] | None) -> list[ConfigProblem]:
    """Problems between routes and sources, read from the raw data so they show beside schema errors."""
    raw_sources, raw_routes = data.get("sources"), data.get("routes")
    sources: dict[Any, Any] = raw_sources if isinstance(raw_sources, dict) else {}
    routes: list[Any] = raw_routes if isinstance(raw_routes, list) else []
    problems = []
    seen: set[str] = set()
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue  # the schema check reports it
        name = route.get("name")
        where = f"route {name!r} (routes[{index}])" if name else f"routes[{index}]"
        if isinstance(name, str):
            if name in seen:
                problems.append(ConfigProblem(file, f"{where}: field name", "another route has this name"))
            seen.add(name)
        source_name = route.get("source")
        if not isinstance(source_name, str):
            pass  # the schema check reports it
        elif source_name not in sources:
            known = ", ".join(sorted(map(str, sources))) or "none"
            problems.append(
                ConfigProblem(file, f"{where}: field source", f"no source {source_name!r} (sources: {known})")
            )
        elif route.get("events") is not None:
            source = sources[source_name]
            if not (isinstance(source, dict) and source.get("event_type")):
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}: field events",
                        f"source {source_name!r} declares no event_type to match events against",
                    )
                )
        account = route.get("account", DEFAULT_ACCOUNT)
        if accounts is not None and isinstance(account, str) and account not in accounts:
            problems.append(
                ConfigProblem(
                    file,
                    f"{where}: field account",
                    f"no Plivo account {account!r} in settings (set RELAY_ACCOUNTS__"
                    f"{account.upper()}__AUTH_ID and __AUTH_TOKEN)",
                )
            )
    raw_accounts = data.get("accounts")
    if accounts is not None and isinstance(raw_accounts, dict):
        problems += [
            ConfigProblem(file, f"account {name!r}", f"no Plivo account {name!r} in settings")
            for name in raw_accounts
            if name not in accounts
        ]
    return problems


def parse_config(text: str, file: str, accounts: set[str] | None = None) -> RelayConfig:
    """Validate config text; raise ConfigError listing every problem. ``accounts``: names settings know."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError([ConfigProblem(file, "YAML", "not valid YAML: nested too deeply")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError(
            [ConfigProblem(file, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, "top level", "must be a mapping with `sources` and `routes`")])
    problems = []
    try:
        config = RelayConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            ConfigProblem(
                file, _location(tuple(error["loc"]), data), error["msg"].removeprefix("Value error, ")
            )
            for error in exc.errors(include_input=False, include_url=False)
        ]
    problems += _cross_check(data, file, accounts)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: Path, accounts: set[str] | None = None) -> RelayConfig:
    """Read and validate the mapping config at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "file", f"cannot be read: {exc.strerror}")]) from None
    return parse_config(text, str(path), accounts)
