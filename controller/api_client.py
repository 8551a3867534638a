"""A small HTTP client for the controller's REST API, used by the `edgefleet` CLI.

Where the CLI finds the API and its token, first match wins:

    --url / --token options  >  EDGEFLEET_URL / EDGEFLEET_TOKEN  >  config file  >  http://127.0.0.1:8080

The config file is `$EDGEFLEET_CLI_CONFIG` or `~/.config/edgefleet/cli.toml` with `url = "..."` and
`token = "..."`; it holds a secret, so a file readable by others is refused. Built on urllib so the
CLI needs nothing beyond the standard library to talk to a controller.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiClientError(Exception):
    """The controller answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status, self.code, self.message = status, code, message


def default_config_path() -> Path:
    override = os.environ.get("EDGEFLEET_CLI_CONFIG")
    return Path(override) if override else Path.home() / ".config" / "edgefleet" / "cli.toml"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None

    @classmethod
    def resolve(
        cls, url: str | None = None, token: str | None = None, config_path: Path | None = None
    ) -> ClientConfig:
        path = config_path or default_config_path()
        file_values: dict[str, Any] = {}
        if path.is_file():
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) and "token" in path.read_text(
                encoding="utf-8"
            ):
                raise ApiClientError(
                    0, "config", f"{path} holds a token but is readable by others: chmod 600 it"
                )
            try:
                file_values = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise ApiClientError(0, "config", f"{path} is not valid TOML: {e}") from e
        return cls(
            url=(url or os.environ.get("EDGEFLEET_URL") or file_values.get("url") or DEFAULT_URL).rstrip("/"),
            token=token or os.environ.get("EDGEFLEET_TOKEN") or file_values.get("token"),
        )


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = f"edgefleet-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ApiClient:
    def __init__(self, config: ClientConfig, *, timeout_s: float = 60.0) -> None:
        self.config = config
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
    ) -> Any:
        url = self.config.url + path
        if query:
            pairs = [(k, v) for k, v in query.items() if v is not None]
            expanded = [(k, item) for k, v in pairs for item in (v if isinstance(v, list) else [v])]
            url += "?" + urllib.parse.urlencode(
                [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in expanded]
            )
        headers = {"Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        data = None
        if files is not None:
            data, headers["Content-Type"] = _multipart(form or {}, files)
        elif json_body is not None:
            data, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                raw = response.read()
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                error = json.loads(raw)["error"]
                raise ApiClientError(e.code, error["code"], error["message"]) from None
            except (ValueError, KeyError, TypeError):
                raise ApiClientError(e.code, "http", raw[:300].decode("utf-8", "replace")) from None
        except urllib.error.URLError as e:
            raise ApiClientError(
                0, "unreachable", f"cannot reach the controller at {self.config.url}: {e.reason}"
            ) from e
        if not raw:
            return None
        return json.loads(raw) if "json" in kind else raw.decode("utf-8")
