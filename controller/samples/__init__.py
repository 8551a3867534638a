"""Samples captured on devices for retraining: upload URLs, metadata, export.

```
 agent.capture ──POST /api/v1/device/samples/uploads──▶ service.request_uploads ──▶ samples (pending)
        │ PUT presigned URL (S3 or /artifacts)                                        │
        └──POST /api/v1/device/samples/complete──▶ service.complete_uploads ──▶ samples (uploaded)
 edgefleet samples export --model M ──▶ export.export_dataset ──▶ DIR/dataset.npz + manifest.json
```

Errors are the controller's own (`controller.errors`): `InvalidInput` for bad metadata, `Conflict` for
a sample id re-declared with another content.
"""

from __future__ import annotations
