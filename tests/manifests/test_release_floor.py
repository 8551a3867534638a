"""A release floor signed by the release key blocks a known-bad release on every device, and sticks."""

from __future__ import annotations

from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from manifests.errors import Reason, RepositoryWriteError, TrustError
from manifests.verify import RELEASE_FLOORS_FIELD
from tests.manifests.world import World


def refused(world: World, envelope: bytes) -> Reason:
    before = world.state_bytes()
    with pytest.raises(TrustError) as info:
        world.client.verify(envelope)
    assert world.state_bytes() == before
    return info.value.reason


def publish_floors(world: World, floors: Any, signers: Any = None) -> None:
    """Targets metadata carrying `floors` as given (no writer checks), signed by `signers`."""
    md = world.repo.targets()
    md.signed.unrecognized_fields[RELEASE_FLOORS_FIELD] = floors
    md.signed.version += 1
    md.signatures.clear()
    for s in signers if signers is not None else world.keys.signers("targets"):
        md.sign(s, append=True)
    world.publish_targets_metadata(md)


def test_signed_floor_refuses_a_lower_release_and_is_persisted_with_the_next_acceptance(world: World) -> None:
    bad = world.publish("digits", "2", counter=2)
    world.repo.set_release_floor("digits", 3)
    assert world.repo.release_floors() == {"digits": 3}
    assert refused(world, world.sign(world.assignment(bad))) is Reason.RELEASE_COUNTER_DOWNGRADE
    assert dict(world.client.state().release_floors) == {}  # a refusal persists nothing, floor included

    world.accept(world.publish("digits", "3", counter=3))
    assert dict(world.client.state().release_floors) == {"digits": 3}
    # Another model is not affected.
    world.accept(world.publish("other", "1", counter=1))


def test_persisted_floor_survives_metadata_that_drops_it(world: World) -> None:
    bad = world.publish("digits", "2", counter=2)
    world.repo.set_release_floor("digits", 3)
    world.accept(world.publish("digits", "3", counter=3))
    publish_floors(world, {})  # correctly signed, the floor gone (a mistake or a stolen release key)
    assert refused(world, world.sign(world.assignment(bad))) is Reason.RELEASE_COUNTER_DOWNGRADE


def test_floor_removed_without_the_release_key_is_refused(world: World) -> None:
    world.repo.set_release_floor("digits", 3)
    bad = world.publish("digits", "2", counter=2)
    publish_floors(world, {}, signers=[CryptoSigner.generate_ed25519()])  # an attacker's own key
    assert refused(world, world.sign(world.assignment(bad))) is Reason.IMAGE_UNSIGNED


@pytest.mark.parametrize("floors", [
    ["digits", 3], {"digits": "3"}, {"digits": -1}, {"digits": True}, {"digits": None}, {"../x": 1}, {"": 1},
])
def test_malformed_signed_floors_are_refused_not_ignored(world: World, floors: Any) -> None:
    targets = world.publish("digits", "1", counter=1)
    publish_floors(world, floors)
    assert refused(world, world.sign(world.assignment(targets))) is Reason.IMAGE_INVALID


def test_floor_at_the_counter_is_accepted_and_the_writer_never_lowers(world: World) -> None:
    world.repo.set_release_floor("digits", 2)
    world.accept(world.publish("digits", "2", counter=2))
    with pytest.raises(RepositoryWriteError, match="never lowered"):
        world.repo.set_release_floor("digits", 1)
    with pytest.raises(RepositoryWriteError, match="no model id"):
        world.repo.set_release_floor("a/b", 1)
    assert world.repo.release_floors() == {"digits": 2}
