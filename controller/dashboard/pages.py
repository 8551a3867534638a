"""The dashboard's routes: server-rendered pages under /ui, every asset served from this package.

| path                               | shows                                                         |
|------------------------------------|---------------------------------------------------------------|
| /ui/login, /ui/logout              | sign in with an operator token (cookie), sign out             |
| /ui/                               | fleet overview: devices by hardware class, version, state, presence |
| /ui/devices/{id}                   | latency p50/p95/p99 over time with version changes, gate reports, events, samples |
| /ui/rollouts, /ui/rollouts/{id}    | rollouts; waves, per-device progress, reasons, audit trail, buttons |
| POST /ui/rollouts/{id}/{action}    | pause / resume / abort / rollback (operator role, CSRF field) |
| /ui/models, /ui/models/{n}/{v}     | releases; variants with accuracy, latency per hardware class, frontier chart |
| /ui/static/...                     | the stylesheet                                                |

Pages refresh themselves every few seconds (`<meta http-equiv="refresh">`, no script), which is what a
wall screen during a rollout needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from controller.dashboard import data, rollout_view
from controller.dashboard.session import (
    COOKIE_MAX_AGE_S,
    COOKIE_NAME,
    NotAllowed,
    Viewer,
    check_token,
    current_viewer,
    require_operator,
)
from controller.errors import Unauthenticated
from controller.rollouts import RolloutError, RolloutNotFound

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter()
ViewerDep = Annotated[Viewer, Depends(current_viewer)]
REFRESH_S = 5


def _render(request: Request, name: str, viewer: Viewer | None, status_code: int = 200, **context: Any
            ) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"viewer": viewer, "refresh_s": context.pop("refresh_s", REFRESH_S), **context},
        status_code=status_code,
    )


def _ctx(request: Request) -> Any:
    return request.app.state.ctx


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "") -> HTMLResponse:
    return _render(request, "login.html", None, refresh_s=0, error="", next=_safe_next(next))


def _safe_next(target: str) -> str:
    # Only paths inside the dashboard: an open redirect would let a link send a signed-in operator anywhere.
    return target if target.startswith("/ui/") and "//" not in target and "\\" not in target else "/ui/"


@router.post("/login", response_model=None)
def login(request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "") -> Response:
    try:
        check_token(request, token)
    except Unauthenticated as e:
        return _render(request, "login.html", None, status_code=401, refresh_s=0, error=e.message,
                       next=_safe_next(next))
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE_NAME, token.strip(), max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
                        path="/ui", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/ui")
    return response


@router.get("/", response_class=HTMLResponse)
def fleet(request: Request, viewer: ViewerDep) -> HTMLResponse:
    with _ctx(request).session_factory() as session:
        view = data.fleet(session)
    engine = rollout_view.engine_of(_ctx(request))
    active = [r for r in rollout_view.list_rollouts(engine)
              if r["state"] not in ("completed", "rolled_back", "aborted")] if engine else []
    return _render(request, "fleet.html", viewer, fleet=view, active_rollouts=active)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device(request: Request, device_id: str, viewer: ViewerDep) -> HTMLResponse:
    with _ctx(request).session_factory() as session:
        view = data.device(session, device_id)
    if view is None:
        return _render(request, "missing.html", viewer, status_code=404, what=f"device {device_id}")
    return _render(request, "device.html", viewer, d=view)


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts(request: Request, viewer: ViewerDep) -> HTMLResponse:
    engine = rollout_view.engine_of(_ctx(request))
    listing = rollout_view.list_rollouts(engine) if engine else None
    return _render(request, "rollouts.html", viewer, rollouts=listing)


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout(request: Request, rollout_id: str, viewer: ViewerDep, message: str = "") -> HTMLResponse:
    engine = rollout_view.engine_of(_ctx(request))
    try:
        if engine is None:
            raise RolloutNotFound(rollout_id)
        view = rollout_view.detail(engine, rollout_id)
    except (RolloutNotFound, RolloutError, ValueError):
        return _render(request, "missing.html", viewer, status_code=404, what=f"rollout {rollout_id}")
    return _render(request, "rollout.html", viewer, r=view, message=message[:200])


@router.post("/rollouts/{rollout_id}/{action}", response_model=None)
def rollout_action(request: Request, rollout_id: str, action: str, viewer: ViewerDep,
                   csrf: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "") -> Response:
    require_operator(request, viewer, csrf)
    engine = rollout_view.engine_of(_ctx(request))
    if engine is None or action not in rollout_view.ACTIONS:
        return _render(request, "missing.html", viewer, status_code=404, what=f"rollout {rollout_id}")
    try:
        engine.command(rollout_id, action, f"dashboard:{viewer.principal.name}", reason.strip()[:200] or None)
    except RolloutNotFound:
        return _render(request, "missing.html", viewer, status_code=404, what=f"rollout {rollout_id}")
    except RolloutError as e:
        return RedirectResponse(f"/ui/rollouts/{rollout_id}?message={action} refused: {e}"[:400], status_code=303)
    return RedirectResponse(f"/ui/rollouts/{rollout_id}?message={action} done", status_code=303)


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, viewer: ViewerDep) -> HTMLResponse:
    with _ctx(request).session_factory() as session:
        listing = data.releases(session)
    return _render(request, "models.html", viewer, releases=listing)


@router.get("/models/{name}/{version}", response_class=HTMLResponse)
def model(request: Request, name: str, version: str, viewer: ViewerDep) -> HTMLResponse:
    with _ctx(request).session_factory() as session:
        view = data.release(session, name, version)
    if view is None:
        return _render(request, "missing.html", viewer, status_code=404, what=f"model {name} {version}")
    return _render(request, "model.html", viewer, m=view)


def not_allowed_page(request: Request, exc: NotAllowed) -> HTMLResponse:
    return _render(request, "missing.html", None, status_code=403, refresh_s=0, what=exc.message,
                   forbidden=True)
