"""Director envelopes: signing an assignment, and the pure checks of its signature and root chain.

Wire form of what the controller publishes (retained) on `edgefleet/v1/<device-id>/assignment`:

```
{"schema": 1,
 "signed": {...assignment body, see manifests/assignment.py...},
 "signatures": [{"keyid": "...", "sig": "<hex ed25519 over canonical(signed)>"}],
 "director_roots": [<TUF root metadata v2>, <v3>, ...]}
```

The director's root of trust is a TUF `Root` document: its `root` role (director-root keys) signs new
root versions, its `targets` role (the online director key, threshold configurable) signs assignments.
A device pins one version at enrollment; each envelope carries the root versions after v1 so a device
that missed a rotation catches up from the envelope alone. Walking the chain is python-tuf's
`Root.verify_delegate`: version N+1 must be signed by a threshold of N's root keys and of its own.

Everything here is pure (no I/O, time passed in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securesystemslib.signer import Signature, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from manifests import assignment as assignment_doc
from manifests import canonical
from manifests.errors import Reason, TrustError

ENVELOPE_SCHEMA = 1
MAX_ENVELOPE_BYTES = 512 * 1024
MAX_ROOTS_IN_ENVELOPE = 32
MAX_SIGNATURES = 16
# In the director root, the TUF "targets" role is the key set allowed to sign assignments.
DIRECTOR_ROLE = "targets"
_ENVELOPE_FIELDS = {"schema", "signed", "signatures", "director_roots"}


@dataclass(frozen=True)
class Envelope:
    """A parsed, not yet verified envelope: the signed body's canonical bytes and the claims about it."""

    signed: dict[str, Any]
    payload: bytes
    signatures: dict[str, Signature]
    roots: tuple[Metadata[Root], ...]


def sign_envelope(
    a: assignment_doc.Assignment, signers: Sequence[Signer], director_roots: Sequence[bytes] = ()
) -> bytes:
    """Canonical envelope bytes for `a`, signed by each of `signers` (the director role's keys).

    `director_roots` are root versions after the one devices were enrolled with (passing the whole
    history is fine: devices skip versions they already trust).
    """
    assignment_doc.encode(a)  # validates: the director never signs a document devices would refuse
    return sign_body(assignment_doc.to_dict(a), signers, director_roots)


def sign_body(body: dict[str, Any], signers: Sequence[Signer], director_roots: Sequence[bytes] = ()) -> bytes:
    """Sign an arbitrary body without validating it (tests use it to build hostile, validly signed input)."""
    payload = canonical.encode(body)
    signatures = [signer.sign(payload) for signer in signers]
    roots = [Metadata[Root].from_bytes(r).to_dict() for r in director_roots]
    envelope = {
        "schema": ENVELOPE_SCHEMA,
        "signed": body,
        "signatures": [s.to_dict() for s in signatures],
        "director_roots": roots,
    }
    return canonical.encode(envelope)


def open_envelope(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse an envelope within `max_bytes`; checks structure only, trusts nothing."""
    raw = canonical.decode(data, max_bytes=max_bytes, what="assignment envelope")
    if raw.get("schema") != ENVELOPE_SCHEMA:
        raise TrustError(
            Reason.SCHEMA_UNSUPPORTED, f"envelope schema must be {ENVELOPE_SCHEMA}, got {raw.get('schema')!r}"
        )
    unknown = set(raw) - _ENVELOPE_FIELDS
    if unknown or not {"signed", "signatures"} <= set(raw):
        raise TrustError(
            Reason.MALFORMED, f"envelope must hold signed and signatures (unknown: {sorted(unknown)})"
        )
    signed = raw["signed"]
    if not isinstance(signed, dict):
        raise TrustError(Reason.MALFORMED, "envelope.signed must be an object")
    sigs = raw["signatures"]
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise TrustError(Reason.MALFORMED, f"envelope.signatures must be a list of at most {MAX_SIGNATURES}")
    signatures: dict[str, Signature] = {}
    for s in sigs:
        try:
            sig = Signature.from_dict(dict(s))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TrustError(Reason.MALFORMED, f"envelope signature is malformed: {e}") from e
        if not isinstance(sig.keyid, str) or not isinstance(sig.signature, str):
            raise TrustError(Reason.MALFORMED, "envelope signature keyid and sig must be strings")
        if sig.keyid in signatures:
            raise TrustError(Reason.MALFORMED, f"two signatures claim key {sig.keyid}")
        signatures[sig.keyid] = sig
    raw_roots = raw.get("director_roots", [])
    if not isinstance(raw_roots, list) or len(raw_roots) > MAX_ROOTS_IN_ENVELOPE:
        raise TrustError(
            Reason.MALFORMED, f"director_roots must be a list of at most {MAX_ROOTS_IN_ENVELOPE}"
        )
    roots: list[Metadata[Root]] = []
    for r in raw_roots:
        try:
            md = Metadata.from_dict(dict(r))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TrustError(Reason.DIRECTOR_ROOT_INVALID, f"director root is malformed: {e}") from e
        if not isinstance(md.signed, Root):
            raise TrustError(
                Reason.DIRECTOR_ROOT_INVALID, f"director_roots holds a {md.signed.type} document"
            )
        roots.append(md)
    return Envelope(signed, canonical.encode(signed), signatures, tuple(roots))


def advance_root(trusted: Metadata[Root], candidates: Sequence[Metadata[Root]]) -> Metadata[Root]:
    """Walk the director root chain forward from `trusted` through `candidates` (any order, extras ok).

    Each step N -> N+1 is verified by N's root role and by N+1 itself. A gap or a bad signature refuses
    the whole envelope: a device must not silently keep an old root when the director says it rotated.
    """
    by_version: dict[int, Metadata[Root]] = {}
    for md in candidates:
        if md.signed.version > trusted.signed.version:
            if md.signed.version in by_version:
                raise TrustError(
                    Reason.DIRECTOR_ROOT_INVALID, f"two director roots claim version {md.signed.version}"
                )
            by_version[md.signed.version] = md
    current = trusted
    for _ in range(len(by_version)):
        want = current.signed.version + 1
        nxt = by_version.get(want)
        if nxt is None:
            raise TrustError(
                Reason.DIRECTOR_ROOT_INVALID,
                f"director root chain has a gap: expected version {want}, got versions {sorted(by_version)}",
            )
        try:
            current.signed.verify_delegate(Root.type, nxt.signed_bytes, nxt.signatures)
            nxt.signed.verify_delegate(Root.type, nxt.signed_bytes, nxt.signatures)
        except UnsignedMetadataError as e:
            raise TrustError(
                Reason.DIRECTOR_ROOT_INVALID,
                f"director root v{want} is not signed by a threshold of v{want - 1} and v{want} "
                f"root keys: {e}",
            ) from e
        current = nxt
    return current


def check_root_fresh(root: Metadata[Root], effective_now: datetime) -> None:
    if root.signed.is_expired(effective_now):
        raise TrustError(
            Reason.EXPIRED, f"director root v{root.signed.version} expired at {root.signed.expires}"
        )


def check_signature(root: Root, env: Envelope) -> None:
    """The assignment must carry a threshold of valid signatures by the director role's keys.

    Distinguishes the three ways this fails, because they mean different things to an operator:
    no known key at all (unknown_signer: wrong director or a forged message), a known key whose
    signature does not match (bad_signature: payload edited after signing), too few (below_threshold).
    """
    role = root.get_delegated_role(DIRECTOR_ROLE)
    known = [k for k in env.signatures if k in role.keyids]
    if not known:
        raise TrustError(
            Reason.UNKNOWN_SIGNER,
            f"no signature by a director key (signed by {sorted(env.signatures) or 'nobody'})",
        )
    result = root.get_verification_result(DIRECTOR_ROLE, env.payload, env.signatures)
    if result.verified:
        return
    failed = [k for k in known if k not in result.signed]
    if failed:
        raise TrustError(
            Reason.BAD_SIGNATURE, f"signature by director key {failed[0][:16]} does not match the payload"
        )
    raise TrustError(
        Reason.BELOW_THRESHOLD,
        f"{len(result.signed)} valid director signatures, threshold {result.threshold}",
    )
