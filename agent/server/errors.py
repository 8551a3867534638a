"""The inference server's error tree; each error carries the HTTP status the protocol answers with.

    ServerError                    (500)
    ├── RequestError               (400) the request is malformed or does not fit the model; retry: no
    │   └── PayloadTooLargeError   (413) the body exceeds the server's limit; retry: no
    ├── ModelNotFoundError         (404) no such model or version here; retry: no
    ├── OverloadedError            (429) the model's queue is full; retry: yes, after Retry-After
    ├── UnavailableError           (503) the model is not ready or the server is stopping; retry: yes
    ├── SwapError                  (500) a new version could not be loaded or warmed; the old one
    │                                    keeps serving; retry: no (same file, same failure)
    └── ModelExecutionError        (500) the runtime failed on a batch; retry: maybe

Handlers turn these into `{"error": "<message>"}` bodies, the Open Inference Protocol's error shape.
"""

from __future__ import annotations


class ServerError(Exception):
    status = 500
    retryable = False


class RequestError(ServerError):
    status = 400


class PayloadTooLargeError(RequestError):
    status = 413


class ModelNotFoundError(ServerError):
    status = 404


class OverloadedError(ServerError):
    status = 429
    retryable = True

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(ServerError):
    status = 503
    retryable = True


class SwapError(ServerError):
    status = 500


class ModelExecutionError(ServerError):
    status = 500
    retryable = True
