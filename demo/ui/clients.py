"""Who a request comes from, as Gradio tells it: its session, and its address where a proxy supplies one."""

from __future__ import annotations

import gradio as gr

from demo.running.runner import Client


def session_of(request: gr.Request | None) -> str:
    """Gradio's session: one per page load in a browser, one per gradio_client Client."""
    return (request.session_hash if request is not None else None) or "anonymous"


def forwarded_address(request: gr.Request | None) -> str | None:
    """The first address of X-Forwarded-For, which a proxy (a Space's) supplies; None without one."""
    if request is None:
        return None
    forwarded = (request.headers or {}).get("x-forwarded-for") or ""
    return forwarded.split(",")[0].strip() or None


def client_of(request: gr.Request | None) -> Client:
    """The client a request counts against in the arena's admission and turns: its session, and its forwarded
    address where there is one. Not the connection's peer: without a proxy on the way every local client would
    share it (and behind a proxy, the proxy's is everyone's)."""
    return Client(session_of(request), forwarded_address(request))
