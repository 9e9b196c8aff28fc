"""Which URLs a webhook subscription may name.

A subscriber is an `http` or `https` URL with a host, no user info (credentials belong in
the signature, not in a URL shown by `GET /admin/hooks`), at most 2048 characters and no
whitespace or control characters. It must not be the gateway itself: a gateway that posts
its own events to its own port would at best fill its outbox with 404s and at worst call
its own admin API. "Itself" is a URL on the gateway's port whose host is the gateway's
configured host, or resolves to an address of it, to loopback or to the unspecified
address. Other loopback ports stay allowed (a receiver beside the gateway is common).

Resolving a name blocks: call `check_hook_url` from a worker thread. A name that does not
resolve now is accepted (it may later); its attempts fail and are retried until it does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Iterable
from urllib.parse import SplitResult, urlsplit

from gateway.errors import InvalidRequest

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
# (host, port) the gateway listens on (its `host` and `port` settings).
OwnAddress = tuple[str, int]


def check_hook_url(url: str, *, own_addresses: Collection[OwnAddress]) -> str:
    """`url` if a subscription may name it; else InvalidRequest (param `url`, code
    `invalid_hook_url`) saying every problem."""
    problems = url_problems(url, own_addresses=own_addresses)
    if problems:
        raise InvalidRequest("; ".join(problems), param="url", code="invalid_hook_url")
    return url


def url_problems(url: str, *, own_addresses: Collection[OwnAddress]) -> list[str]:
    """Every reason `url` cannot be a subscriber (empty: it can)."""
    if len(url) > MAX_URL_CHARS:
        return [f"url is longer than {MAX_URL_CHARS} characters ({len(url)})"]
    problems = []
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        problems.append("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return [*problems, f"url is not a valid URL ({exc})"]
    if parts.scheme not in DEFAULT_PORTS:
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        problems.append(f"url must start with http:// or https://, not {scheme}")
    if not parts.hostname:
        problems.append("url has no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        problems.append("url must not carry user info (user:password@)")
    if not problems and _is_gateway(parts, port, own_addresses):
        problems.append("url points at the gateway itself")
    return problems


def _is_gateway(parts: SplitResult, port: int | None, own: Iterable[OwnAddress]) -> bool:
    host = (parts.hostname or "").rstrip(".").lower()
    port = port if port is not None else DEFAULT_PORTS[parts.scheme]
    same_port = [own_host.lower() for own_host, own_port in own if own_port == port]
    if not same_port:
        return False
    if host in same_port:
        return True
    addresses = _addresses(host)
    if any(address.is_loopback or address.is_unspecified for address in addresses):
        return True
    return any(addresses & _own(own_host) for own_host in same_port)


def _own(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the gateway answers on when it listens on `host`."""
    addresses = _addresses(host)
    if any(address.is_unspecified for address in addresses):
        # Listening on every interface: this machine's own name resolves to one of them.
        addresses |= _addresses(socket.gethostname())
    return addresses


def _addresses(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` is or resolves to (empty when it does not resolve)."""
    try:
        return {_unmapped(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    found = set()
    for info in infos:
        # Drop an IPv6 zone (`fe80::1%eth0`).
        text = str(info[4][0]).split("%", 1)[0]
        try:
            found.add(_unmapped(ipaddress.ip_address(text)))
        except ValueError:
            continue
    return found


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # `::ffff:127.0.0.1` is 127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
