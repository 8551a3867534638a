"""The agent-side shell around the pure verifier: loads and persists trusted state, runs python-tuf.

```
 envelope bytes ──▶ check_assignment ──▶ Updater.refresh (staging dir) ──▶ check_image_fresh
                    (pure, verify.py)     (tuf.ngclient, pluggable fetcher)    ──▶ match_targets
   check() ─────────────────────────────────────────────────────────────────▶ Verification(plan)
   commit(verification) ──▶ re-check against the state on disk ──▶ save state (version, time, metadata)
```

The trusted state lives in ONE file written atomically (temp file in the same folder, fsync, os.replace,
fsync of the folder). python-tuf's Updater works on a throw-away staging folder seeded from that state;
its results are copied into the new state only when every check passed. So a refusal at any step, or a
power cut at any moment, leaves the persisted state exactly as it was.

Two phases, because accepting an assignment raises the replay floor: once the new version is saved the
same envelope is refused as a replay, so the caller must hold the plan durably *before* that happens.
`check()` verifies and persists nothing; the caller writes the plan to its own journal, then calls
`commit()`. A crash between the two leaves the old version on disk and the plan in the caller's
journal: nothing is lost, and the worst case is verifying the same envelope twice. `verify()` is both
steps at once, for callers with nothing to persist in between.

Deliberately not here: downloading target bytes (the agent's stager does that, bounded by the signed
length and hash in the VerifiedPlan) and choosing a variant (agent/selection.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from manifests import state as state_doc
from manifests.director import MAX_ENVELOPE_BYTES
from manifests.errors import Reason, RepositoryUnavailable, TrustError
from manifests.state import IMAGE_ROLES, TrustedState
from manifests.verify import (
    CheckedAssignment,
    SignedTarget,
    VerifiedPlan,
    check_assignment,
    check_image_fresh,
    effective_floors,
    match_targets,
    next_state,
    signed_release_floors,
    signed_targets,
)


@dataclass(frozen=True)
class TrustLimits:
    """Size limits for everything fetched or received (bytes)."""

    max_envelope_bytes: int = MAX_ENVELOPE_BYTES
    max_root_bytes: int = 512 * 1024
    max_timestamp_bytes: int = 16 * 1024
    max_snapshot_bytes: int = 2 * 1024 * 1024
    max_targets_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class ImageRepoSource:
    """Where the image repository's metadata is: a base URL, and optionally the fetcher to read it with
    (default: python-tuf's urllib3 fetcher; `manifests.store.StoreFetcher` with `store:///metadata/`)."""

    metadata_base_url: str
    fetcher: FetcherInterface | None = None


@dataclass(frozen=True)
class Verification:
    """A fully verified assignment that is not accepted yet: `TrustClient.commit` persists it."""

    plan: VerifiedPlan
    checked: CheckedAssignment
    image_metadata: Mapping[str, bytes]
    image_targets: Mapping[str, SignedTarget]
    signed_floors: Mapping[str, int]
    verified_at: datetime


_STAGING_PREFIX = "tuf-staging-"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over, fsync the folder: old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _tuf_refusal(e: Exception) -> TrustError:
    """Map python-tuf's errors to reason codes (most specific first)."""
    if isinstance(e, tuf_errors.DownloadLengthMismatchError):
        return TrustError(Reason.IMAGE_OVERSIZED, f"image metadata exceeds its length limit: {e}")
    if isinstance(e, tuf_errors.DownloadError):
        return RepositoryUnavailable(f"image repository unreachable: {e!r}")
    table: tuple[tuple[type[Exception], Reason], ...] = (
        (tuf_errors.UnsignedMetadataError, Reason.IMAGE_UNSIGNED),
        (tuf_errors.ExpiredMetadataError, Reason.IMAGE_EXPIRED),
        (tuf_errors.BadVersionNumberError, Reason.IMAGE_ROLLBACK),
        (tuf_errors.LengthOrHashMismatchError, Reason.IMAGE_HASH_MISMATCH),
    )
    for cls, reason in table:
        if isinstance(e, cls):
            return TrustError(reason, f"image repository refused: {e}")
    return TrustError(Reason.IMAGE_INVALID, f"image repository refused: {e!r}")


class TrustClient:
    """Verifies director envelopes against a persisted trusted state and the image repository."""

    def __init__(
        self,
        state_path: Path | str,
        source: ImageRepoSource,
        limits: TrustLimits | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.state_path = Path(state_path)
        self.source = source
        self.limits = limits or TrustLimits()
        self.clock = clock

    @staticmethod
    def enroll(
        state_path: Path | str,
        device_id: str,
        director_root: bytes,
        image_root: bytes,
        now: datetime | None = None,
    ) -> TrustedState:
        """Pin both roots for `device_id`. Refuses to overwrite an existing state (that is a re-enrollment)."""
        path = Path(state_path)
        if path.exists():
            raise TrustError(Reason.STATE_INVALID, f"{path} exists; remove it explicitly to re-enroll")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = state_doc.enroll(device_id, director_root, image_root, now or utc_now())
        write_atomic(path, state_doc.encode(state))
        return state

    def state(self) -> TrustedState:
        try:
            return state_doc.decode(self.state_path.read_bytes())
        except FileNotFoundError as e:
            raise TrustError(
                Reason.STATE_INVALID, f"{self.state_path} is missing: device not enrolled"
            ) from e

    def _save(self, state: TrustedState) -> None:
        write_atomic(self.state_path, state_doc.encode(state))

    def verify(self, envelope: bytes) -> VerifiedPlan:
        """Run every check; on success persist the new trusted state and return the plan."""
        verification = self.check(envelope)
        self.commit(verification)
        return verification.plan

    def check(self, envelope: bytes) -> Verification:
        """Run every check against the persisted state and the image repository; persist nothing."""
        state = self.state()
        now = self.clock()
        checked = check_assignment(envelope, state, now, max_envelope_bytes=self.limits.max_envelope_bytes)
        image_metadata = self.refresh_image(state)
        check_image_fresh(image_metadata, checked.effective_now)
        image_targets = signed_targets(image_metadata["targets"])
        signed_floors = signed_release_floors(image_metadata["targets"])
        plan = match_targets(checked.assignment, image_targets, effective_floors(state.release_floors, signed_floors))
        return Verification(plan, checked, MappingProxyType(dict(image_metadata)), MappingProxyType(image_targets),
                            MappingProxyType(signed_floors), now)

    def commit(self, verification: Verification) -> None:
        """Accept a checked assignment: persist its version, the trusted time and the image metadata.

        The state on disk may have moved since `check` (another commit, a raised floor), so the checks
        that depend on it run again first; a refusal raises TrustError and leaves the file unchanged.
        """
        state = self.state()
        a = verification.checked.assignment
        if a.version <= state.assignment_version:
            raise TrustError(
                Reason.REPLAYED,
                f"assignment version {a.version} is not above the last accepted {state.assignment_version}",
            )
        match_targets(a, verification.image_targets,
                      effective_floors(state.release_floors, verification.signed_floors))
        self._save(next_state(state, verification.checked, verification.image_metadata,
                              verification.verified_at))

    def raise_release_floor(self, model: str, release_counter: int) -> None:
        """Called once a release commits: older release_counters of `model` are refused from now on."""
        self._save(self.state().with_release_floor(model, release_counter))

    def note_time(self, t: datetime) -> None:
        """Record a trusted time (e.g. from an authenticated server) so expiry checks never go back."""
        state = self.state()
        if t > state.latest_known_time:
            self._save(state.with_time(t))

    def _sweep_staging(self) -> None:
        """Remove staging folders and temp files a power cut left behind (one verifier per state file)."""
        for leftover in self.state_path.parent.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.state_path.parent.glob(f".{self.state_path.name}.*"):
            leftover.unlink(missing_ok=True)

    def refresh_image(self, state: TrustedState) -> dict[str, bytes]:
        """Run python-tuf's client workflow in a staging folder seeded from `state`; return its result.

        Nothing is persisted here: the caller decides, after its own checks, whether to keep the result.
        """
        config = UpdaterConfig(
            root_max_length=self.limits.max_root_bytes,
            timestamp_max_length=self.limits.max_timestamp_bytes,
            snapshot_max_length=self.limits.max_snapshot_bytes,
            targets_max_length=self.limits.max_targets_bytes,
        )
        self._sweep_staging()
        with tempfile.TemporaryDirectory(prefix=_STAGING_PREFIX, dir=self.state_path.parent) as tmp:
            staging = Path(tmp)
            for role in IMAGE_ROLES[1:]:
                if role in state.image_metadata:
                    (staging / f"{role}.json").write_bytes(state.image_metadata[role])
            try:
                updater = Updater(
                    str(staging),
                    self.source.metadata_base_url,
                    fetcher=self.source.fetcher,
                    config=config,
                    bootstrap=state.image_metadata["root"],
                )
                updater.refresh()
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as e:
                raise _tuf_refusal(e) from e
            except ValueError as e:  # malformed trusted root bytes raise before the Updater wraps them
                raise TrustError(Reason.STATE_INVALID, f"persisted image root is invalid: {e}") from e
            result = {"root": (staging / "root.json").read_bytes()}
            for role in IMAGE_ROLES[1:]:
                result[role] = (staging / f"{role}.json").read_bytes()
            return result
