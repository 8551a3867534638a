"""A client that disconnects while its request waits in the batching queue: the request is dropped
before the runtime sees it, the batch the others are in runs and answers them, and the drop is counted.

    client 0 ──▶ batch 1 (held at the session's gate)
    clients 1..8 ──▶ queue ── 2, 4, 6, 8 hang up ──▶ dropped, counted
    gate opens ──▶ batch 2 = rows 1, 3, 5, 7 only ──▶ each of them gets its own correct answer

Raw sockets, so a client "disconnects" exactly as an application that dies or times out does.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import numpy as np

from agent.server.background import BackgroundServer
from controller.sample_models import SampleModel
from tests.server.conftest import json_request, load_session, start_server
from tests.server.fakes import RecordingSession
from tests.services import wait_until


def send_infer(srv: BackgroundServer, row: np.ndarray) -> socket.socket:
    """A complete infer request on its own connection; the answer is read later (or never)."""
    body = json.dumps(json_request({"input": row[None, :].astype(np.float32)})).encode()
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    chunks = []
    with sock:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def model_state(srv: BackgroundServer) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{srv.url}/edgefleet/models/digits/stats", timeout=10).json()
    return doc


def test_requests_of_disconnected_clients_never_reach_the_runtime(digits_mlp: SampleModel) -> None:
    srv = start_server(max_batch_size=16, max_queue_requests=64, workers=1)
    session = RecordingSession(load_session(digits_mlp.path))
    rows = digits_mlp.golden.inputs[:9].astype(np.float32)
    assert len({r.tobytes() for r in rows}) == 9  # every row can be told apart in what the runtime ran
    expected = load_session(digits_mlp.path).run({"input": rows})["probabilities"]
    sockets: dict[int, socket.socket] = {}
    try:
        assert srv.models is not None
        srv.call(srv.models.swap("digits", session, "1"))
        warm_up = len(session.fed)  # the swap's own warm-up runs
        session.gate.clear()
        session.entered.clear()
        sockets[0] = send_infer(srv, rows[0])
        assert session.entered.wait(30), "the first batch never reached the runtime"
        for i in range(1, 9):
            sockets[i] = send_infer(srv, rows[i])
        wait_until(lambda: model_state(srv)["queued"] == 8, 30, message="eight requests queued")

        gone = [2, 4, 6, 8]
        for i in gone:
            sockets.pop(i).close()
        wait_until(lambda: model_state(srv)["cancelled_in_queue"] == len(gone), 30,
                   message="the server noticed the four disconnects")
        assert model_state(srv)["queued"] == 4  # their queue slots are free already
        session.gate.set()

        answers = {i: read_answer(sock) for i, sock in sockets.items()}
        sockets.clear()
    finally:
        session.gate.set()
        for sock in sockets.values():
            sock.close()
        live = httpx.get(f"{srv.url}/v2/health/live", timeout=10).status_code
        srv.stop()
    assert live == 200

    ran = np.concatenate([feeds["input"] for feeds in session.fed[warm_up:]])
    assert sorted(r.tobytes() for r in ran) == sorted(rows[i].tobytes() for i in (0, 1, 3, 5, 7))
    assert session.batch_rows[warm_up:] == [1, 4]  # the survivors still ran together, in one batch
    for i, (status, doc) in answers.items():
        assert status == 200, doc
        out = next(o for o in doc["outputs"] if o["name"] == "probabilities")
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-5, atol=1e-6)


def test_cancelled_requests_are_on_the_agent_metrics(digits_mlp: SampleModel) -> None:
    """`edgefleet_model_cancelled_in_queue_total{model}` on /metrics, from the same counter."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from agent.telemetry.prometheus import ServerModelMetrics, add_metrics_routes

    srv = start_server(max_batch_size=4, max_queue_requests=16, workers=1)
    session = RecordingSession(load_session(digits_mlp.path))
    try:
        assert srv.models is not None
        srv.call(srv.models.swap("digits", session, "1"))
        warm_up = len(session.fed)  # the swap's own warm-up runs
        session.gate.clear()
        session.entered.clear()
        first = send_infer(srv, digits_mlp.golden.inputs[0])
        assert session.entered.wait(30)
        second = send_infer(srv, digits_mlp.golden.inputs[1])
        wait_until(lambda: model_state(srv)["queued"] == 1, 30, message="the second request queued")
        second.close()
        wait_until(lambda: model_state(srv)["cancelled_in_queue"] == 1, 30, message="one disconnect noticed")
        session.gate.set()
        assert read_answer(first)[0] == 200

        async def scrape() -> str:
            app = web.Application()
            add_metrics_routes(app, models=ServerModelMetrics(srv.models, srv.loop))
            async with TestClient(TestServer(app)) as client:
                return await (await client.get("/metrics")).text()

        text = asyncio.run(scrape())
    finally:
        session.gate.set()
        srv.stop()
    assert 'edgefleet_model_cancelled_in_queue_total{model="digits"} 1' in text
    assert session.batch_rows[warm_up:] == [1]
