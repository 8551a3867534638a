"""The agent-side shell: persisted state, transport through real HTTP, retryable vs final refusals."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator

import pytest
from tuf.api.metadata import Metadata

from manifests.client import ImageRepoSource, TrustClient
from manifests.errors import Reason, RepositoryUnavailable, TrustError
from tests.manifests.world import DEVICE_ID, World


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_repo(world: World) -> Iterator[str]:
    """Serve the world's repository folder over real HTTP on a free loopback port."""
    handler = functools.partial(_QuietHandler, directory=str(world.store.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metadata/"
    finally:
        server.shutdown()
        server.server_close()


def test_verified_plan_over_http_with_default_fetcher(world: World, http_repo: str) -> None:
    client = TrustClient(world.state_path, ImageRepoSource(http_repo), clock=world.clock)
    targets = world.publish()
    a = world.assignment(targets)
    plan = client.verify(world.sign(a))
    assert plan.assignment == a
    assert [t.name for t in plan.variants] == ["models/digits/1/ort-fp32.onnx"]
    assert plan.golden is not None and plan.golden.custom["kind"] == "golden"
    assert plan.variants[0].custom["runtime"] == "onnxruntime" and plan.variants[0].accuracy == 0.97
    state = client.state()
    assert state.assignment_version == a.version and state.device_id == DEVICE_ID
    assert (
        Metadata.from_bytes(state.image_metadata["timestamp"]).signed.version
        == world.repo.timestamp().signed.version
    )


def test_unreachable_repository_is_retryable_and_changes_nothing(world: World) -> None:
    client = TrustClient(world.state_path, ImageRepoSource("http://127.0.0.1:9/metadata/"), clock=world.clock)
    before = world.state_bytes()
    with pytest.raises(RepositoryUnavailable) as info:
        client.verify(world.sign(world.assignment(world.publish())))
    assert info.value.retryable and info.value.reason is Reason.IMAGE_UNREACHABLE
    assert world.state_bytes() == before


def test_state_survives_restart_and_second_assignment_only_fetches_news(world: World) -> None:
    world.accept()
    again = TrustClient(world.state_path, world.client.source, clock=world.clock)
    again.verify(world.sign(world.assignment(world.publish("digits", "2"))))
    assert again.state().assignment_version == 2


def test_corrupt_state_is_an_error_not_a_reset(world: World) -> None:
    world.state_path.write_bytes(b'{"schema": 1}')
    with pytest.raises(TrustError) as info:
        world.client.verify(world.sign(world.assignment(world.publish())))
    assert info.value.reason is Reason.STATE_INVALID


def test_enroll_refuses_to_overwrite(world: World) -> None:
    with pytest.raises(TrustError, match="re-enroll"):
        TrustClient.enroll(world.state_path, DEVICE_ID, b"{}", b"{}")


def test_release_floor_only_rises(world: World) -> None:
    world.client.raise_release_floor("digits", 5)
    world.client.raise_release_floor("digits", 2)
    assert world.client.state().release_floors["digits"] == 5


def test_note_time_only_moves_forward(world: World) -> None:
    t0 = world.client.state().latest_known_time
    from datetime import timedelta

    world.client.note_time(t0 - timedelta(days=1))
    assert world.client.state().latest_known_time == t0
    world.client.note_time(t0 + timedelta(days=1))
    assert world.client.state().latest_known_time == t0 + timedelta(days=1)


def test_leftovers_of_a_power_cut_are_swept(world: World) -> None:
    (world.state_path.parent / "tuf-staging-crashed").mkdir()
    (world.state_path.parent / ".trust.json.half").write_bytes(b"{")
    world.accept()
    assert world.state_folder() == ["trust.json"]
