"""The controller's domain errors, mapped to HTTP answers by one handler (`controller.api.errors`).

    ControllerError                      code            HTTP   retry helps?
    ├── InvalidInput                     invalid_input   422    no: fix the request
    │   └── PayloadTooLarge              too_large       413    no
    ├── Unauthenticated                  unauthenticated 401    no: present a valid token
    ├── Forbidden                        forbidden       403    no: needs a stronger role
    ├── NotFound                         not_found       404    no
    ├── Conflict                         conflict        409    no: the thing already exists / changed
    ├── RateLimited                      rate_limited    429    yes, after `retry_after_s`
    └── Unavailable                      unavailable     503    yes: a dependency is down

Services raise these with a message that names the object and says what was expected and what
arrived; the API layer never invents its own texts for them.
"""

from __future__ import annotations

from typing import Any


class ControllerError(Exception):
    code = "error"
    http_status = 500
    retryable = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(ControllerError):
    code = "invalid_input"
    http_status = 422


class PayloadTooLarge(InvalidInput):
    code = "too_large"
    http_status = 413


class Unauthenticated(ControllerError):
    code = "unauthenticated"
    http_status = 401


class Forbidden(ControllerError):
    code = "forbidden"
    http_status = 403


class NotFound(ControllerError):
    code = "not_found"
    http_status = 404


class Conflict(ControllerError):
    code = "conflict"
    http_status = 409


class RateLimited(ControllerError):
    code = "rate_limited"
    http_status = 429
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={**(details or {}), "retry_after_s": round(retry_after_s, 3)})
        self.retry_after_s = retry_after_s


class Unavailable(ControllerError):
    code = "unavailable"
    http_status = 503
    retryable = True
