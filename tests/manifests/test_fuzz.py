"""Garbage in: every corrupted envelope is refused with a TrustError (never another exception type)."""

from __future__ import annotations

import json
import random

from manifests.errors import TrustError
from manifests.state import decode as decode_state
from manifests.verify import check_assignment
from tests.manifests.world import World


def _mutations(envelope: bytes, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(300):
        data = bytearray(envelope)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out.append(bytes(data))
    doc = json.loads(envelope)
    structural = [
        {**doc, "signatures": "nope"},
        {**doc, "signatures": [1, 2]},
        {**doc, "signatures": [{"keyid": 1}]},
        {**doc, "signed": []},
        {**doc, "director_roots": [{"signed": {}}]},
        {**doc, "director_roots": [1]},
        {**doc, "director_roots": [{"signed": {"_type": "timestamp"}, "signatures": []}]},
        {**doc, "schema": "1"},
        {k: v for k, v in doc.items() if k != "signed"},
        [],
        "x",
        1,
        None,
    ]
    out += [json.dumps(s).encode() for s in structural]
    out += [b"", b"{", b"\x00" * 10, envelope[: len(envelope) // 2]]
    return out


def test_corrupted_envelopes_only_raise_trust_errors(world: World) -> None:
    envelope = world.sign(world.assignment(world.publish()))
    state = decode_state(world.state_bytes())
    now = world.clock()
    rng = random.Random(20261124)
    original = check_assignment(envelope, state, now).assignment
    refused = 0
    for data in _mutations(envelope, rng):
        try:
            result = check_assignment(data, state, now)
        except TrustError:
            refused += 1
            continue
        # A flip that still verifies (e.g. hex case in a signature) must not change what was signed.
        assert result.assignment == original
    assert refused >= 300
