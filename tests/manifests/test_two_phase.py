"""check() persists nothing; commit() persists, after re-checking what may have moved on disk since."""

from __future__ import annotations

import pytest

from manifests.errors import Reason, TrustError
from tests.manifests.world import World


def test_check_persists_nothing_and_commit_accepts(world: World) -> None:
    world.accept()
    before = world.state_bytes()
    a = world.assignment(world.publish("digits", "2", counter=2))
    envelope = world.sign(a)
    verification = world.client.check(envelope)
    assert verification.plan.assignment == a
    assert [t.name for t in verification.plan.variants] == ["models/digits/2/ort-fp32.onnx"]
    assert world.state_bytes() == before  # not accepted yet: the same envelope still verifies
    assert world.client.check(envelope).plan == verification.plan
    world.client.commit(verification)
    assert world.client.state().assignment_version == a.version
    with pytest.raises(TrustError) as info:
        world.client.check(envelope)
    assert info.value.reason is Reason.REPLAYED


def test_commit_after_a_newer_commit_is_a_replay_and_changes_nothing(world: World) -> None:
    older = world.client.check(world.sign(world.assignment(world.publish("digits", "1"))))
    newer = world.client.check(world.sign(world.assignment(world.publish("digits", "2", counter=2))))
    world.client.commit(newer)
    after_newer = world.state_bytes()
    with pytest.raises(TrustError) as info:
        world.client.commit(older)
    assert info.value.reason is Reason.REPLAYED
    assert world.state_bytes() == after_newer
    with pytest.raises(TrustError):
        world.client.commit(newer)  # committing twice is a replay too
    assert world.state_bytes() == after_newer


def test_commit_honours_a_floor_raised_after_the_check(world: World) -> None:
    verification = world.client.check(world.sign(world.assignment(world.publish("digits", "1", counter=1))))
    world.client.raise_release_floor("digits", 2)
    before = world.state_bytes()
    with pytest.raises(TrustError) as info:
        world.client.commit(verification)
    assert info.value.reason is Reason.RELEASE_COUNTER_DOWNGRADE
    assert world.state_bytes() == before


def test_commit_keeps_what_changed_on_disk_since_the_check(world: World) -> None:
    verification = world.client.check(world.sign(world.assignment(world.publish("other", "1", counter=5))))
    world.client.raise_release_floor("digits", 7)
    world.client.commit(verification)
    state = world.client.state()
    assert state.assignment_version == verification.plan.assignment.version
    assert dict(state.release_floors) == {"digits": 7}
