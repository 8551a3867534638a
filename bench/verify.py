"""Time to verify one director assignment end to end on a warm device (headline key: `verify_ms`).

What one warm verification does: read the persisted trusted state, parse the envelope, check the
director signature, run python-tuf's refresh against the image repository (timestamp fetched; snapshot
and targets unchanged so served from the trusted state), check expiry, match the pinned targets, and
write the new state atomically with fsync. The repository holds `--releases` releases of 5 variants and
a golden set each, so the targets metadata has a realistic size.

Baseline measured in the same run: the director signature check alone (`signature_ms`).
Repository reached through an ObjectStore fetcher (`verify_ms`) and through real loopback HTTP with
python-tuf's urllib3 fetcher (`verify_http_ms`).

    .venv/bin/python bench/verify.py [--quick] [--releases N] [--iterations N]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from manifests import assignment as A
from manifests import director
from manifests.client import ImageRepoSource, TrustClient
from manifests.keyring import Keyring
from manifests.repository import ImageRepository, NewTarget
from manifests.state import decode as decode_state
from manifests.store import LocalFolderStore, StoreFetcher

VARIANTS = ("ort-fp32.onnx", "ort-int8.onnx", "ov-fp32.tar", "ov-fp16.tar", "trt-fp16.onnx")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def build(tmp: Path, releases: int) -> tuple[Keyring, ImageRepository, list[A.TargetPin]]:
    keys = Keyring.create(tmp / "keys")
    repo = ImageRepository(LocalFolderStore(tmp / "repo"), keys)
    repo.initialize()
    pins: list[A.TargetPin] = []
    for r in range(releases):
        items = [
            NewTarget(
                f"models/model{r}/1/{v}",
                f"{r}/{v}".encode() * 64,
                {
                    "kind": "variant",
                    "model": f"model{r}",
                    "version": "1",
                    "release_counter": 1,
                    "runtime": "onnxruntime",
                    "precision": "fp32",
                    "arch": "x86_64",
                    "accuracy": 0.97,
                },
            )
            for v in VARIANTS
        ]
        items.append(
            NewTarget(
                f"models/model{r}/1/golden.npz",
                b"g" * 1000,
                {"kind": "golden", "model": f"model{r}", "version": "1", "release_counter": 1},
            )
        )
        published = repo.add_targets(items)
        if r == 0:
            pins = [A.TargetPin(t.name, t.length, t.sha256) for t in published]
    return keys, repo, pins


def envelopes(keys: Keyring, pins: list[A.TargetPin], device: str, first: int, count: int) -> list[bytes]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    signers = keys.signers("director")
    return [
        director.sign_envelope(
            A.Assignment(
                device_id=device,
                version=v,
                issued_at=now,
                expires_at=now + timedelta(days=7),
                release=A.ReleaseRef("model0", "1"),
                targets=tuple(pins),
                rollout_id="bench",
            ),
            signers,
        )
        for v in range(first, first + count)
    ]


def time_verify(client: TrustClient, batch: list[bytes]) -> list[float]:
    out = []
    for env in batch:
        t = time.perf_counter()
        client.verify(env)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (well under 60 s)")
    ap.add_argument("--releases", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=300)
    args = ap.parse_args()
    iterations = 60 if args.quick else args.iterations
    releases = 20 if args.quick else args.releases

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        keys, repo, pins = build(tmp, releases)
        targets_bytes = len(repo.store.read_bytes(f"metadata/{repo.targets().signed.version}.targets.json"))
        print(
            f"image repository: {releases} releases x {len(VARIANTS) + 1} targets, "
            f"targets metadata {targets_bytes / 1024:.1f} KiB"
        )

        results: dict[str, float] = {}
        for label, source, device in (
            ("store", ImageRepoSource("store:///metadata/", StoreFetcher(repo.store)), "bench-store"),
            ("http", None, "bench-http"),
        ):
            server = None
            if source is None:
                handler = functools.partial(_Quiet, directory=str(repo.store.root))
                server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
                threading.Thread(target=server.serve_forever, daemon=True).start()
                source = ImageRepoSource(f"http://127.0.0.1:{server.server_address[1]}/metadata/")
            state_path = tmp / device / "trust.json"
            TrustClient.enroll(
                state_path, device, keys.root_history("director")[0], keys.root_history("image")[0]
            )
            client = TrustClient(state_path, source)
            batch = envelopes(keys, pins, device, 1, iterations + 1)
            cold = time_verify(client, batch[:1])[0]
            warm = time_verify(client, batch[1:])
            if server is not None:
                server.shutdown()
                server.server_close()
            med = statistics.median(warm)
            print(
                f"[{label}] cold first verify {cold:.2f} ms; warm median {med:.2f} ms, "
                f"p95 {pct(warm, 0.95):.2f} ms over {len(warm)} assignments"
            )
            results[f"{label}_cold_ms"] = round(cold, 3)
            results[f"{label}_median_ms"] = round(med, 3)
            results[f"{label}_p95_ms"] = round(pct(warm, 0.95), 3)

        # Baseline: the director signature check alone, on the same envelopes (pure, no I/O).
        state = decode_state((tmp / "bench-store" / "trust.json").read_bytes())
        from tuf.api.metadata import Metadata, Root

        root = Metadata[Root].from_bytes(state.director_root).signed
        batch = envelopes(keys, pins, "bench-store", 10_000, iterations)
        sig: list[float] = []
        for env in batch:
            t = time.perf_counter()
            director.check_signature(root, director.open_envelope(env))
            sig.append((time.perf_counter() - t) * 1000)
        sig_ms = statistics.median(sig)
        print(f"baseline: parse + director signature check alone {sig_ms:.3f} ms")
        verify_ms = results["store_median_ms"]
        print(f"verify_ms {verify_ms:.2f} = {verify_ms / sig_ms:.1f}x the signature check alone")
        figures = {
            "verify_ms": verify_ms,
            "verify_p95_ms": results["store_p95_ms"],
            "verify_http_ms": results["http_median_ms"],
            "verify_cold_ms": results["store_cold_ms"],
            "signature_ms": round(sig_ms, 4),
            "verify_over_signature_ratio": round(verify_ms / sig_ms, 1),
            "targets_metadata_kib": round(targets_bytes / 1024, 1),
            "releases": releases,
            "iterations": iterations,
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
