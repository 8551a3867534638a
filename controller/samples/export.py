"""Export captured samples as a training dataset: one `dataset.npz` plus a `manifest.json`.

Each sample object is an `.npz` written by the agent (`agent.capture.spool`): arrays named
`input.<tensor>` and `output.<tensor>`, each holding one row (leading dimension 1). The export stacks
the rows of all samples whose tensors have the same names, shapes and dtypes as the first one:

    DIR/dataset.npz      input.<name>: (N, …)   output.<name>: (N, …)
    DIR/manifest.json    {"schema": 1, "model", "since", "count", "tensors": {name: {shape, dtype}},
                          "samples": [{row index, device, version, variant, reason, confidence, …}],
                          "skipped": [{sample_id, reason}]}

Sample objects come from devices, so they are read with `allow_pickle=False`, checked against the
size and hash recorded at completion, and any that does not fit is listed under `skipped` rather than
aborting the export. Files are written to temporary names and renamed, so a half-written dataset is
never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from controller.samples.service import list_samples, row_dict

MAX_TENSORS = 16


def _arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        names = list(npz.files)
        if not names or len(names) > MAX_TENSORS:
            raise ValueError(f"expected 1..{MAX_TENSORS} arrays, got {len(names)}")
        arrays = {name: npz[name] for name in names}
    for name, array in arrays.items():
        if not (name.startswith("input.") or name.startswith("output.")):
            raise ValueError(f"unexpected array {name[:60]!r}")
        if array.ndim < 1 or array.shape[0] != 1 or array.dtype.kind not in "fiub":
            raise ValueError(f"array {name} must be one numeric row, got {array.dtype} {array.shape}")
    return arrays


def export_dataset(db: Session, store: Any, model: str, out_dir: Path, since: datetime | None = None,
                   limit: int = 100_000) -> dict[str, Any]:
    """Write the dataset for `model` (samples captured at or after `since`); returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list[np.ndarray]] = {}
    layout: dict[str, tuple[tuple[int, ...], str]] | None = None
    samples: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for row in list_samples(db, model=model, since=since, limit=limit):
        try:
            data = store.read_bytes(row.object_key)
            if hashlib.sha256(data).hexdigest() != row.sha256:
                raise ValueError("stored object does not match its recorded SHA-256")
            arrays = _arrays(data)
        except Exception as e:  # noqa: BLE001 - one bad sample must not stop the export
            skipped.append({"sample_id": row.sample_id, "device_id": row.device_id, "reason": str(e)[:200]})
            continue
        this_layout = {name: (a.shape[1:], a.dtype.str) for name, a in arrays.items()}
        if layout is None:
            layout = this_layout
        if this_layout != layout:
            skipped.append({"sample_id": row.sample_id, "device_id": row.device_id,
                            "reason": "tensor names, shapes or dtypes differ from the dataset's"})
            continue
        for name, array in arrays.items():
            columns.setdefault(name, []).append(array)
        samples.append({"index": len(samples), **row_dict(row)})
    stacked = {name: np.concatenate(parts, axis=0) for name, parts in columns.items()}
    manifest = {
        "schema": 1, "model": model, "since": since.isoformat() if since else None, "count": len(samples),
        "tensors": {name: {"shape": [-1, *shape], "dtype": dtype} for name, (shape, dtype) in (layout or {}).items()},
        "samples": samples, "skipped": skipped,
    }
    tmp = out_dir / ".dataset.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **stacked)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / "dataset.npz")
    tmp = out_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def load_dataset(out_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an exported dataset back: (arrays by name, manifest). What a training script calls."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    if manifest.get("schema") != 1:
        raise ValueError(f"unknown dataset manifest schema {manifest.get('schema')!r}")
    with np.load(out_dir / "dataset.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return arrays, manifest
