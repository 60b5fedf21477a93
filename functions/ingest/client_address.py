"""The client's address: who sent a request, as far as this service can know it.

The address is the connection's peer, unless that peer is a proxy listed in TRUSTED_PROXIES:
then X-Forwarded-For is walked from the right, each trusted hop giving way to the address it
says it received the request from, and the first hop that is not trusted is the client (as
nginx's `real_ip_recursive on`). Entries left of it were written by the client and are never
believed. A malformed entry ends the walk at the last trusted hop, as nginx does: junk in the
header cannot buy a client a fresh address.

Where the peer comes from:
- under gunicorn, `REMOTE_ADDR`: the socket's peer. A peer that is no IP address (a Unix
  socket) can only be a process on this host, a proxy, so it is trusted like a listed one;
- on Lambda behind API Gateway, the source IP the platform reports (`requestContext`), never
  apig-wsgi's `REMOTE_ADDR`: for REST APIs, HTTP API payload 1.0 and ALB events apig-wsgi
  copies the leftmost X-Forwarded-For entry there, which the client chooses;
- on Lambda behind an ALB, which reports no source IP, the rightmost X-Forwarded-For entry:
  the address the ALB saw, appended by the ALB itself.

IPv4-mapped IPv6 addresses (a dual-stack socket's `::ffff:192.0.2.1`) are given as IPv4. The
rate limits (rate_limits.py) use this; so does enrichment.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"
# Where apig-wsgi keeps the Lambda event's requestContext.
REQUEST_CONTEXT = "apig_wsgi.request_context"

_warned_untrusted_proxy = False


def client_address(
    environ: Mapping[str, Any], trusted_proxies: Sequence[Network] = ()
) -> Address | None:
    """The address of the client that sent this WSGI request, or None when nothing names one
    (a Unix socket with no forwarded address, a Lambda event without a source IP)."""
    hops = _forwarded_for(environ)
    context = environ.get(REQUEST_CONTEXT)
    if context is None:
        peer = parse_address(environ.get("REMOTE_ADDR") or "")
        if peer is not None and hops and not _trusted(peer, trusted_proxies):
            _warn_if_private(peer)
    elif "elb" in context:
        # The ALB appends the address it saw; no other entry is the ALB's own.
        peer = parse_address(hops.pop()) if hops else None
        if peer is None:
            return None
    else:
        peer = parse_address(_source_ip(context) or "")
        if peer is None:
            return None
    return _walk(peer, hops, trusted_proxies)


@functools.lru_cache(maxsize=4096)  # a client sends many requests from one address
def parse_address(text: str) -> Address | None:
    """An address as proxies write them (`192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
    `[2001:db8::1]:443`), or None for anything else (`unknown`, a hidden name, junk)."""
    text = text.strip()
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4:port (an IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _walk(
    peer: Address | None, hops: list[str], trusted_proxies: Sequence[Network]
) -> Address | None:
    """From the peer leftwards through X-Forwarded-For, while the current hop is trusted (a peer
    that is no IP address is local, so trusted)."""
    address = peer
    for hop in reversed(hops):
        if address is not None and not _trusted(address, trusted_proxies):
            return address
        forwarded = parse_address(hop)
        if forwarded is None:
            return address
        address = forwarded
    return address


def _trusted(address: Address, trusted_proxies: Sequence[Network]) -> bool:
    return any(address in network for network in trusted_proxies)


def _forwarded_for(environ: Mapping[str, Any]) -> list[str]:
    """X-Forwarded-For's entries, left to right; several such headers count as one list (WSGI
    servers join them with commas, in order)."""
    header = environ.get(FORWARDED_FOR)
    return header.split(",") if header else []


def _source_ip(context: Mapping[str, Any]) -> str | None:
    """API Gateway's source IP: HTTP API payload 2.0 (`http`), REST and payload 1.0
    (`identity`)."""
    for part in ("http", "identity"):
        source_ip = (context.get(part) or {}).get("sourceIp")
        if source_ip:
            return source_ip
    return None


def _warn_if_private(peer: Address) -> None:
    """A peer of a private network forwarding for others is most likely our own proxy or load
    balancer, left out of TRUSTED_PROXIES: then every client behind it shares its address (and
    one address's rate limit). Said once per process; a client on the internet sending the
    header itself comes from a global address and is not worth a line."""
    global _warned_untrusted_proxy
    if _warned_untrusted_proxy or peer.is_global:
        return
    _warned_untrusted_proxy = True
    log.warning(
        "X-Forwarded-For came from %s, a private address not in TRUSTED_PROXIES: if it is "
        "a proxy or load balancer of ours, list it there, or all clients behind it count as "
        "one address",
        peer,
    )
