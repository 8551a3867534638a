"""The update state machine (pure table, resume map, status from flags) and its persisted journal.

Errors:

    TransitionError   an event the table does not allow (a driver bug; retry: no)
    JournalError      the journal file is unreadable or malformed (retry: no)
"""

from __future__ import annotations

from agent.state.journal import Journal, JournalError, JournalFile, fsync_dir, write_atomic
from agent.state.machine import (
    RESUME,
    TRANSITIONS,
    Event,
    Flags,
    State,
    Status,
    TransitionError,
    final_status,
    resume_state,
    transition,
)

__all__ = [
    "RESUME",
    "TRANSITIONS",
    "Event",
    "Flags",
    "Journal",
    "JournalError",
    "JournalFile",
    "State",
    "Status",
    "TransitionError",
    "final_status",
    "fsync_dir",
    "resume_state",
    "transition",
    "write_atomic",
]
