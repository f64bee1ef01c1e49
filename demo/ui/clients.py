"""Who a request comes from: its session, as Gradio tells it, and its address, as the connection and the
proxies the operator trusts tell it (never as the client says it).

A proxy appends the address it saw to X-Forwarded-For, after whatever the client itself wrote there, so only
the entries that trusted proxies appended, read from the right, say anything. This is what uvicorn's
--forwarded-allow-ips and nginx's set_real_ip_from do: the connection's peer is the address unless it is a
trusted proxy; then the entry that proxy appended is, unless that too is a trusted proxy, and so on through at
most `proxies.hops` of them. Without a trusted proxy, X-Forwarded-For changes nothing.

uvicorn, under Gradio, would rewrite the peer from X-Forwarded-For itself whenever the peer is 127.0.0.1 (its
default --forwarded-allow-ips), which would let any local client name its own address; `serve_peers_as_they_are`
turns that off, so the peer Gradio hands on is the connection's.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os

import gradio as gr

from demo.config import ProxySettings
from demo.running.runner import Client

log = logging.getLogger(__name__)

UVICORN_TRUST_ENV = "FORWARDED_ALLOW_IPS"  # read by uvicorn.Config, which Gradio builds at launch
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def serve_peers_as_they_are() -> None:
    """Keep uvicorn from rewriting a request's peer from its headers: the arena reads them itself (ProxyTrust).
    An operator's own FORWARDED_ALLOW_IPS is named in the log, since models.yaml's `proxies:` replaces it."""
    previous = os.environ.get(UVICORN_TRUST_ENV)
    if previous:
        log.warning("%s=%s is not used: the arena trusts the proxies in models.yaml's `proxies:` (or "
                    "$ARENA_TRUSTED_PROXIES) instead", UVICORN_TRUST_ENV, previous)
    os.environ[UVICORN_TRUST_ENV] = ""


class ProxyTrust:
    """The proxies trusted to name the client (ProxySettings), and the address they name for a request."""

    def __init__(self, settings: ProxySettings):
        self.settings = settings
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.trusted)
        self._untrusted_forwarding_logged = False

    @classmethod
    @functools.lru_cache(maxsize=16)
    def of(cls, settings: ProxySettings) -> "ProxyTrust":
        return cls(settings)

    def trusts(self, address: str | None) -> bool:
        parsed = parse_address(address)
        return parsed is not None and any(parsed in network for network in self._networks)

    def address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: `peer` unless it is a trusted proxy; then, from the right of X-Forwarded-For,
        the first entry that is not a trusted proxy, taking at most `hops` entries. None when nothing is known."""
        if not self.trusts(peer):
            if forwarded_for and not self._untrusted_forwarding_logged and _is_loopback(peer):
                self._untrusted_forwarding_logged = True  # once: a local proxy the operator forgot to trust
                log.warning("requests come through a proxy at %s that is not trusted, so every client behind it "
                            "counts as one; if that proxy is yours, add it to models.yaml's proxies.trusted", peer)
            return peer or None
        entries = [e for e in (_host(part) for part in (forwarded_for or "").split(",")) if e]
        address = peer
        for _ in range(self.settings.hops):
            if not entries:
                break
            address = entries.pop()  # the entry the proxy we have come through appended
            if not self.trusts(address):
                break  # a client, not one more proxy of ours
        return address or None


def parse_address(text: str | None) -> Address | None:
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


def _is_loopback(text: str | None) -> bool:
    parsed = parse_address(text)
    return parsed is not None and parsed.is_loopback


def _host(entry: str) -> str:
    """An X-Forwarded-For entry without its port ("203.0.113.7:4711", "[2001:db8::1]:80") or brackets."""
    entry = entry.strip()
    if entry.startswith("["):
        return entry[1:entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.rsplit(":", 1)[0]
    return entry


def session_of(request: gr.Request | None) -> str:
    """Gradio's session: one per page load in a browser, one per gradio_client Client."""
    return (request.session_hash if request is not None else None) or "anonymous"


def address_of(request: gr.Request | None, proxies: ProxySettings) -> str | None:
    """The request's client address (ProxyTrust.address); None when the request carries none."""
    if request is None:
        return None
    peer = getattr(getattr(request, "client", None), "host", None)
    forwarded = (getattr(request, "headers", None) or {}).get("x-forwarded-for")
    return ProxyTrust.of(proxies).address(peer, forwarded)


def client_of(request: gr.Request | None, proxies: ProxySettings) -> Client:
    """The client a request counts against in the arena's admission and turns: its session and its address.
    A client can open new sessions at will but not new addresses, so the address is what holds its share and
    its place in the round-robin; everyone behind one address (a classroom's NAT) shares them."""
    return Client(session_of(request), address_of(request, proxies))
