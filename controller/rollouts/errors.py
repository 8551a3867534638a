"""Errors of the rollout engine.

::

    RolloutError                  base of this package
    ├── PlanError                 the rollout spec is invalid (waves, thresholds); fix the request
    ├── InvalidCommand            an operator action the state machine does not allow from the current
    │                             state (e.g. resume a completed rollout); no retry helps
    ├── RolloutNotFound           no rollout with that id
    └── StaleRecord               someone else saved the rollout since it was read; re-read and retry

The API layer maps them to 422, 409, 404 and 409 (retryable) respectively.
"""

from __future__ import annotations


class RolloutError(Exception):
    retryable = False


class PlanError(RolloutError):
    pass


class InvalidCommand(RolloutError):
    pass


class RolloutNotFound(RolloutError):
    pass


class StaleRecord(RolloutError):
    retryable = True
