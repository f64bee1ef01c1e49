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

PREFIX = "/arena"  # every route the app adds lives under it, clear of Gradio's own paths


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
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(cached.body, media_type=cached.media_type, headers=headers)


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


def fetch_js(path: str) -> str:
    """The browser side of a view route: an event's `js` that fetches the view and returns its text as the
    output's new value. The URL is relative to the page, so it works under a proxy's path prefix too."""
    return (f"async () => {{ const r = await fetch('{PREFIX.lstrip('/')}{path}', {{cache: 'no-cache'}}); "
            "return r.ok ? await r.text() : `<p>Could not be read (${r.status}); tried again on the next refresh.</p>`; }")
