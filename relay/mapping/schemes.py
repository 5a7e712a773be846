"""How a source proves who sent a request: the verification schemes a source can name in the config.

These are plain data; ``relay.ingress.verify`` checks a request against them. Secrets are never in the
config: a scheme names the environment variables that hold them, several at once so that a secret can be
rotated without downtime (every listed secret is accepted).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, IPvAnyNetwork, Tag, model_validator

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
