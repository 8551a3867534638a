"""manifests/ runs on devices: it must import with every server-side package unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_manifests_imports_without_server_packages() -> None:
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        blocked = {"fastapi", "boto3", "sqlalchemy", "uvicorn", "sklearn", "typer", "rich", "onnx", "skl2onnx"}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ImportError(f"{name} is server-side")
                return None

        sys.meta_path.insert(0, Block())
        import manifests
        for mod in pkgutil.walk_packages(manifests.__path__, "manifests."):
            importlib.import_module(mod.name)
        print("ok", len(sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
