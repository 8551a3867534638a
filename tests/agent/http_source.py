"""A real HTTP server in a thread that serves target bytes with Range support and scripted faults.

Faults a test can switch on: cut the connection after N body bytes (once), ignore Range (answer 200),
send endless data, answer 403 for URLs whose token expired, trickle slowly. `bytes_sent` counts body
bytes actually written, so a test can check how much a resume re-downloaded.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    cut_after_bytes: int | None = None  # once: close the socket after this many body bytes
    ignore_range: bool = False
    endless: bool = False
    valid_tokens: set[str] | None = None  # when set, ?token=<t> must be in it or the answer is 403
    trickle_bytes_per_s: float | None = None


@dataclass
class Server:
    files: dict[str, bytes]
    faults: Faults = field(default_factory=Faults)
    bytes_sent: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, token: str | None = None) -> str:
        query = f"?token={token}&X-Amz-Signature=secret" if token else ""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{query}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            server.requests.append((parts.path, self.headers.get("Range")))
            f = server.faults
            if f.valid_tokens is not None:
                token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
                if token not in f.valid_tokens:
                    self._reply(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
                    return
            data = server.files.get(parts.path.lstrip("/"))
            if data is None:
                self._reply(404, b"not found")
                return
            if f.endless:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\x00" * 65536
                try:
                    for _ in range(100_000):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        with server.lock:
                            server.bytes_sent += len(chunk)
                except OSError:
                    pass
                return
            start = 0
            m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if m and not f.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    self._reply(416, b"")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self._body(memoryview(data)[start:])

        def _body(self, body: memoryview) -> None:
            f = server.faults
            limit = len(body)
            cut = False
            if f.cut_after_bytes is not None:
                limit, cut = min(limit, f.cut_after_bytes), True
                f.cut_after_bytes = None
            step = 1 << 20 if f.trickle_bytes_per_s is None else max(1, int(f.trickle_bytes_per_s / 10))
            try:
                for i in range(0, limit, step):
                    piece = body[i:min(i + step, limit)]
                    self.wfile.write(piece)
                    with server.lock:
                        server.bytes_sent += len(piece)
                    if f.trickle_bytes_per_s is not None:
                        time.sleep(0.1)
            except OSError:
                return
            if cut:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(files: dict[str, bytes], faults: Faults | None = None) -> Iterator[Server]:
    state = Server(files=files, faults=faults or Faults())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
