"""Outbound HTTP: where Maestro may send requests, and one bounded request to such a place.

Webhook deliveries and `http` steps both go through `send`. A destination is checked twice:
its URL when it is registered (`check_url`: scheme, the allowlist, literal addresses), and
before requests the addresses its host resolves to (`resolve`). The request then goes to the
checked address itself, with the original host in `Host` and TLS's server name, so a DNS answer
that changes between the check and the connection (DNS rebinding) cannot redirect it. A
checked address is reused for 10 s (`Guard.RESOLVED_FOR`) instead of a lookup per request.
Redirects are never followed; request and response bodies are bounded.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from maestro.settings import OutboundSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services: refused like link-local addresses unless a network is allowed.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


class DestinationRefused(ValueError):
    """The destination is not allowed (the allowlist, or a private or metadata address)."""


@dataclass(frozen=True)
class Destination:
    """A URL checked against the allowlist, with the address it was resolved to."""

    url: str
    host: str
    address: str

    def request_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        netloc = literal + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


@dataclass
class Response:
    """An answer, its body cut at the size limit (`truncated`)."""

    status_code: int
    headers: dict[str, str]
    body: bytes
    truncated: bool
    latency_ms: float


@dataclass
class Guard:
    """The outbound rules of one process (from OutboundSettings)."""

    settings: OutboundSettings = field(default_factory=OutboundSettings)

    # How long a host's resolved and checked address is reused (connections only ever go to
    # an address that passed `check_address`; this only spares a lookup per request).
    RESOLVED_FOR = 10.0

    def __post_init__(self) -> None:
        self._resolved: dict[tuple[str, int], tuple[float, str]] = {}
        self._hosts = [h.lower() for h in self.settings.allowed_hosts if not _network(h)]
        self._networks = [n for h in self.settings.allowed_hosts if (n := _network(h))]
        self._private = [
            ipaddress.ip_network(n, strict=False) for n in self.settings.allowed_private_networks
        ]

    def check_url(self, url: str) -> str:
        """The URL's host if the URL may be used (scheme, allowlist, literal address);
        DestinationRefused saying why otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise DestinationRefused(f"the scheme must be http or https, not {parts.scheme!r}")
        if not parts.hostname:
            raise DestinationRefused("the URL has no host")
        if parts.username or parts.password:
            raise DestinationRefused("the URL must not carry a user or password")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise DestinationRefused("the URL's port is not a number from 0 to 65535") from None
        host = parts.hostname.lower().rstrip(".")
        literal = _address(host)
        if literal is not None:
            self.check_address(host, literal)
        elif self._hosts or self._networks:
            if not any(fnmatch.fnmatchcase(host, pattern) for pattern in self._hosts):
                raise DestinationRefused(f"host {host!r} is not in MAESTRO_OUTBOUND__ALLOWED_HOSTS")
        return host

    def check_address(self, host: str, address: IPAddress) -> None:
        """Refuse an address outside the rules: a public one outside a non-empty allowlist,
        a private, loopback, link-local or metadata one outside the allowed private networks."""
        if any(address in net for net in self._private):
            return
        if address in METADATA or address.is_link_local:
            raise DestinationRefused(
                f"{host} resolves to {address}, a link-local or metadata address (refused)"
            )
        if not address.is_global:
            raise DestinationRefused(
                f"{host} resolves to {address}, a private or reserved address; allow its "
                "network in MAESTRO_OUTBOUND__ALLOWED_PRIVATE_NETWORKS"
            )
        if self._hosts or self._networks:
            by_name = any(fnmatch.fnmatchcase(host, pattern) for pattern in self._hosts)
            if not by_name and not any(address in net for net in self._networks):
                raise DestinationRefused(
                    f"{host} ({address}) is not in MAESTRO_OUTBOUND__ALLOWED_HOSTS"
                )

    async def resolve(self, url: str) -> Destination:
        """Check the URL, resolve its host and check every address it resolves to (one
        refused address refuses the destination); the first address is the one to use."""
        host = self.check_url(url)
        literal = _address(host)
        if literal is not None:
            return Destination(url, host, str(literal))
        port = urlsplit(url).port or (443 if url.startswith("https") else 80)
        cached = self._resolved.get((host, port))
        if cached is not None and cached[0] > time.monotonic():
            return Destination(url, host, cached[1])
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise ConnectionError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(_address(str(info[4][0])) for info in infos))
        for address in addresses:
            assert address is not None
            self.check_address(host, address)
        if len(self._resolved) >= 1024:
            self._resolved.clear()
        self._resolved[(host, port)] = (time.monotonic() + self.RESOLVED_FOR, str(addresses[0]))
        return Destination(url, host, str(addresses[0]))

    def client(self, max_connections: int = 100) -> aiohttp.ClientSession:
        """An HTTP client for `send`: no proxies from the environment, no cookies kept, TLS
        verified, bounded connections (redirects are refused by `send`)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=20),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": "Maestro"},
        )

    async def send(
        self,
        client: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        max_response_bytes: int | None = None,
    ) -> Response:
        """One request to a checked destination, the body read up to the limit. Raises
        DestinationRefused, ValueError (request too large), ConnectionError or TimeoutError."""
        if content is not None and len(content) > self.settings.max_request_bytes:
            raise ValueError(
                f"the request body has {len(content):,} bytes; the limit is "
                f"{self.settings.max_request_bytes:,} (MAESTRO_OUTBOUND__MAX_REQUEST_BYTES)"
            )
        limit = max_response_bytes or self.settings.max_response_bytes
        timeout = timeout or self.settings.timeout_seconds
        began = time.monotonic()
        destination: Destination | None = None
        try:
            async with asyncio.timeout(timeout):
                destination = await self.resolve(url)
                async with client.request(
                    method,
                    destination.request_url(),
                    params=_query(params),
                    headers={**_without_host(headers), "Host": _host_header(url)},
                    data=content,
                    allow_redirects=False,
                    server_hostname=destination.host if url.startswith("https") else None,
                    timeout=aiohttp.ClientTimeout(total=None),
                ) as answer:
                    body = bytearray()
                    truncated = False
                    async for chunk in answer.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > limit:
                            truncated = True
                            del body[limit:]
                            break
        except TimeoutError:
            host = destination.host if destination else urlsplit(url).hostname
            raise TimeoutError(f"no answer from {host} within {timeout}s") from None
        except aiohttp.ClientError as exc:
            host = destination.host if destination else urlsplit(url).hostname
            raise ConnectionError(f"{host}: {exc or type(exc).__name__}") from exc
        return Response(
            status_code=answer.status,
            headers={k.lower(): v for k, v in answer.headers.items()},
            body=bytes(body),
            truncated=truncated,
            latency_ms=(time.monotonic() - began) * 1000,
        )


def _query(params: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """Query parameters as strings (booleans as `true`/`false`, None empty, a list repeated)."""
    if not params:
        return None
    pairs = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            text = str(item).lower() if isinstance(item, bool) else str(item)
            pairs.append((str(key), "" if item is None else text))
    return pairs


def _without_host(headers: dict[str, str] | None) -> dict[str, str]:
    """The headers but a `Host` one in any spelling (the request sets it from the URL)."""
    return {k: v for k, v in (headers or {}).items() if k.lower() != "host"}


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return host + (f":{parts.port}" if parts.port else "")


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
