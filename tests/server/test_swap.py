"""Hot swap: zero failed requests under load, every answer from exactly one version, old sessions
drained before they close, instant rollback, and a broken new version never replaces a working one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from agent.server.batching import BatchingConfig
from agent.server.errors import SwapError
from agent.server.model_server import ModelServer
from controller.sample_models import SampleModel
from tests.server.conftest import (
    binary_request,
    identity_model,
    load_session,
    parse_response,
    request,
    scaled_variant,
    start_server,
    wait_for,
)
from tests.server.fakes import RecordingSession

FACTORS = (1.0, 0.6, 0.8, 0.4)


@pytest.fixture(scope="module")
def variants(digits_mlp: SampleModel, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("variants")
    return [scaled_variant(digits_mlp, f, out / f"v{i}.onnx") for i, f in enumerate(FACTORS)]


def test_swaps_under_load_fail_nothing_and_attribute_every_answer(
        digits_mlp: SampleModel, variants: list[Path]) -> None:
    # the versions must be told apart by their answers, or attribution proves nothing: keep the
    # inputs on which every pair of versions differs clearly (saturated softmax rows do not)
    golden = digits_mlp.golden.inputs
    all_refs = [load_session(p).run({"input": golden})["probabilities"] for p in variants]
    distinct = np.ones(len(golden), bool)
    for i in range(len(all_refs)):
        for j in range(i + 1, len(all_refs)):
            distinct &= np.abs(all_refs[i] - all_refs[j]).max(axis=1) > 1e-3
    assert distinct.sum() >= 64
    x = golden[distinct][:64]
    refs = [r[distinct][:64] for r in all_refs]
    swaps_wanted, requests_wanted = 24, 5200
    srv = start_server(max_batch_size=16)
    sessions: list[RecordingSession] = []

    def version_session(k: int) -> RecordingSession:
        s = RecordingSession(load_session(variants[k % len(variants)]), name=str(k))
        sessions.append(s)
        return s

    try:
        srv.call(srv.models.swap("digits", version_session(0), "0"))
        done = 0
        failures: list[str] = []
        by_version: dict[str, int] = {}

        async def client(session: aiohttp.ClientSession, worker: int, stop: asyncio.Event) -> None:
            nonlocal done
            k = worker
            while not stop.is_set():
                i = k % 62
                k += 7
                rows = 1 + (k % 3)
                body, headers = binary_request({"input": x[i:i + rows]})
                try:
                    async with session.post(srv.url + "/v2/models/digits/infer", data=body, headers=headers) as r:
                        payload = await r.read()
                        if r.status != 200:
                            failures.append(f"{r.status}: {payload[:200]!r}")
                            continue
                        doc, outs = parse_response(payload, r.headers)
                except aiohttp.ClientError as e:
                    failures.append(repr(e))
                    continue
                version = doc["model_version"]
                expected = refs[int(version) % len(variants)][i:i + rows]
                if not np.allclose(outs["probabilities"], expected, rtol=1e-5, atol=1e-6):
                    failures.append(f"answer labelled version {version} does not match that version")
                by_version[version] = by_version.get(version, 0) + 1
                done += 1

        async def swapper(stop: asyncio.Event) -> None:
            loop = asyncio.get_running_loop()
            for k in range(1, swaps_wanted + 1):
                await wait_for(lambda k=k: done >= k * requests_wanted // (swaps_wanted + 1), timeout_s=120)
                session = await loop.run_in_executor(None, version_session, k)
                await loop.run_in_executor(None, srv.call, srv.models.swap("digits", session, str(k)))
            await wait_for(lambda: done >= requests_wanted, timeout_s=120)
            stop.set()

        async def main() -> None:
            stop = asyncio.Event()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
                await asyncio.gather(swapper(stop), *(client(session, w, stop) for w in range(16)))

        asyncio.run(main())
        assert failures == []
        assert done >= requests_wanted
        assert srv.models.model("digits").swaps == swaps_wanted + 1
        # load spanned the swaps: most versions answered something
        assert len(by_version) >= swaps_wanted // 2
        # every replaced session was closed, and none ran after it was closed
        assert all(s.closed for s in sessions[:-1]) and not sessions[-1].closed
        assert sum(s.runs_after_close for s in sessions) == 0
    finally:
        srv.stop()


def test_swap_drains_in_flight_batches_on_the_old_session(digits_mlp: SampleModel, variants: list[Path]) -> None:
    x = digits_mlp.golden.inputs[:2]

    async def main() -> None:
        # two inference workers, so a new batch can run while the old one is held
        models = ModelServer(BatchingConfig(max_batch_size=8, workers=2), drain_timeout_s=30)
        old = RecordingSession(load_session(variants[0]))
        await models.swap("digits", old, "1")
        old.gate.clear()
        old.entered.clear()
        in_flight = asyncio.create_task(models.infer("digits", None, request(x[:1])))
        await wait_for(old.entered.is_set)
        new = RecordingSession(load_session(variants[1]))
        swap = asyncio.create_task(models.swap("digits", new, "2"))
        await wait_for(lambda: models.model("digits").current is not None
                       and models.model("digits").current.version == "2")
        # new requests already go to the new version while the old batch is still running
        _, version = await models.infer("digits", None, request(x[1:2]))
        assert version.version == "2"
        assert not old.closed and not swap.done()
        old.gate.set()
        outputs, version = await in_flight
        assert version.version == "1"
        await swap
        assert old.closed and old.runs_after_close == 0
        await models.close()

    asyncio.run(main())


def test_rollback_switches_back_to_the_loaded_previous_version(digits_mlp: SampleModel,
                                                               variants: list[Path]) -> None:
    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=8))
        old = RecordingSession(load_session(variants[0]))
        v1 = await models.swap("digits", old, "1")
        new = RecordingSession(load_session(variants[1]))
        await models.swap("digits", new, "2", keep_previous=True)
        served = models.model("digits")
        assert served.previous is v1 and not old.closed
        # during probation the previous version still answers when asked by name
        _, version = await models.infer("digits", "1", request(digits_mlp.golden.inputs[:1]))
        assert version is v1
        restored = await models.rollback("digits")
        assert restored is v1 and served.current is v1 and served.previous is None
        assert new.closed and not old.closed
        with pytest.raises(SwapError, match="no previous version"):
            await models.rollback("digits")
        await models.close()

    asyncio.run(main())


def test_commit_releases_the_previous_version(variants: list[Path]) -> None:
    async def main() -> None:
        models = ModelServer()
        old = RecordingSession(load_session(variants[0]))
        await models.swap("digits", old, "1")
        await models.swap("digits", RecordingSession(load_session(variants[1])), "2", keep_previous=True)
        await models.commit("digits")
        assert old.closed and models.model("digits").previous is None
        await models.close()

    asyncio.run(main())


def test_a_version_that_fails_warm_up_never_serves(digits_mlp: SampleModel, variants: list[Path]) -> None:
    async def main() -> None:
        models = ModelServer()
        old = RecordingSession(load_session(variants[0]))
        await models.swap("digits", old, "1")
        broken = RecordingSession(load_session(variants[1]))
        broken.fail_with = "kernel exploded"
        with pytest.raises(SwapError, match="warm-up failed.*kernel exploded"):
            await models.swap("digits", broken, "2")
        assert broken.closed and not old.closed
        _, version = await models.infer("digits", None, request(digits_mlp.golden.inputs[:1]))
        assert version.version == "1"
        await models.close()

    asyncio.run(main())


def test_requests_queued_across_a_shape_change_are_rechecked(tmp_path: Path) -> None:
    three = identity_model(tmp_path / "three.onnx", [None, 3])
    four = identity_model(tmp_path / "four.onnx", [None, 4])

    async def main() -> None:
        models = ModelServer(BatchingConfig(max_batch_size=8))
        old = RecordingSession(load_session(three))
        await models.swap("m", old, "1")
        old.gate.clear()
        old.entered.clear()
        first = asyncio.create_task(models.infer("m", None, request(np.ones((1, 3), np.float32), "x")))
        await wait_for(old.entered.is_set)
        queued = asyncio.create_task(models.infer("m", None, request(np.ones((1, 3), np.float32), "x")))
        await wait_for(lambda: models.model("m").batcher.queued == 1)
        threading.Timer(0.05, old.gate.set).start()  # let the swap start while the old batch runs
        await models.swap("m", RecordingSession(load_session(four)), "2")
        assert (await first)[1].version == "1"
        from agent.server.errors import RequestError

        with pytest.raises(RequestError, match="changed to version 2"):
            await queued
        await models.close()

    asyncio.run(main())
