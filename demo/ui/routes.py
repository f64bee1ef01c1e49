"""Read-only views served as plain HTTP routes beside the Gradio app, outside its event machinery.

Why: every Gradio event (queue join, event stream, pre- and post-processing, the files it copies into its
cache) cost the server about 10 ms of CPU on the 2-core machine where a comparison is being timed; ten
visitors pressing Refresh once a second took a fifth of the machine from the decode. A plain GET that
answers from memory costs well under a millisecond, and one whose ETag still matches answers 304 with no
body at all: the page's Refresh fetches these routes from the browser (an event with no server function).

A view is a function returning a `Cached` body, which it builds once per change (a new vote) and shares
between every viewer; the routes only look it up. They run on Starlette's thread pool, never on the event
loop, so a view that has to build its body (statistics, a chart) holds up no other request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# Every route the app adds lives under it: clear of Gradio's own paths, and under /gradio_api, the prefix Gradio's
# server-side rendering proxy (ssr_mode, on by default on some hosts) hands on to Python; any other path it
# answers itself.
PREFIX = "/gradio_api/arena"


@dataclass(frozen=True)
class Cached:
    """A response body with its media type and its validator (derived from the body: equal bodies, equal tag)."""

    body: bytes
    media_type: str

    @cached_property
    def etag(self) -> str:
        return '"' + hashlib.blake2b(self.body, digest_size=12).hexdigest() + '"'


def answer(request: Request, cached: Cached | None, immutable: bool = False) -> Response:
    """200 with the body, 304 when the client's If-None-Match names the same body, 404 for None. `immutable`:
    the URL names one version (a file of one vote count), so the browser may keep it; otherwise it asks
    again each time (no-cache: revalidated, answered 304 while nothing changed)."""
    if cached is None:
        return Response("not found (the results have moved on: refresh)", status_code=404, media_type="text/plain")
    etag = cached.etag
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable" if immutable else "no-cache"}
    if matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    return Response(cached.body, media_type=cached.media_type, headers=headers)


def matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison, as If-None-Match uses: "*", or any listed tag equal once "W/" is dropped (a
    proxy that compresses may weaken the tag it passes on)."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def view_route(path: str, view: Callable[[], Cached]) -> Route:
    """GET PREFIX + path: the view's current body (sync endpoint: Starlette runs it on its thread pool)."""

    def endpoint(request: Request) -> Response:
        return answer(request, view())

    return Route(PREFIX + path, endpoint, methods=["GET"])


def file_route(path: str, lookup: Callable[[str, str], Cached | None]) -> Route:
    """GET PREFIX + path + "/{version}/{name}": one version of a named file (immutable, so cached by the browser);
    404 once that version is gone."""

    def endpoint(request: Request) -> Response:
        return answer(request, lookup(request.path_params["version"], request.path_params["name"]),
                      immutable=True)

    return Route(PREFIX + path + "/{version}/{name}", endpoint, methods=["GET"])


def relative_url(path: str) -> str:
    """PREFIX + path without its leading slash: how a view links to its routes (fetch_js resolves it)."""
    return PREFIX.lstrip("/") + path


def fetch_js(path: str) -> str:
    """The browser side of a view route: an event's `js` that fetches the view and returns its text as the
    output's new value. URLs are resolved against the app's root as Gradio's own page knows it
    (`gradio_config.root`: right under a proxy's path prefix, with or without its trailing slash), and so are the
    links inside the view, which the server writes relative (`gradio_api/arena/...`)."""
    relative = relative_url("")
    return ("async () => { const c = window.gradio_config; "
            "const root = ((c && c.root) || new URL('.', document.baseURI).href).replace(/\\/?$/, '/'); "
            f"const r = await fetch(root + '{relative}{path}', {{cache: 'no-cache'}}); "
            "if (!r.ok) return `<p>Could not be read (${r.status}); tried again on the next refresh.</p>`; "
            f"return (await r.text()).replaceAll('=\"{relative}/', '=\"' + root + '{relative}/'); }}")
