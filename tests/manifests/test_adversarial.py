"""Hostile inputs from issue 2's list. Each asserts the reason code AND that persisted trust did not move."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from manifests import assignment as A
from manifests.client import TrustLimits
from manifests.errors import Reason, TrustError
from manifests.repository import ExpiryPolicy
from tests.manifests.world import World, now_s


def assert_refused(world: World, envelope: bytes, reason: Reason) -> TrustError:
    before, folder = world.state_bytes(), world.state_folder()
    with pytest.raises(TrustError) as info:
        world.client.verify(envelope)
    assert info.value.reason is reason, str(info.value)
    assert world.state_bytes() == before
    assert world.state_folder() == folder
    return info.value


def test_unknown_signer(world: World) -> None:
    a = world.assignment(world.publish())
    err = assert_refused(world, world.sign(a, [CryptoSigner.generate_ed25519()]), Reason.UNKNOWN_SIGNER)
    assert not err.retryable


def test_below_threshold(tmp_path: Path) -> None:
    world = World(tmp_path, director_keys=2, director_threshold=2)
    a = world.assignment(world.publish())
    one = world.keys.signers("director")[:1]
    assert_refused(world, world.sign(a, one), Reason.BELOW_THRESHOLD)
    world.client.verify(world.sign(a))  # both keys: accepted


def test_payload_edited_after_signing(world: World) -> None:
    a = world.assignment(world.publish())
    good = world.sign(a)
    edited = good.replace(b'"min_agreement":0.95', b'"min_agreement":0.10')
    assert edited != good
    assert_refused(world, edited, Reason.BAD_SIGNATURE)


def test_director_rotation_followed_and_old_key_refused(world: World) -> None:
    targets = world.publish()
    old = world.keys.signers("director")
    world.keys.rotate("director")
    world.client.verify(world.sign(world.assignment(targets)))  # new key + root v2 carried in the envelope
    assert Metadata.from_bytes(world.client.state().director_root).signed.version == 2
    assert_refused(world, world.sign(world.assignment(targets), old), Reason.UNKNOWN_SIGNER)


def test_director_root_forged_rotation_refused(world: World) -> None:
    targets = world.publish()
    intruder = CryptoSigner.generate_ed25519()
    root = world.keys.root("director")
    root.signed.version += 1
    # The forged v2 hands every role to the intruder, so it verifies against itself; only the check
    # against v1's root keys can refuse it.
    for role in ("root", "targets"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(intruder.public_key, role)
    root.signatures.clear()
    root.sign(intruder)
    from manifests import director

    envelope = director.sign_envelope(world.assignment(targets), [intruder], [root.to_bytes()])
    assert_refused(world, envelope, Reason.DIRECTOR_ROOT_INVALID)


def test_image_root_rotation_followed_and_old_targets_key_refused(world: World) -> None:
    world.accept()
    old_targets = world.keys.signers("targets")
    world.keys.rotate("targets")
    world.repo.publish_roots()
    world.accept(world.publish("digits", "2"))  # device walks to image root v2, new targets key
    assert b"2.root.json" not in world.state_bytes()  # state holds metadata, not file names
    # An attacker holding the retired targets key publishes a new targets version signed with it.
    current = world.repo.targets()
    current.signed.version += 1
    current.signatures.clear()
    current.sign(old_targets[0])
    world.publish_targets_metadata(current)
    a = world.assignment([t for t in world.repo.signed_targets() if t.name.startswith("models/digits/2/")])
    assert_refused(world, world.sign(a), Reason.IMAGE_UNSIGNED)


def test_director_names_hash_image_repository_never_signed(world: World) -> None:
    targets = world.publish()
    forged = tuple(replace(t, sha256="0" * 64) if t.kind == "variant" else t for t in targets)
    assert_refused(world, world.sign(world.assignment(forged)), Reason.TARGET_MISMATCH)


def test_director_names_length_image_repository_never_signed(world: World) -> None:
    targets = world.publish()
    forged = tuple(replace(t, length=t.length + 1) for t in targets)
    assert_refused(world, world.sign(world.assignment(forged)), Reason.TARGET_MISMATCH)


def test_director_names_target_image_repository_never_listed(world: World) -> None:
    targets = world.publish()
    ghost = (replace(targets[0], name="models/digits/1/ort-int8.onnx"),) + targets[1:]
    assert_refused(world, world.sign(world.assignment(ghost)), Reason.TARGET_UNKNOWN)


def test_signed_target_claiming_another_release_refused(world: World) -> None:
    """A variant the release key signed for another release cannot be passed off as this one."""
    from tests.manifests.world import variant_custom

    data = b"m" * 64
    world.publish_by_hand("models/digits/1/ort-fp32.onnx", data, variant_custom("digits", "9", 1))
    world.publish_by_hand(
        "models/digits/1/golden.npz",
        data,
        {"kind": "golden", "model": "digits", "version": "1", "release_counter": 1},
    )
    targets = tuple(t for t in world.repo.signed_targets() if t.name.startswith("models/digits/1/"))
    assert_refused(world, world.sign(world.assignment(targets)), Reason.TARGET_CUSTOM_MISMATCH)


def test_assignment_for_another_device(world: World) -> None:
    a = world.assignment(world.publish(), device_id="edge-999")
    assert_refused(world, world.sign(a), Reason.WRONG_DEVICE)


@pytest.mark.parametrize("delta", [0, -1])
def test_replayed_or_older_assignment(world: World, delta: int) -> None:
    targets = world.publish()
    world.accept(targets, version=5)
    assert_refused(world, world.sign(world.assignment(targets, version=5 + delta)), Reason.REPLAYED)


def test_expired_assignment(world: World) -> None:
    issued = world.clock() - timedelta(days=10)
    a = world.assignment(world.publish(), issued_at=issued, expires_at=issued + timedelta(days=1))
    assert_refused(world, world.sign(a), Reason.EXPIRED)


def test_clock_set_back_to_1970_cannot_revive_old_assignment(world: World) -> None:
    targets = world.publish()
    issued = world.clock()
    stale = world.assignment(
        targets, version=10, issued_at=issued - timedelta(days=2), expires_at=issued - timedelta(days=1)
    )
    world.accept(targets, version=2)  # the device has seen "now"
    world.clock.t = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert_refused(world, world.sign(stale), Reason.EXPIRED)


def test_clock_set_back_to_1970_cannot_revive_stale_image_metadata(tmp_path: Path) -> None:
    """python-tuf checks expiry against the system clock; ours uses the latest known time as well."""
    world = World(tmp_path, expiry=ExpiryPolicy(timestamp_s=3 * 86400.0))
    targets = world.publish()
    later = now_s() + timedelta(days=5)
    # A director assignment issued "later" teaches the device that time has reached at least `later`;
    # the image timestamp it holds expires in 3 days.
    world.accept(targets, issued_at=later, expires_at=later + timedelta(days=7))
    world.clock.t = datetime(1970, 1, 1, tzinfo=timezone.utc)
    a = world.assignment(targets, issued_at=later, expires_at=later + timedelta(days=7))
    err = assert_refused(world, world.sign(a), Reason.IMAGE_EXPIRED)
    assert "latest known time" in str(err)


def test_frozen_image_repository(world: World) -> None:
    targets = world.publish()
    world.accept(targets)
    # The repository (or a mirror in the middle) keeps serving a timestamp that has run out.
    world.write_timestamp(world.repo.timestamp().signed.version + 1, expires=now_s() - timedelta(hours=1))
    assert_refused(world, world.sign(world.assignment(targets)), Reason.IMAGE_EXPIRED)


def test_image_metadata_rollback_refused(world: World) -> None:
    targets = world.publish()
    world.accept(targets)
    version = world.repo.timestamp().signed.version
    world.write_timestamp(version - 1)
    assert_refused(world, world.sign(world.assignment(targets)), Reason.IMAGE_ROLLBACK)


def test_fast_forward_recovery_after_timestamp_key_rotation(world: World) -> None:
    targets = world.publish()
    honest = world.store.read_bytes("metadata/timestamp.json")
    # An attacker with the timestamp key fast-forwards the device to timestamp v1000 (e.g. on a mirror).
    world.write_timestamp(1000)
    world.accept(targets)
    world.store.write_bytes("metadata/timestamp.json", honest)
    # The repository's honest timestamp (lower version) is now refused as a rollback...
    world.repo.refresh_timestamp()
    assert world.repo.timestamp().signed.version < 1000
    assert_refused(world, world.sign(world.assignment(targets)), Reason.IMAGE_ROLLBACK)
    # ...until the timestamp key is rotated: the fast-forwarded timestamp no longer verifies and is dropped.
    world.keys.rotate("timestamp")
    world.repo.refresh_timestamp()
    world.client.verify(world.sign(world.assignment(targets)))
    ts = Metadata.from_bytes(world.client.state().image_metadata["timestamp"]).signed
    assert ts.version < 1000


def test_release_counter_downgrade(world: World) -> None:
    world.accept(world.publish("digits", "2", counter=3))
    world.client.raise_release_floor("digits", 3)
    old = world.publish("digits", "1", counter=2)
    assert_refused(world, world.sign(world.assignment(old)), Reason.RELEASE_COUNTER_DOWNGRADE)
    # Same counter (a rollback the release manager did not revoke) still passes.
    world.client.verify(world.sign(world.assignment(world.publish("digits", "1b", counter=3))))


def test_oversized_assignment(world: World) -> None:
    a = world.assignment(world.publish())
    envelope = world.sign(a) + b" " * (TrustLimits().max_envelope_bytes)
    assert_refused(world, envelope, Reason.OVERSIZED)


def test_oversized_image_metadata(tmp_path: Path) -> None:
    # A limit below python-tuf's default proves the device's own limit is the one applied.
    world = World(tmp_path, limits=TrustLimits(max_timestamp_bytes=4096))
    targets = world.publish()
    world.accept(targets)
    world.write_timestamp(world.repo.timestamp().signed.version + 1, pad_bytes=6000)
    assert_refused(world, world.sign(world.assignment(targets)), Reason.IMAGE_OVERSIZED)


@pytest.mark.parametrize(
    "name",
    [
        "models/digits/1/../../../etc/passwd",
        "/etc/passwd",
        "models/digits/../1/ort-fp32.onnx",
        "models/digits/1/..",
        "models/digits/1/sub/ort-fp32.onnx",
        "models/digits/1/a\\..\\..\\b",
        "models/digits/1/.hidden",
        "models/digits/1/a\x00b",
        "models//1/x",
    ],
)
def test_target_names_escaping_the_store(world: World, name: str) -> None:
    targets = world.publish()
    body = A.to_dict(world.assignment(targets))
    body["targets"][0]["name"] = name
    assert_refused(world, world.sign_body(body), Reason.TARGET_NAME_INVALID)


def test_director_root_rotation_without_new_keys_signature_refused(world: World) -> None:
    targets = world.publish()
    v2 = world.keys.rotate("director-root")
    new_keyids = set(v2.signed.roles["root"].keyids)
    for keyid in new_keyids:
        del v2.signatures[keyid]  # signed by v1's keys only: v2 does not vouch for itself
    from manifests import director

    envelope = director.sign_envelope(
        world.assignment(targets), world.keys.signers("director"), [v2.to_bytes()]
    )
    assert_refused(world, envelope, Reason.DIRECTOR_ROOT_INVALID)


def test_expired_director_root(world: World) -> None:
    """A director root past its expiry signs nothing, however valid the signature."""
    targets = world.publish()
    world.clock.t = world.clock() + timedelta(days=400)
    err = assert_refused(world, world.sign(world.assignment(targets)), Reason.EXPIRED)
    assert "director root" in str(err)
