"""Who sent a request, and to which URL, as seen from outside the load balancer.

Forwarded headers are believed only from the proxies named in ``RELAY_TRUSTED_PROXIES``: anyone else could
forge them to pass an IP allow-list or a URL signature.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import web

Network = IPv4Network | IPv6Network


def is_trusted(address: str | None, proxies: list[Network]) -> bool:
    """Whether ``address`` belongs to one of the trusted proxy networks."""
    if address is None or not proxies:
        return False
    try:
        parsed = ip_address(address.strip())
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def client_ip(request: web.Request, proxies: list[Network]) -> str | None:
    """The sender's address: the nearest X-Forwarded-For hop that is not a trusted proxy."""
    address = request.remote
    if not is_trusted(address, proxies):
        return address
    hops = [
        hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")
    ]
    for hop in reversed(hops):
        if not is_trusted(hop, proxies):
            return hop or None
        address = hop
    return address


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() or None if value else None


def public_url(request: web.Request, public_base_url: str | None, proxies: list[Network]) -> str:
    """The URL the sender addressed, path and query as sent (URL signatures cover them byte for byte)."""
    if public_base_url:
        return public_base_url.rstrip("/") + request.raw_path
    scheme, host = request.scheme, request.host
    if is_trusted(request.remote, proxies):
        scheme = _first(request.headers.get("X-Forwarded-Proto")) or scheme
        host = _first(request.headers.get("X-Forwarded-Host")) or host
    return f"{scheme}://{host}{request.raw_path}"
