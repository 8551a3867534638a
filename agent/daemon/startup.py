"""What the daemon checks and opens before it serves: identity, trust roots, the committed model, MQTT.

Each step is a function of the config (and the slot store), so the order stays in `Daemon.start`
and nothing here keeps state. Why the committed model is not simply `current`: after a crash
during ACTIVATE/PROBATION/ROLLBACK the journal will roll back, so the model to serve is the one it
rolls back to, not the unproven one the `current` pointer may already name.
"""

from __future__ import annotations

import logging

from agent.daemon.config import DaemonConfig
from agent.daemon.errors import DaemonError
from agent.daemon.inbox import AssignmentInbox
from agent.mqtt import AgentSession, Outbox, SessionConfig
from agent.slots import FileSlotStore, ModelRef, SlotError
from agent.state import Journal, JournalError, JournalFile, State

log = logging.getLogger("agent.daemon")
_ROLLING_BACK = (State.ACTIVATE, State.PROBATION, State.ROLLBACK)


def check_identity(config: DaemonConfig) -> None:
    """Refuse to run with secrets another local user could read: they could impersonate the device."""
    from agent.enroll import identity_problems

    secrets = [p for p in (config.mqtt_key_file, config.mqtt_password_file) if p is not None]
    problems = identity_problems(config.state_dir, secrets)
    if problems:
        raise DaemonError("refusing to start: " + "; ".join(problems))


def enroll_if_needed(config: DaemonConfig) -> None:
    """Pin the trust roots on first start when root files are configured (normally `enroll` did it)."""
    c = config
    if c.trust_path.exists():
        return
    if c.trust_director_root_file is None or c.trust_image_root_file is None:
        raise DaemonError(f"device not enrolled: {c.trust_path} is missing; set trust_director_root_file "
                          "and trust_image_root_file to pin the roots on first start")
    from manifests.client import TrustClient
    from manifests.errors import TrustError

    try:
        TrustClient.enroll(c.trust_path, c.device_id, c.trust_director_root_file.read_bytes(),
                           c.trust_image_root_file.read_bytes())
    except (OSError, TrustError) as e:
        raise DaemonError(f"cannot pin the trust roots: {e}") from e
    log.info("pinned director and image roots for %s", c.device_id)


def committed_model(config: DaemonConfig, slots: FileSlotStore) -> ModelRef | None:
    """The model to serve before anything else (see the module docstring)."""
    try:
        journal = JournalFile(config.engine_root / "journal.json").load()
    except JournalError as e:
        log.error("journal unreadable (%s); serving what the current pointer names", e)
        journal = Journal()
    try:
        if journal.state in _ROLLING_BACK:
            from agent.state.codec import ref_from_json

            ref = ref_from_json(journal.rollback_to)
        else:
            ref = slots.current()
        if ref is not None and slots.has(ref.sha256) and slots.verify(ref):
            return ref
        previous = slots.previous()
        if ref is not None and previous is not None and slots.verify(previous):
            log.error("model %s fails its hash check; serving the previous one", ref.sha256)
            return previous
    except (SlotError, ValueError, TypeError) as e:
        log.error("model pointers unreadable: %s", e)
    return None


def connect(config: DaemonConfig, inbox: AssignmentInbox) -> AgentSession:
    """Start the MQTT session; it connects (and reconnects) on its own thread."""
    c = config
    session_config = SessionConfig(
        host=c.mqtt_host, port=c.mqtt_port, device_id=c.device_id, password=c.password(),
        ca_file=str(c.mqtt_ca_file) if c.mqtt_ca_file else None,
        cert_file=str(c.mqtt_cert_file) if c.mqtt_cert_file else None,
        key_file=str(c.mqtt_key_file) if c.mqtt_key_file else None,
        keepalive_s=c.mqtt_keepalive_s, reconnect_max_s=max(1.0, c.mqtt_reconnect_max_s),
        agent_version=agent_version())
    session = AgentSession(session_config, Outbox(c.outbox_dir), inbox)
    session.start()
    return session


def agent_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return None
