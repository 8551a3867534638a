"""Key and secret files: written private from the first byte, checked at start-up.

A private key that another local user can read is a leaked key, and a leaked CA or director key is a
fleet-wide compromise. So the controller refuses to start when one of its secrets is readable or
writable by group/other, or owned by another user (who could swap it); the error names each file with
the mode it has and the mode it needs. Public material (certificates) is not checked.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from controller.security.errors import InsecureKeyFile

#: Files in the controller's folders that are secrets (glob patterns relative to each folder).
SECRET_PATTERNS = ("*.key", "*.secret", "private/*.pem", "mqtt.password")


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Atomic write whose temporary file already has `mode` (mkstemp creates it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_problems(path: Path, *, uid: int | None = None) -> list[str]:
    """What is wrong with one secret file's mode or owner (empty when nothing is)."""
    uid = os.geteuid() if uid is None else uid
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    problems = []
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; secrets need 0600 (chmod 600 {path})")
    if st.st_uid != uid:
        problems.append(f"{path} is owned by uid {st.st_uid}; expected the controller's uid {uid}")
    return problems


def secret_files(folders: Iterable[Path], extra_files: Iterable[Path] = ()) -> list[Path]:
    found: set[Path] = {p for p in extra_files if p.exists()}
    for folder in folders:
        if folder.is_dir():
            for pattern in SECRET_PATTERNS:
                found.update(p for p in folder.rglob(pattern) if p.is_file())
    return sorted(found)


def check_secret_files(folders: Iterable[Path], extra_files: Iterable[Path] = (), *, uid: int | None = None) -> list[Path]:
    """Raise InsecureKeyFile listing every badly protected secret; returns the files checked."""
    files = secret_files(folders, extra_files)
    problems = [problem for path in files for problem in file_problems(path, uid=uid)]
    if problems:
        raise InsecureKeyFile(problems)
    return files
