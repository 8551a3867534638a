"""The server's event loop choice: uvloop when installed, asyncio's own on request or as fallback."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from agent.server.background import BackgroundServer
from agent.server.event_loop import new_event_loop, run
from agent.server.http import ServerConfig
from controller.sample_models import SampleModel
from tests.server.conftest import binary_request, load_session, parse_response


def test_asyncio_kind_gives_the_standard_loop() -> None:
    loop = new_event_loop("asyncio")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_uvloop_kind_gives_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop", reason="needs uvloop installed (the agent extra)")
    for kind in ("uvloop", "auto"):
        loop = new_event_loop(kind)
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="event loop must be one of"):
        new_event_loop("trio")


def test_run_returns_the_result_and_cancels_leftover_tasks() -> None:
    cancelled: list[bool] = []

    async def leftover() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> int:
        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)
        return 7

    assert run(main(), "asyncio") == 7
    assert cancelled == [True]


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_background_server_serves_on_either_loop(kind: str, digits_mlp: SampleModel) -> None:
    if kind == "uvloop":
        pytest.importorskip("uvloop", reason="needs uvloop installed (the agent extra)")
    srv = BackgroundServer(ServerConfig(port=0), event_loop=kind).start()
    try:
        assert srv.models is not None
        srv.call(srv.models.swap("digits", load_session(digits_mlp.path), "1"))
        x = digits_mlp.golden.inputs[:4]
        body, headers = binary_request({"input": x})
        r = httpx.post(srv.url + "/v2/models/digits/infer", content=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        _, outs = parse_response(r.content, r.headers)
        np.testing.assert_allclose(outs["probabilities"], digits_mlp.golden.reference_outputs[:4],
                                   rtol=1e-4, atol=1e-5)
    finally:
        srv.stop()
