"""Errors of sample capture; none of them ever reaches the request path.

    CaptureError(Exception)         root: the spool cannot be written or read (retry: maybe, once the
    │                               disk has room)
    └── UploadError                 the controller or the object store refused or was unreachable
        │                           (retry: yes, on the next round; the sample stays spooled)
        └── UrlExpired              the presigned URL was refused (expired or bad signature):
                                    ask the controller for a fresh one (retry: yes, at once)
"""

from __future__ import annotations


class CaptureError(Exception):
    """Root of the capture errors."""


class UploadError(CaptureError):
    """An upload step failed; the sample stays in the spool for the next round."""


class UrlExpired(UploadError):
    """The object store refused the presigned URL (expired or invalid); a fresh URL will do."""
