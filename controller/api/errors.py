"""One error format for every answer that is not a success:

    {"error": {"code": "not_found", "message": "device dev-1 does not exist", "details": {}}}

Domain errors (`controller.errors`) carry their code and status; request validation failures become
`invalid_request` (422) with the offending fields in `details`, and so do values the database itself
refuses (`DataError`: NUL characters in text, numbers past a column's width); anything unexpected is a
500 whose message says nothing about internals (the log has the traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.errors import ControllerError, RateLimited

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    429: "rate_limited",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details or {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer, all in the one error format."""
    return {s: {"model": ErrorResponse, "description": _HTTP_CODES.get(s, "error")} for s in statuses}


# Documented on every protected route.
AUTH_ERRORS = error_responses(401, 403)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ControllerError)
    async def _domain(_request: Request, exc: ControllerError) -> JSONResponse:
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        elif exc.http_status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(exc.http_status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(422, "invalid_request", f"{where}: {first['msg']}", {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers invalid JSON with a validation error but bytes that are not UTF-8 with a bare
            # 400; both are the same client mistake and get the same documented answer.
            return error_response(
                422, "invalid_request", "body: not valid JSON (UTF-8 expected)",
                {"errors": [{"loc": ["body"], "msg": str(exc.__cause__), "type": "json_invalid"}]},
            )
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value that passed validation (a NUL character in text on PostgreSQL, a
        # number past a column's width): the client's input, so a 422; the request's session rolls back.
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc.orig)
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "value out of range"
        return error_response(422, "invalid_request", f"a value was refused by the database: {reason}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; see the controller log")
