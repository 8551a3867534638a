"""Token-bucket rate limiting for the public enrollment endpoint.

Enrollment is the one route reachable without an operator token, so it is where guessing tokens or
flooding the CA would happen. Buckets are kept per client key (the peer address) plus one global
bucket; the clock is injected so tests drive it without sleeping. State is per replica: behind N
replicas the effective limit is N times the setting, which is fine for a brake on abuse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.errors import RateLimited

_MAX_TRACKED_CLIENTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        global_rate_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._global_rate_per_s = global_rate_per_s or rate_per_s * 20
        self._global_burst = self._burst * 20
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._global = _Bucket(self._global_burst, clock())

    @staticmethod
    def _take(bucket: _Bucket, now_s: float, rate_per_s: float, burst: float) -> float:
        """Refill, then take one token; returns 0 when allowed, else seconds until one is available."""
        bucket.tokens = min(burst, bucket.tokens + (now_s - bucket.updated_s) * rate_per_s)
        bucket.updated_s = now_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate_per_s

    def check(self, client_key: str) -> None:
        """Count one attempt by `client_key`; raises RateLimited when over the limit."""
        with self._lock:
            now_s = self._clock()
            if len(self._buckets) > _MAX_TRACKED_CLIENTS:
                # Forget idle clients: a full bucket carries no information.
                full_after_s = self._burst / self._rate_per_s
                self._buckets = {k: b for k, b in self._buckets.items() if now_s - b.updated_s < full_after_s}
            bucket = self._buckets.setdefault(client_key, _Bucket(self._burst, now_s))
            wait_s = self._take(bucket, now_s, self._rate_per_s, self._burst)
            if wait_s > 0:
                raise RateLimited(f"too many enrollment attempts from {client_key}", retry_after_s=wait_s)
            wait_s = self._take(self._global, now_s, self._global_rate_per_s, self._global_burst)
            if wait_s > 0:
                bucket.tokens += 1.0  # the client did not get through; do not charge it
                raise RateLimited("too many enrollment attempts in total", retry_after_s=wait_s)
