"""Sample capture for retraining: keep some inference rows per the assignment's policy, upload them.

```
 inference batch ─▶ SampleCapturer.observe ─▶ policy.decide (reason, hourly/daily budgets, off switch)
                                                 │ kept rows (writer thread, bounded queue)
                                                 ▼
                                   CaptureSpool (disk, byte bound: oldest dropped + counted)
                                                 │ SampleUploader.upload_round
                                                 ▼
   controller: POST …/device/samples/uploads ─▶ presigned PUT (S3 or /artifacts) ─▶ POST …/complete
                     ▲ 403 on PUT (expired URL) → fresh URL, PUT again
```

Modules: `policy` (pure), `spool`, `capturer` (imports numpy: load it only with a model), `uploader`.
Errors: see `agent.capture.errors` (CaptureError ─ UploadError ─ UrlExpired).
"""

from __future__ import annotations

from agent.capture.errors import CaptureError, UploadError, UrlExpired
from agent.capture.policy import CaptureBudget, Decision, decide
from agent.capture.spool import CaptureSpool, SampleMeta
from agent.capture.uploader import HttpControllerApi, HttpObjectPut, SampleUploader

__all__ = [
    "CaptureBudget",
    "CaptureError",
    "CaptureSpool",
    "Decision",
    "HttpControllerApi",
    "HttpObjectPut",
    "SampleMeta",
    "SampleUploader",
    "UploadError",
    "UrlExpired",
    "decide",
]
