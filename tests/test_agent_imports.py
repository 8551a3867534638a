"""The device side imports with every server-side package missing.

A device installs only the `agent` extra. This test runs a fresh interpreter in which importing
fastapi, boto3, sqlalchemy, uvicorn, sklearn (and the other controller-only packages) raises
ImportError, then imports `agent`, `manifests` and every submodule pkgutil finds under them. A module
that reaches for a server-side package, even indirectly, fails here by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("fastapi", "boto3", "botocore", "sqlalchemy", "alembic", "uvicorn", "sklearn", "skl2onnx",
           "onnx", "typer", "rich", "psycopg", "amqtt", "controller")

_PROBE = textwrap.dedent("""\
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"server-side package {name!r} imported on the device side")
            return None

    sys.meta_path.insert(0, Block())
    imported, failed = [], {}
    for top in ("agent", "manifests"):
        package = importlib.import_module(top)
        imported.append(top)
        # walk_packages imports subpackages itself and would swallow their errors without onerror
        def record(name):
            failed[name] = traceback.format_exc(limit=-4)
        for info in pkgutil.walk_packages(package.__path__, prefix=top + ".", onerror=record):
            if info.name.endswith(".__main__"):
                continue  # importing it would run the program
            try:
                importlib.import_module(info.name)
                imported.append(info.name)
            except Exception:
                failed[info.name] = traceback.format_exc(limit=-4)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"imported": imported, "failed": failed, "leaked": leaked}))
""")


def _probe() -> dict[str, object]:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", _PROBE, ",".join(BLOCKED)], cwd=root,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_agent_and_manifests_import_without_server_side_packages() -> None:
    report = _probe()
    failed = report["failed"]
    assert isinstance(failed, dict)
    assert not failed, "device-side modules that need server-side packages:\n" + "\n".join(
        f"--- {name}\n{trace}" for name, trace in failed.items())
    assert report["leaked"] == []
    imported = report["imported"]
    assert isinstance(imported, list)
    assert {"agent", "manifests", "agent.cli"} <= set(imported)


def test_the_blocker_really_blocks() -> None:
    """The probe must notice a server-side import, or the test above proves nothing."""
    root = Path(__file__).resolve().parent.parent
    probe = _PROBE.replace('for top in ("agent", "manifests"):', 'import sqlalchemy\nfor top in ():')
    result = subprocess.run([sys.executable, "-c", probe, ",".join(BLOCKED)], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "server-side package 'sqlalchemy'" in result.stderr
