"""IP handling: what of a client's address is stored in `context.ip` (IP_HANDLING).

- `anonymize` (the default): IPv4 with its last octet zeroed (a /24), IPv6 with all but its
  first 48 bits zeroed (a /48), as Snowplow and Google Analytics truncate them: an address is
  personal data under GDPR, its network much less so;
- `full`: the address as it is;
- `none`: no `context.ip` at all, a client-sent one removed too.

The request's address (functions/ingest/client_address.py) is cut once per request. A
client-sent `context.ip` (a server SDK forwarding its user's address) is cut the same way; under
`anonymize` one that is no bare IP address is removed, since it may be an address in another
notation (`1.2.3.4:80`); a value that is no string is removed whatever the handling (the field
is a string). An unspecified address (`0.0.0.0`, `::`), which some SDKs send as a
placeholder, counts as none sent. Geolocation always uses the full address, before it is cut.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IP_HANDLING's values (shared/settings.py checks them).
ANONYMIZE, FULL, NONE = "anonymize", "full", "none"
# The prefix kept by `anonymize`, in bits.
IPV4_KEPT_BITS, IPV6_KEPT_BITS = 24, 48
_IPV4_MASK = ((1 << IPV4_KEPT_BITS) - 1) << (32 - IPV4_KEPT_BITS)
_IPV6_MASK = ((1 << IPV6_KEPT_BITS) - 1) << (128 - IPV6_KEPT_BITS)
# The longest `context.ip` this module writes: an IPv6 address in full (its text as Python
# writes it never holds a zone; a zone is dropped first). A client-sent value kept under `full`
# is the client's own bytes, already counted in the body.
MAX_IP_CHARS = 39
# No IP address is written longer (an IPv6 one with an IPv4 tail and a zone, generously).
MAX_ADDRESS_TEXT = 64
# Client-sent values seen across requests (a server SDK forwards its users' addresses).
CLIENT_IP_CACHE = 4096


@lru_cache(maxsize=CLIENT_IP_CACHE)  # the request's address: one client sends many
def stored_form(address: Address | None, handling: str) -> str | None:
    """What `context.ip` holds for `address` under `handling` (None: nothing)."""
    if address is None or handling == NONE:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        kept = int(address) & _IPV4_MASK if handling == ANONYMIZE else int(address)
        return str(ipaddress.IPv4Address(kept))
    # From the integer: a zone (`fe80::1%eth0`, from a proxy's header) is dropped, not stored.
    kept = int(address) & _IPV6_MASK if handling == ANONYMIZE else int(address)
    return str(ipaddress.IPv6Address(kept))


def parse(text: str) -> Address | None:
    """A bare IP address (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_sent(value: str, handling: str) -> tuple[str | None, Address | None, bool]:
    """A client-sent string `context.ip`: (what to store, or None to remove it; the address to
    locate, or None; whether it counts as sent: False for a placeholder, which the request's
    address replaces)."""
    if len(value) > MAX_ADDRESS_TEXT:  # no address: not worth a parse, nor a place in the cache
        return (value if handling == FULL else None), None, True
    return _client_sent(value, handling)


@lru_cache(maxsize=CLIENT_IP_CACHE)
def _client_sent(value: str, handling: str) -> tuple[str | None, Address | None, bool]:
    address = parse(value)
    if address is not None and address.is_unspecified:
        return None, None, False
    if handling == FULL:  # kept verbatim, whatever it is
        return value, address, True
    return stored_form(address, handling), address, True
