"""Session-wide pieces of the provisioning tests: a wheel of this checkout and a keyring."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from manifests.keyring import Keyring
from tests.provisioning.harness import build_wheel


@pytest.fixture(scope="session")
def agent_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (Path(sys.executable).parent / "ansible-playbook").exists() and shutil.which("ansible-playbook") is None:
        pytest.skip("needs ansible-core (the dev extra)")
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def provisioning_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("provisioning-keys") / "keys"
    Keyring.create(path)
    return path
