"""``layerswarm pki``: the fleet CA and agent certificates for fleet-only, encrypted swarms.

    layerswarm pki init --dir /etc/layerswarm/pki            # once: ca.pem + ca-key.pem (0600)
    layerswarm pki issue --dir /etc/layerswarm/pki --name node-17 --out /etc/layerswarm/node-17
    layerswarm agent --peer-ca-file DIR/ca.pem --peer-cert-file DIR/agent.pem \
        --peer-key-file DIR/agent-key.pem

Keys are written with mode 0600 and never printed. Certificates are short-lived by default
(90 days): there is no revocation list, so rotation is how a node leaves the fleet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.p2p.pki import PKIError, generate_ca, generate_key_and_csr, sign_csr
from core import durable


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pki_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="create a new fleet CA (ca.pem, ca-key.pem) in --dir")
    init.add_argument("--dir", type=Path, required=True, help="directory for the CA files")
    init.add_argument("--name", default="layerswarm fleet CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650, help="CA validity in days")
    issue = sub.add_parser("issue", help="issue an agent certificate signed by the fleet CA")
    issue.add_argument("--dir", type=Path, required=True, help="directory holding the CA")
    issue.add_argument("--name", required=True, help="the agent's name (certificate CN)")
    issue.add_argument(
        "--out", type=Path, required=True, help="directory for agent.pem, agent-key.pem, ca.pem"
    )
    issue.add_argument("--days", type=int, default=90, help="certificate validity in days")


def _write(path: Path, data: bytes, mode: int) -> None:
    durable.write(path, data, mode=mode)


def run(args: argparse.Namespace) -> int:
    try:
        if args.pki_command == "init":
            args.dir.mkdir(parents=True, exist_ok=True)
            if (args.dir / "ca-key.pem").exists():
                print(
                    f"layerswarm pki: {args.dir}/ca-key.pem exists; not replacing the fleet CA",
                    file=sys.stderr,
                )
                return 1
            cert, key = generate_ca(args.name, days=args.days)
            _write(args.dir / "ca-key.pem", key, 0o600)
            _write(args.dir / "ca.pem", cert, 0o644)
            print(f"fleet CA written to {args.dir}/ca.pem (key: ca-key.pem, keep it secret)")
            return 0
        ca_cert = (args.dir / "ca.pem").read_bytes()
        ca_key = (args.dir / "ca-key.pem").read_bytes()
        key, csr = generate_key_and_csr(args.name)
        cert = sign_csr(ca_cert, ca_key, csr, args.days)
        args.out.mkdir(parents=True, exist_ok=True)
        _write(args.out / "agent-key.pem", key, 0o600)
        _write(args.out / "agent.pem", cert, 0o644)
        _write(args.out / "ca.pem", ca_cert, 0o644)
        print(
            f"certificate for {args.name} written to {args.out} (agent.pem, agent-key.pem, ca.pem)"
        )
        return 0
    except OSError as exc:
        print(f"layerswarm pki: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except PKIError as exc:
        print(f"layerswarm pki: {exc}", file=sys.stderr)
        return 1
