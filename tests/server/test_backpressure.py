"""Overload: a full queue answers 429 with Retry-After instead of growing, the in-flight limit holds,
a failing model answers 500, and the server serves normally again afterwards."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import numpy as np

from agent.metrics.histogram import LatencyHistogram
from controller.sample_models import SampleModel
from tests.server.conftest import binary_request, json_request, load_session, parse_response, start_server
from tests.server.fakes import RecordingSession
from tests.services import wait_until


def test_full_queue_answers_429_and_recovers(digits_mlp: SampleModel) -> None:
    srv = start_server(max_batch_size=4, max_queue_requests=6)
    session = RecordingSession(load_session(digits_mlp.path))
    try:
        srv.call(srv.models.swap("digits", session, "1"))
        session.gate.clear()
        session.entered.clear()
        x = digits_mlp.golden.inputs
        body, headers = binary_request({"input": x[:1]})
        url = srv.url + "/v2/models/digits/infer"

        async def main() -> list[tuple[int, bytes, dict[str, str]]]:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as client:
                async def one() -> tuple[int, bytes, dict[str, str]]:
                    async with client.post(url, data=body, headers=headers) as r:
                        return r.status, await r.read(), dict(r.headers)

                tasks = [asyncio.create_task(one())]
                await asyncio.get_running_loop().run_in_executor(None, session.entered.wait, 10)
                tasks += [asyncio.create_task(one()) for _ in range(30)]
                # wait until the queue is full and the rest were refused, then let the model run
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: wait_until(lambda: sum(t.done() for t in tasks) >= 24, 20, message="refusals"))
                session.gate.set()
                return await asyncio.gather(*tasks)

        results = asyncio.run(main())
        statuses = [s for s, _, _ in results]
        assert statuses.count(200) == 7  # one running + six queued
        assert statuses.count(429) == 24
        refused = next(r for r in results if r[0] == 429)
        assert b"queue full" in refused[1] and int(refused[2]["Retry-After"]) >= 1
        for status, payload, hdrs in results:
            if status == 200:
                _, outs = parse_response(payload, hdrs)
                assert outs["probabilities"].shape == (1, 10)
        # after the overload the server answers normally
        r = httpx.post(url, json=json_request({"input": x[:2]}))
        assert r.status_code == 200
    finally:
        session.gate.set()
        srv.stop()


def test_in_flight_limit_answers_429(digits_mlp: SampleModel) -> None:
    srv = start_server(max_batch_size=4, max_queue_requests=100, max_concurrent_requests=3)
    session = RecordingSession(load_session(digits_mlp.path))
    try:
        srv.call(srv.models.swap("digits", session, "1"))
        session.gate.clear()
        body, headers = binary_request({"input": digits_mlp.golden.inputs[:1]})
        url = srv.url + "/v2/models/digits/infer"

        async def main() -> list[int]:
            async with aiohttp.ClientSession() as client:
                async def one() -> int:
                    async with client.post(url, data=body, headers=headers) as r:
                        await r.read()
                        return r.status

                held = [asyncio.create_task(one()) for _ in range(3)]
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: wait_until(lambda: srv.http._in_flight == 3, 10, message="3 in flight"))
                extra = await asyncio.gather(*(one() for _ in range(5)))
                session.gate.set()
                return list(extra) + list(await asyncio.gather(*held))

        statuses = asyncio.run(main())
        assert statuses[:5] == [429] * 5 and statuses[5:] == [200] * 3
    finally:
        session.gate.set()
        srv.stop()


def test_a_failing_model_answers_500_and_counts_errors(digits_mlp: SampleModel) -> None:
    srv = start_server(max_batch_size=4)
    session = RecordingSession(load_session(digits_mlp.path))
    try:
        srv.call(srv.models.swap("digits", session, "1"))
        session.fail_with = "device lost"
        url = srv.url + "/v2/models/digits/infer"
        r = httpx.post(url, json=json_request({"input": digits_mlp.golden.inputs[:1]}))
        assert r.status_code == 500 and "device lost" in r.json()["error"]
        session.fail_with = None
        r = httpx.post(url, json=json_request({"input": digits_mlp.golden.inputs[:1]}))
        assert r.status_code == 200
        stats = httpx.get(srv.url + "/edgefleet/models/digits/stats").json()["current"]["stats"]
        assert stats["requests"] == 2 and stats["errors"] == 1
        assert stats["latency"]["count"] == 1
        assert np.isfinite(stats["latency"]["sum_s"])
        # the same figures for telemetry, per model/version/variant, with a parseable histogram
        [snapshot] = srv.stats()
        assert (snapshot["model"], snapshot["version"], snapshot["role"]) == ("digits", "1", "current")
        assert snapshot["requests"] == 2 and snapshot["errors"] == 1
        assert LatencyHistogram.from_wire(snapshot["latency"]).count == 1
    finally:
        srv.stop()
