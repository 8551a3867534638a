"""Suite-wide fixtures: real services (tests/services.py) and real models (tests/models.py)."""

from __future__ import annotations

pytest_plugins = ("tests.services", "tests.models")
