"""The schemes of senders that do not sign: HTTP Basic credentials, a shared token, an IP allow-list."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import parse_qs

from relay.errors import VerificationFailed
from relay.ingress.checks.request import HookRequest, Keys, decode, header, malformed, sent, split_url
from relay.mapping.sources import StaticToken


def _equal_any(keys: Keys, given: bytes) -> bool:
    # Hashing first keeps the comparison from revealing a secret's length.
    mine = hashlib.sha256(given).digest()
    return any(hmac.compare_digest(hashlib.sha256(key).digest(), mine) for key in keys)


def check_basic(keys: Keys, request: HookRequest) -> None:
    """HTTP Basic credentials; each key is ``user:password``."""
    kind, _, encoded = header(request, "Authorization").partition(" ")
    credentials = decode(encoded.strip(), "base64")
    if kind.lower() != "basic" or credentials is None or b":" not in credentials:
        raise malformed("Authorization", "Basic <base64 of user:password>")
    if not _equal_any(keys, credentials):
        raise VerificationFailed("credentials match no configured user:password")


def _query_parameter(url: str, name: str) -> str:
    values = parse_qs(split_url(url).query, keep_blank_values=True).get(name)
    if values is None:
        raise VerificationFailed(f"missing query parameter {name}")
    if len(values) > 1:
        raise VerificationFailed(f"query parameter {name} is given more than once")
    if not values[0]:
        raise VerificationFailed(f"empty query parameter {name}")
    return values[0]


def check_token(scheme: StaticToken, keys: Keys, request: HookRequest) -> None:
    """A shared token in a header or a query parameter."""
    if scheme.header is not None:
        token = header(request, scheme.header)
    else:
        assert scheme.query is not None  # the model requires exactly one of the two
        token = _query_parameter(request.url, scheme.query)
    if not _equal_any(keys, sent(token)):
        raise VerificationFailed("token matches no configured secret")


def check_ip(networks: Sequence[IPv4Network | IPv6Network], client_ip: str | None) -> None:
    """The client address is in one of the networks."""
    if client_ip is None:
        raise VerificationFailed("client address is unknown")
    try:
        address = ip_address(client_ip)
    except ValueError:
        raise VerificationFailed(f"client address {client_ip[:64]!r} is not an IP address") from None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    if not any(address in network for network in networks):
        raise VerificationFailed(f"client address {client_ip} is not in the allow-list")
