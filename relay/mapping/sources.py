"""A source in the mapping config: how its sender is verified, and how its requests read.

The verification schemes are plain data here; ``relay.ingress.verify`` checks a request against them, with
the check behind each scheme in ``relay.ingress.checks``. Secrets are never in the config: a scheme names
the environment variables that hold them, several at once so that a secret can be rotated without downtime
(every listed secret is accepted).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    IPvAnyNetwork,
    Tag,
    field_validator,
    model_validator,
)

from relay.mapping.expressions import Expression, Locator, check_expression

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Secrets = Annotated[list[EnvName], Field(min_length=1, description="environment variables holding secrets")]
DEFAULT_TOLERANCE_S = 300


class _Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VendorSignature(_Scheme):
    """A sender's own signature scheme: only its secrets (and the timestamp tolerance) to configure."""

    scheme: Literal[
        "standard-webhooks",
        "svix",
        "stripe",
        "github",
        "shopify",
        "typeform",
        "tally",
        "calendly",
        "hubspot-v1",
        "hubspot-v2",
        "hubspot-v3",
        "twilio",
    ]
    secrets: Secrets
    tolerance_s: int = Field(default=DEFAULT_TOLERANCE_S, ge=1, description="for schemes with a timestamp")


class HmacSignature(_Scheme):
    """Any other sender that signs with an HMAC: where the signature is, how it is encoded, what is signed.

    ``signed`` is a template of the signed text with ``{body}``, ``{timestamp}``, ``{method}`` and ``{url}``.
    """

    scheme: Literal["hmac"]
    secrets: Secrets
    header: str = Field(min_length=1)
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    signed: str = Field(default="{body}", pattern=r"\{body\}")
    timestamp_header: str | None = None
    timestamp_unit: Literal["s", "ms"] = "s"
    tolerance_s: int = Field(default=DEFAULT_TOLERANCE_S, ge=1)

    @model_validator(mode="after")
    def _timestamp_is_located(self) -> HmacSignature:
        if ("{timestamp}" in self.signed) != (self.timestamp_header is not None):
            raise ValueError("`signed` uses {timestamp} exactly when `timestamp_header` is given")
        return self


class BasicAuth(_Scheme):
    """HTTP Basic credentials (Pipedrive); each secret holds ``user:password``."""

    scheme: Literal["basic"]
    secrets: Secrets


class StaticToken(_Scheme):
    """A shared token in a header or a query parameter, for senders that cannot sign (Zoho, Jotform)."""

    scheme: Literal["token"]
    secrets: Secrets
    header: str | None = Field(default=None, min_length=1)
    query: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one_place(self) -> StaticToken:
        if (self.header is None) == (self.query is None):
            raise ValueError("give exactly one of `header` or `query`")
        return self


class IpAllowList(_Scheme):
    """Senders that do not sign (Salesforce): only requests from these networks pass."""

    scheme: Literal["ip-allow"]
    networks: list[IPvAnyNetwork] = Field(min_length=1)


_KINDS: dict[str, type[_Scheme]] = {
    **dict.fromkeys(get_args(VendorSignature.model_fields["scheme"].annotation), VendorSignature),
    "hmac": HmacSignature,
    "basic": BasicAuth,
    "token": StaticToken,
    "ip-allow": IpAllowList,
}

SCHEME_NAMES = tuple(_KINDS)


def _kind(raw: Any) -> str | None:
    # Tags are the class names, so that error locations read `verify[0].secrets`, not `verify[0].stripe...`
    scheme = raw.get("scheme") if isinstance(raw, dict) else getattr(raw, "scheme", None)
    kind = _KINDS.get(scheme) if isinstance(scheme, str) else None
    return kind.__name__ if kind else None


Verification = Annotated[
    Annotated[VendorSignature, Tag("VendorSignature")]
    | Annotated[HmacSignature, Tag("HmacSignature")]
    | Annotated[BasicAuth, Tag("BasicAuth")]
    | Annotated[StaticToken, Tag("StaticToken")]
    | Annotated[IpAllowList, Tag("IpAllowList")],
    Discriminator(
        _kind,
        custom_error_type="verify_scheme",
        custom_error_message=f"`scheme` must be one of: {', '.join(SCHEME_NAMES)}",
    ),
]


Reply = Literal["json", "salesforce-ack", "twiml"]


class Source(BaseModel):
    """A sender, reached at ``POST /hooks/{name}``: how it is verified, and how its requests read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verify: list[Verification] = Field(
        default_factory=list, description="schemes the request must pass, all of them (none: any sender)"
    )
    event_id: Locator | None = Field(
        default=None, description="the sender's event id, for duplicates; without it, a body digest"
    )
    event_type: Locator | None = None
    batch: Expression | None = Field(
        default=None, description="JMESPath to the list of events a request carries; each is one event"
    )
    json_fields: list[str] = Field(
        default_factory=list, description="form fields holding JSON text, decoded in place (Jotform)"
    )
    form_document_field: str | None = Field(
        default=None, description="in a form body, the field holding the whole JSON document (GitHub)"
    )
    ping_events: list[str] = Field(
        default_factory=list, description="event types answered 200 without routing (GitHub's ping)"
    )
    reply: Reply = Field(default="json", description="what a stored event is answered with")
    dedupe_window_s: int | None = Field(
        default=None, ge=0, description="how long a repeat is a duplicate (default: settings; 0: never)"
    )

    @field_validator("verify", mode="before")
    @classmethod
    def _one_or_many(cls, raw: Any) -> Any:
        return [raw] if isinstance(raw, dict) else raw

    @field_validator("batch")
    @classmethod
    def _batch_compiles(cls, batch: str | None) -> str | None:
        return None if batch is None else check_expression(batch)
