"""Dynamic batching: batched results equal unbatched ones row for row, limits hold, shapes never mix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np

from agent.server.batching import BatchingConfig
from agent.server.model_server import ModelServer
from controller.sample_models import SampleModel
from tests.server.conftest import (
    binary_request,
    identity_model,
    load_session,
    parse_response,
    request,
    start_server,
    wait_for,
)
from tests.server.fakes import RecordingSession


def test_batched_rows_equal_unbatched_rows(digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs
    reference = load_session(digits_mlp.path)
    sizes = [1, 3, 2, 1, 5, 4, 1, 2, 6, 1, 3, 1, 2, 2, 1, 7, 1, 1]
    chunks, start = [], 0
    for n in sizes:
        chunks.append(x[start:start + n])
        start += n

    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=64))
        session = RecordingSession(load_session(digits_mlp.path))
        await models.swap("digits", session, "1")
        session.batch_rows.clear()
        session.gate.clear()
        session.entered.clear()
        first = asyncio.create_task(models.infer("digits", None, request(chunks[0])))
        await wait_for(session.entered.is_set)  # the first batch holds the worker at the gate
        rest = [asyncio.create_task(models.infer("digits", None, request(c))) for c in chunks[1:]]
        await wait_for(lambda: models.model("digits").batcher.queued == len(rest))
        session.gate.set()
        results = await asyncio.gather(first, *rest)
        # everything queued behind the first request ran as ONE batch
        assert session.batch_rows == [sizes[0], sum(sizes[1:])]
        for chunk, (outputs, version) in zip(chunks, results, strict=True):
            assert version.version == "1"
            got = outputs["probabilities"]
            assert got.shape == (chunk.shape[0], 10)
            np.testing.assert_allclose(got, reference.run({"input": chunk})["probabilities"], rtol=1e-5, atol=1e-6)
        await models.close()

    asyncio.run(main())


def test_max_batch_size_is_respected_and_big_requests_run_alone(digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs

    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=8))
        session = RecordingSession(load_session(digits_mlp.path))
        await models.swap("digits", session, "1")
        session.batch_rows.clear()
        session.gate.clear()
        session.entered.clear()
        sizes = [1] + [3] * 10 + [20, 2]
        tasks, start = [], 0
        for i, n in enumerate(sizes):
            tasks.append(asyncio.create_task(models.infer("digits", None, request(x[start:start + n]))))
            start += n
            if i == 0:
                await wait_for(session.entered.is_set)
        await wait_for(lambda: models.model("digits").batcher.queued == len(sizes) - 1)
        session.gate.set()
        results = await asyncio.gather(*tasks)
        assert [r[0]["probabilities"].shape[0] for r in results] == sizes
        # FIFO, whole requests, at most 8 rows unless a single request is bigger
        assert session.batch_rows == [1, 6, 6, 6, 6, 6, 20, 2]
        await models.close()

    asyncio.run(main())


def test_dynamic_inner_dims_are_never_stacked(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "ragged.onnx", [None, None])

    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=64))
        session = RecordingSession(load_session(path))
        await models.swap("ragged", session, "1")
        session.batch_rows.clear()
        session.gate.clear()
        session.entered.clear()
        feeds = [np.full((1, 3), 1, np.float32), np.full((2, 3), 2, np.float32), np.full((1, 4), 3, np.float32),
                 np.full((1, 3), 4, np.float32)]
        tasks = [asyncio.create_task(models.infer("ragged", None, request(feeds[0], "x")))]
        await wait_for(session.entered.is_set)
        tasks += [asyncio.create_task(models.infer("ragged", None, request(f, "x"))) for f in feeds[1:]]
        await wait_for(lambda: models.model("ragged").batcher.queued == 3)
        session.gate.set()
        results = await asyncio.gather(*tasks)
        for f, (outputs, _) in zip(feeds, results, strict=True):
            assert np.array_equal(outputs["y"], f)
        # [2,3] runs alone ([1,4] blocks it from joining later [1,3] rows: FIFO), then [1,4], then [1,3]
        assert session.batch_rows == [1, 2, 1, 1]
        await models.close()

    asyncio.run(main())


def test_fixed_batch_dimension_is_served_one_request_at_a_time(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "fixed.onnx", [1, 3])

    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=64))
        session = RecordingSession(load_session(path))
        await models.swap("fixed", session, "1")
        assert not models.model("fixed").current.batched
        session.batch_rows.clear()
        feeds = [np.full((1, 3), i, np.float32) for i in range(5)]
        results = await asyncio.gather(*(models.infer("fixed", None, request(f, "x")) for f in feeds))
        for f, (outputs, _) in zip(feeds, results, strict=True):
            assert np.array_equal(outputs["y"], f)
        assert session.batch_rows == [1] * 5
        await models.close()

    asyncio.run(main())


def test_queue_delay_collects_a_batch(digits_mlp: SampleModel) -> None:
    x = digits_mlp.golden.inputs

    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=5, max_queue_delay_s=5.0))
        session = RecordingSession(load_session(digits_mlp.path))
        await models.swap("digits", session, "1")
        session.batch_rows.clear()
        # five rows fill the batch: it runs at once without waiting out the (long) delay
        results = await asyncio.gather(*(models.infer("digits", None, request(x[i:i + 1])) for i in range(5)))
        assert session.batch_rows == [5]
        assert all(r[0]["probabilities"].shape == (1, 10) for r in results)
        await models.close()

    asyncio.run(main())


def test_concurrent_http_clients_get_their_own_rows(digits_mlp: SampleModel) -> None:
    """Many connections at once over HTTP: each answer is the reference for exactly its own input."""
    srv = start_server(max_batch_size=32, max_queue_delay_s=0.002)
    x = digits_mlp.golden.inputs
    reference = load_session(digits_mlp.path).run({"input": x})["probabilities"]
    try:
        srv.call(srv.models.swap("digits", load_session(digits_mlp.path), "1"))

        async def client(session: aiohttp.ClientSession, worker: int) -> int:
            checked = 0
            for k in range(15):
                i = (worker * 15 + k) % (len(x) - 3)
                rows = 1 + (i % 3)
                body, headers = binary_request({"input": x[i:i + rows]})
                async with session.post(srv.url + "/v2/models/digits/infer", data=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    _, outs = parse_response(await r.read(), r.headers)
                np.testing.assert_allclose(outs["probabilities"], reference[i:i + rows], rtol=1e-5, atol=1e-6)
                checked += 1
            return checked

        async def main() -> int:
            async with aiohttp.ClientSession() as session:
                return sum(await asyncio.gather(*(client(session, w) for w in range(24))))

        assert asyncio.run(main()) == 24 * 15
        stats = srv.models.model("digits").current.stats
        assert stats.requests == 24 * 15 and stats.errors == 0
        assert stats.batches < stats.requests  # requests were actually stacked
        # the batch-size histogram accounts for every batch and every row
        assert sum(stats.batch_rows.values()) == stats.batches
        assert sum(rows * n for rows, n in stats.batch_rows.items()) == stats.rows
        assert max(stats.batch_rows) > 1
    finally:
        srv.stop()
