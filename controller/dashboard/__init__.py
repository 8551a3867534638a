"""The web dashboard: server-rendered pages for operators, mounted on the controller at /ui.

    create_app(settings) ── mount_dashboard(app) ──▶ /ui  (its own small FastAPI app)
                                                      ├── session.py      token sign-in → cookie, CSRF
                                                      ├── pages.py        routes → Jinja2 templates
                                                      ├── data.py         registry, telemetry, samples → dicts
                                                      ├── rollout_view.py rollout records → dicts, buttons
                                                      ├── charts.py       inline SVG charts
                                                      └── templates/, static/ (every asset served from here)

No JavaScript framework and no CDN: a fleet's controller often sits on a network without internet, and
pages that are plain HTML are quick to test in a real browser. The dashboard is a separate mounted app so
that its errors are pages (a redirect to sign-in, a 403 page), while the REST API keeps its JSON errors.

Errors: `session.LoginRequired` (→ redirect to the sign-in form), `session.NotAllowed` (→ 403 page).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from controller.dashboard.session import LoginRequired, NotAllowed

MOUNT_PATH = "/ui"


def create_dashboard(ctx: object) -> FastAPI:
    from controller.dashboard.pages import not_allowed_page, router

    ui = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    ui.state.ctx = ctx
    ui.state.csrf_key = secrets.token_bytes(32)
    ui.include_router(router)
    ui.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")

    @ui.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{MOUNT_PATH}/login?next={quote(target)}", status_code=303)

    @ui.exception_handler(NotAllowed)
    async def _forbidden(request: Request, exc: NotAllowed) -> Response:
        return not_allowed_page(request, exc)

    return ui


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at /ui and send / there; needs `app.state.ctx` (set by create_app)."""
    app.mount(MOUNT_PATH, create_dashboard(app.state.ctx))


    async def _root(request: Request) -> Response:
        return RedirectResponse(f"{MOUNT_PATH}/", status_code=307)

    app.add_route("/", _root, include_in_schema=False)
