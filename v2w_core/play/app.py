"""The Ray Serve deployment: one replica loads the model once (:class:`~v2w_core.play.engine.PlayEngine`)
and answers the page's HTTP calls.

Routes (JSON unless said otherwise):

* ``GET /`` and ``GET /static/<file>`` — the page (static HTML/JS/CSS shipped in the package);
* ``GET /api/info`` — model, controls, contexts, step range, session limits;
* ``POST /api/session`` ``{context?, seed?}`` — a new session → its first frame;
* ``POST /api/session/<id>/step`` ``{action, steps?}`` — the next frame (``compute_ms``: the model's time);
* ``POST /api/session/<id>/reset`` ``{context?, seed?}`` — back to the start;
* ``GET /api/session/<id>/video.mp4`` — the session so far, as MP4; ``DELETE /api/session/<id>`` — close.

Errors are ``{"error": "<sentence>"}``: 400 a bad message (the session is untouched), 404 an unknown or
expired session, 503 no free session slot. Handlers read the body on the event loop and run the engine in
a worker thread, so a long step does not stall other sessions' small requests.
"""

# No ``from __future__ import annotations``: Serve's ingress hands FastAPI the methods, and FastAPI must
# see ``Request`` as a class, not a string, to inject the request instead of asking for a query parameter.
import asyncio
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from v2w_core.play.engine import PlayEngine, PlaySettings
from v2w_core.play.errors import BadMessage, PlayError, SessionGone, TooManySessions

logger = logging.getLogger(__name__)

STATIC_FILES = {"index.html": "text/html", "play.js": "text/javascript", "play.css": "text/css"}
DEPLOYMENT_NAME = "v2w-play"

api = FastAPI(title="v2w-play", docs_url=None, redoc_url=None, openapi_url=None)


def _static(name: str) -> Response:
    if name not in STATIC_FILES:
        return JSONResponse({"error": f"no static file {name[:40]!r}"}, status_code=404)
    data = resources.files("v2w_core.play").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


async def _call(fn: Callable[..., Any], *args: Any) -> Response:
    try:
        result = await asyncio.to_thread(fn, *args)
    except BadMessage as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    except SessionGone as err:
        return JSONResponse({"error": str(err)}, status_code=404)
    except TooManySessions as err:
        return JSONResponse({"error": str(err)}, status_code=503)
    except PlayError as err:
        return JSONResponse({"error": str(err)}, status_code=500)
    if isinstance(result, Response):
        return result
    return JSONResponse(result)


@serve.deployment(name=DEPLOYMENT_NAME, num_replicas=1, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class PlayServer:
    """One replica, one model in memory, all sessions (they are state in this process: one replica)."""

    def __init__(self, settings: PlaySettings) -> None:
        logging.basicConfig(level=logging.INFO)
        self.engine = PlayEngine(settings)

    @api.get("/")
    def index(self) -> Response:
        return _static("index.html")

    @api.get("/static/{name}")
    def static(self, name: str) -> Response:
        return _static(name)

    @api.get("/api/info")
    async def info(self) -> Response:
        return await _call(self.engine.info)

    @api.post("/api/session")
    async def new_session(self, request: Request) -> Response:
        return await _call(self.engine.new_session, await request.body())

    @api.post("/api/session/{session_id}/step")
    async def step(self, session_id: str, request: Request) -> Response:
        return await _call(self.engine.step, session_id, await request.body())

    @api.post("/api/session/{session_id}/reset")
    async def reset(self, session_id: str, request: Request) -> Response:
        return await _call(self.engine.reset, session_id, await request.body())

    @api.get("/api/session/{session_id}/video.mp4")
    async def video(self, session_id: str) -> Response:
        def mp4() -> Response:
            data = self.engine.video(session_id)
            return Response(data, media_type="video/mp4",
                            headers={"Content-Disposition": f'attachment; filename="v2w-play-{session_id[:8]}.mp4"'})  # fmt: skip

        return await _call(mp4)

    @api.delete("/api/session/{session_id}")
    async def close(self, session_id: str) -> Response:
        return await _call(lambda: {"closed": self.engine.close(session_id)})


def build_app(settings: PlaySettings, *, num_gpus: float = 0.0) -> Any:
    """The Serve application. The replica asks for no CPU (torch uses the machine's cores anyway, and a
    0-CPU actor is never stuck behind other work on a small box) and ``num_gpus`` of a GPU."""
    return PlayServer.options(ray_actor_options={"num_cpus": 0, "num_gpus": num_gpus}).bind(settings)
