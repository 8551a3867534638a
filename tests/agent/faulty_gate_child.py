"""Stand-ins for the gate's child process that die the ways a runtime can: `segv` or `hang`."""

from __future__ import annotations

import ctypes
import sys
import time

if __name__ == "__main__":
    if sys.argv[1] == "segv":
        ctypes.string_at(0)  # a null-pointer read, as a runtime bug on a bad model would do
    elif sys.argv[1] == "hang":
        time.sleep(3600)
