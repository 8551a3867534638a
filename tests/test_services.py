"""The test services start, serve real clients, survive crashes, enforce their access rules, and keep
their logs when a test fails."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

import tests.service_process
from tests.services import AmqttBroker, Mosquitto, Postgres, SeaweedS3, wait_until

TIMEOUT_S = 10.0


class Client:
    """A paho client (MQTT 5 unless told otherwise) that queues what it receives."""

    def __init__(self, port: int, client_id: str, *, username: str | None = None, password: str | None = None,
                 protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.paho.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.paho.on_connect = lambda _c, _u, _f, rc, _p=None: self.connack.put(rc)
        self.paho.connect("127.0.0.1", port, keepalive=30)
        self.paho.loop_start()
        self.rc = self.connack.get(timeout=TIMEOUT_S)

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.paho.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.put(codes)
        self.paho.subscribe(topic, qos)
        return granted.get(timeout=TIMEOUT_S)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> ReasonCode | None:
        acks: queue.Queue[ReasonCode] = queue.Queue()
        self.paho.on_publish = lambda _c, _u, _mid, rc, _p: acks.put(rc)
        self.paho.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(timeout=TIMEOUT_S)
        return acks.get(timeout=TIMEOUT_S) if qos else None

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*args: object, **kwargs: object) -> Client:
        made.append(Client(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_mosquitto_serves_and_keeps_retained_messages_across_a_crash(
    mosquitto: Mosquitto, clients: Callable[..., Client]
) -> None:
    publisher = clients(mosquitto.port, "pub")
    subscriber = clients(mosquitto.port, "sub")
    subscriber.subscribe("edgefleet/v1/dev-1/#")
    publisher.publish("edgefleet/v1/dev-1/assignment", b"signed-bytes", retain=True)
    assert subscriber.next_message().payload == b"signed-bytes"
    acked_at = time.time()
    db = mosquitto.data_dir / "mosquitto.db"
    # persisted by the autosave, not by a clean shutdown: the kill below gives it no chance to flush
    wait_until(lambda: db.exists() and db.stat().st_mtime > acked_at, message="mosquitto autosave")
    port = mosquitto.port
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert (mosquitto.host, mosquitto.port) == ("127.0.0.1", port)
    late = clients(mosquitto.port, "late")
    late.subscribe("edgefleet/v1/dev-1/assignment")
    message = late.next_message()
    assert (message.payload, message.retain) == (b"signed-bytes", True)


ACL = textwrap.dedent("""\
    user controller
    topic readwrite edgefleet/#

    pattern write edgefleet/v1/%u/status
    pattern read edgefleet/v1/%u/assignment
""")


def test_mosquitto_acl_and_passwords_are_enforced(
    mosquitto_factory: Callable[..., Mosquitto], clients: Callable[..., Client]
) -> None:
    broker = mosquitto_factory(users={"controller": "c-secret", "dev-1": "d1-secret", "dev-2": "d2-secret"},
                               acl=ACL)
    assert clients(broker.port, "anon").rc.is_failure
    assert clients(broker.port, "wrong", username="dev-1", password="nope").rc.is_failure

    controller = clients(broker.port, "controller", username="controller", password="c-secret")
    dev1 = clients(broker.port, "dev-1", username="dev-1", password="d1-secret")
    assert not controller.rc.is_failure and not dev1.rc.is_failure
    controller.subscribe("edgefleet/#")

    # dev-1 may not speak for dev-2; MQTT 5 says so in the PUBACK, and nothing is delivered
    denied = dev1.publish("edgefleet/v1/dev-2/status", b"forged")
    assert denied is not None and denied.is_failure
    assert dev1.publish("edgefleet/v1/dev-1/status", b"mine") == 0
    first = controller.next_message()  # the broker handles one client's packets in order
    assert (first.topic, first.payload) == ("edgefleet/v1/dev-1/status", b"mine")
    assert controller.messages.empty()

    # dev-1 cannot read dev-2's assignment: either the broker refuses the subscription or sends nothing
    codes = dev1.subscribe("edgefleet/v1/dev-2/assignment")
    dev1.subscribe("edgefleet/v1/dev-1/assignment")
    controller.publish("edgefleet/v1/dev-2/assignment", b"for dev-2")
    controller.publish("edgefleet/v1/dev-1/assignment", b"for dev-1")
    assert dev1.next_message().payload == b"for dev-1"
    assert dev1.messages.empty(), f"dev-1 read another device's assignment (suback {codes})"


def test_postgres_serves_sql_and_keeps_committed_rows_across_a_crash(postgres: Postgres) -> None:
    assert postgres.url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE devices (id text PRIMARY KEY, version int NOT NULL)"))
        conn.execute(sa.text("INSERT INTO devices VALUES ('dev-1', 7)"))
    engine.dispose()
    postgres.kill()
    postgres.start()
    engine = sa.create_engine(postgres.url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM devices WHERE id = 'dev-1'")).scalar_one() == 7
        assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == "edgefleet"
    engine.dispose()
    postgres.restart()
    with psycopg_connect(postgres) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)


def psycopg_connect(postgres: Postgres):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(postgres.dsn)


def test_each_postgres_starts_from_an_empty_database(postgres: Postgres) -> None:
    with psycopg_connect(postgres) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_s3_serves_objects_checks_signatures_and_survives_a_crash(s3: SeaweedS3) -> None:
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="models/digits/1/model.onnx", Body=b"onnx-bytes")
    assert client.get_object(Bucket=s3.bucket, Key="models/digits/1/model.onnx")["Body"].read() == b"onnx-bytes"

    url = client.generate_presigned_url("get_object", Params={"Bucket": s3.bucket, "Key": "models/digits/1/model.onnx"},
                                        ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        assert response.read() == b"onnx-bytes"
    with pytest.raises(urllib.error.HTTPError) as tampered:
        urllib.request.urlopen(url.replace("model.onnx", "other.onnx"), timeout=TIMEOUT_S)
    assert tampered.value.code == 403

    impostor = SeaweedS3(s3.workdir / "unused")
    impostor.ports, impostor.secret_key, impostor.access_key = s3.ports, "wrong-secret", s3.access_key
    with pytest.raises(ClientError) as refused:
        impostor.client().get_object(Bucket=s3.bucket, Key="models/digits/1/model.onnx")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    s3.kill()
    s3.start()
    client = s3.client()
    assert client.get_object(Bucket=s3.bucket, Key="models/digits/1/model.onnx")["Body"].read() == b"onnx-bytes"


def test_amqtt_serves_paho_clients_and_comes_back_after_a_crash(
    amqtt_broker: AmqttBroker, clients: Callable[..., Client]
) -> None:
    subscriber = clients(amqtt_broker.port, "sub", protocol=mqtt.MQTTv311)
    publisher = clients(amqtt_broker.port, "pub", protocol=mqtt.MQTTv311)
    subscriber.subscribe("edgefleet/v1/dev-1/telemetry")
    publisher.publish("edgefleet/v1/dev-1/telemetry", b'{"schema": 1}')
    assert subscriber.next_message().payload == b'{"schema": 1}'
    amqtt_broker.kill()
    amqtt_broker.start()
    again = clients(amqtt_broker.port, "again", protocol=mqtt.MQTTv311)
    again.subscribe("t")
    again.publish("t", b"back")
    assert again.next_message().payload == b"back"


def test_a_taken_port_on_first_start_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = tests.service_process.free_port
    handed_out: list[int] = []

    def first_taken() -> int:
        handed_out.append(taken if not handed_out else real_free_port())
        return handed_out[-1]

    monkeypatch.setattr(tests.service_process, "free_port", first_taken)
    broker = Mosquitto(tmp_path / "mosquitto")
    try:
        broker.start()
        assert handed_out[0] == taken and broker.port != taken and broker.running
        assert "Address already in use" in broker.log_path.read_text()
    finally:
        broker.close()
        squatter.close()


def test_a_failing_test_keeps_the_service_log(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("tests.services",)\n')
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""\
        def test_fails(mosquitto):
            assert mosquitto.running
            assert False, "deliberate"
    """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "mosquitto log (last lines)" in result.stdout
    kept = list((tmp_path / "test-artifacts").glob("*test_fails*/mosquitto-call.log"))
    assert kept and "mosquitto version" in kept[0].read_text()
