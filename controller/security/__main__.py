"""`python -m controller.security <command>`: the security steps the playbooks run.

    broker-files  --ca-dir D --out D --host H… [--bridge-password-file F]  broker TLS + conf + ACL
    crl           --api-url U --token-file F --ca-file F --out F [--reload CMD]  refresh the broker CRL
    check-keys    --state-dir D                                             key-file modes/owners

Each prints one JSON line describing what it did and exits non-zero with a message on failure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from controller.enrollment.ca import FleetCA
from controller.mqtt.mosquitto_auth import acl_file, password_file
from controller.security.broker_tls import CONTROLLER_IDENTITY, broker_conf, write_broker_tls
from controller.security.crl import fetch_crl, install_crl
from controller.security.errors import SecurityError
from controller.security.files import check_secret_files, write_private

BRIDGE_USERNAME = "edgefleet_bridge"


def _broker_files(args: argparse.Namespace) -> dict[str, object]:
    ca = FleetCA.load_or_create(args.ca_dir)
    out: Path = args.out
    tls = write_broker_tls(args.ca_dir, out, args.host, crl_pem=ca.crl_pem([]))
    acl_path = out / "acl"
    password_path = None
    controllers = [CONTROLLER_IDENTITY]
    if args.bridge_password_file is not None:
        password = args.bridge_password_file.read_text(encoding="utf-8").strip()
        if len(password) < 16:
            raise SecurityError(f"bridge password in {args.bridge_password_file} is shorter than 16 characters")
        password_path = out / "passwd"
        write_private(password_path, password_file({BRIDGE_USERNAME: password}).encode(), 0o600)
        controllers.append(BRIDGE_USERNAME)
    write_private(acl_path, acl_file(controllers).encode(), 0o644)
    conf_path = out / "mosquitto.conf"
    conf = broker_conf(
        tls,
        acl_path=acl_path,
        password_path=password_path,
        device_port=args.device_port,
        device_bind_address=args.bind_address,
        local_port=args.local_port if password_path is not None else None,
        local_bind_address=args.local_bind_address,
        max_packet_bytes=args.max_packet_bytes,
        persistence_dir=args.persistence_dir,
    )
    write_private(conf_path, conf.encode(), 0o644)
    return {"conf": str(conf_path), "acl": str(acl_path), "cert": str(tls.cert_file), "crl": str(tls.crl_file)}


def _crl(args: argparse.Namespace) -> dict[str, object]:
    token = args.token_file.read_text(encoding="utf-8").strip()
    changed = install_crl(
        fetch_crl(args.api_url, token),
        args.ca_file.read_bytes(),
        args.out,
        reload_command=shlex.split(args.reload) if args.reload else None,
    )
    return {"crl": str(args.out), "changed": changed}


def _check_keys(args: argparse.Namespace) -> dict[str, object]:
    state: Path = args.state_dir
    files = check_secret_files([state / "ca", state / "keys", state / "identity"], [state / "presign.key"])
    return {"checked": [str(p) for p in files]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m controller.security")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("broker-files", help="broker certificate, CRL, Mosquitto conf and ACL from the fleet CA")
    p.add_argument("--ca-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host", action="append", required=True, help="broker DNS name or address (repeat)")
    p.add_argument("--device-port", type=int, default=8883)
    p.add_argument("--bind-address", default="0.0.0.0")
    p.add_argument("--local-port", type=int, default=1883, help="loopback listener for the controller bridge")
    p.add_argument("--local-bind-address", default="127.0.0.1", help="address of the bridge's listener")
    p.add_argument("--bridge-password-file", type=Path)
    p.add_argument("--max-packet-bytes", type=int, default=256 * 1024)
    p.add_argument("--persistence-dir", type=Path)
    p.set_defaults(handler=_broker_files)
    p = sub.add_parser("crl", help="fetch the CRL from the controller and install it when it changed")
    p.add_argument("--api-url", required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--ca-file", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reload", help="command to run after a change, e.g. 'systemctl reload mosquitto'")
    p.set_defaults(handler=_crl)
    p = sub.add_parser("check-keys", help="refuse secrets readable by others")
    p.add_argument("--state-dir", type=Path, required=True)
    p.set_defaults(handler=_check_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (SecurityError, OSError, ValueError) as e:
        print(f"{args.command} failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
