"""Check that a request comes from its source's sender, with the schemes the config names.

``build_verifiers`` resolves every source's secrets from the environment once, at start-up; a
SourceVerifier then checks each request against all of its source's schemes. The check behind each scheme
is in ``relay.ingress.checks``; the schemes a source can name, as config data, in ``relay.mapping.sources``.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from relay.errors import ConfigError, ConfigProblem
from relay.ingress.checks.hmac_header import HMAC_VENDORS, Hmac, check_hmac
from relay.ingress.checks.request import HookRequest
from relay.ingress.checks.unsigned import check_basic, check_ip, check_token
from relay.ingress.checks.vendors import check_hubspot, check_stamped, check_standard_webhooks, check_twilio
from relay.mapping.sources import (
    BasicAuth,
    HmacSignature,
    IpAllowList,
    Source,
    StaticToken,
    VendorSignature,
    Verification,
)

Keys = tuple[bytes, ...]
_STANDARD_WEBHOOKS = ("standard-webhooks", "svix")


@dataclass(frozen=True)
class SourceVerifier:
    """The schemes of one source with their secrets resolved; ``keys[i]`` belongs to ``schemes[i]``."""

    source: str
    schemes: tuple[Verification, ...] = ()
    keys: tuple[Keys, ...] = field(default=(), repr=False)

    def verify(self, request: HookRequest, now_s: float | None = None) -> None:
        """Pass when every scheme passes; raise VerificationFailed with the first failure's reason."""
        now = time.time() if now_s is None else now_s
        for scheme, keys in zip(self.schemes, self.keys, strict=True):
            _check(scheme, keys, request, now)


def hmac_spec(scheme: VendorSignature | HmacSignature) -> Hmac:
    """What an ``hmac`` scheme, or a vendor whose signature is an HMAC in one header, signs and where."""
    if isinstance(scheme, HmacSignature):
        return Hmac(**scheme.model_dump(exclude={"scheme", "secrets"}))
    return replace(HMAC_VENDORS[scheme.scheme], tolerance_s=scheme.tolerance_s)


def _check(scheme: Verification, keys: Keys, request: HookRequest, now_s: float) -> None:
    if isinstance(scheme, VendorSignature):
        _check_vendor(scheme, keys, request, now_s)
    elif isinstance(scheme, HmacSignature):
        check_hmac(hmac_spec(scheme), keys, request, now_s)
    elif isinstance(scheme, BasicAuth):
        check_basic(keys, request)
    elif isinstance(scheme, StaticToken):
        check_token(scheme, keys, request)
    else:
        check_ip(scheme.networks, request.client_ip)


def _check_vendor(scheme: VendorSignature, keys: Keys, request: HookRequest, now_s: float) -> None:
    name, tolerance_s = scheme.scheme, scheme.tolerance_s
    if name in HMAC_VENDORS:
        check_hmac(hmac_spec(scheme), keys, request, now_s)
    elif name in _STANDARD_WEBHOOKS:
        check_standard_webhooks(name == "svix", tolerance_s, keys, request, now_s)
    elif name == "stripe":
        check_stamped("Stripe-Signature", tolerance_s, keys, request, now_s)
    elif name == "calendly":
        check_stamped("Calendly-Webhook-Signature", tolerance_s, keys, request, now_s)
    elif name == "hubspot-v1" or name == "hubspot-v2":
        check_hubspot("v1" if name == "hubspot-v1" else "v2", keys, request)
    else:
        check_twilio(keys, request)


def _key(scheme: Verification, secret: str) -> bytes | None:
    """The key a secret stands for; None when it cannot be one (the caller names the variable)."""
    if isinstance(scheme, VendorSignature) and scheme.scheme in _STANDARD_WEBHOOKS:
        encoded = secret.removeprefix("whsec_")
        try:  # the libraries accept the base64 without its padding
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True) or None
        except binascii.Error:
            return None
    if isinstance(scheme, BasicAuth) and ":" not in secret:
        return None
    return secret.encode()


_NOT_A_KEY = {
    "standard-webhooks": "does not hold a base64 secret (whsec_...)",
    "svix": "does not hold a base64 secret (whsec_...)",
    "basic": "does not hold user:password",
}


def _resolve(scheme: Verification, environ: Mapping[str, str]) -> tuple[Keys, list[str]]:
    """A scheme's keys, and what is wrong with its environment variables (never their values)."""
    keys: list[bytes] = []
    problems: list[str] = []
    for variable in [] if isinstance(scheme, IpAllowList) else scheme.secrets:
        secret = environ.get(variable, "")
        if not secret.strip():
            problems.append(f"environment variable {variable} is not set")
            continue
        key = _key(scheme, secret)
        if key is None:
            problems.append(f"environment variable {variable} {_NOT_A_KEY[scheme.scheme]}")
        else:
            keys.append(key)
    return tuple(keys), problems


def build_verifiers(
    sources: Mapping[str, Source], environ: Mapping[str, str], file: str
) -> dict[str, SourceVerifier]:
    """A verifier per source, its secrets read from ``environ``; ConfigError lists every missing one."""
    verifiers: dict[str, SourceVerifier] = {}
    problems: list[ConfigProblem] = []
    for name, source in sources.items():
        resolved = [_resolve(scheme, environ) for scheme in source.verify]
        for index, (_, messages) in enumerate(resolved):
            location = f"source {name!r}: field verify[{index}].secrets"
            problems += [ConfigProblem(file, location, message) for message in messages]
        keys = tuple(scheme_keys for scheme_keys, _ in resolved)
        verifiers[name] = SourceVerifier(name, tuple(source.verify), keys)
    if problems:
        raise ConfigError(problems)
    return verifiers


def source_secrets(sources: Mapping[str, Source], environ: Mapping[str, str]) -> list[str]:
    """The secret values the sources' schemes read from ``environ`` (and their parts), to keep out of logs."""
    values = []
    for source in sources.values():
        for scheme in source.verify:
            for variable in [] if isinstance(scheme, IpAllowList) else scheme.secrets:
                secret = environ.get(variable, "")
                # A basic scheme's password alone, a standard-webhooks secret without its prefix.
                values += [secret, secret.partition(":")[2], secret.removeprefix("whsec_")]
    return values
