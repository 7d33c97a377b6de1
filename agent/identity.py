"""This agent's stable identity in the fleet: an id and a secret key, kept in the data dir.

The tracker binds an agent id to the key it first heartbeats with, so another agent cannot
overwrite or withdraw this one's entries. Both survive restarts (a restarted agent must be
able to speak for its old entries before they expire). The key file is mode 0600.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from core import durable


@dataclass(frozen=True)
class Identity:
    agent_id: str
    key: str = field(repr=False)


def load_identity(data_dir: Path) -> Identity:
    id_path = data_dir / "agent-id"
    key_path = data_dir / "agent-key"
    try:
        agent_id = id_path.read_text().strip()
    except FileNotFoundError:
        host = "".join(c for c in socket.gethostname().lower() if c.isalnum() or c == "-")[:40]
        agent_id = f"{host or 'agent'}-{secrets.token_hex(4)}"
        _write(id_path, agent_id, 0o644)
    try:
        key = key_path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(32)
        _write(key_path, key, 0o600)
    return Identity(agent_id, key)


def certificate_name(cert_pem: bytes) -> str:
    """The common name of a PEM certificate (``layerswarm pki issue --name``): with a fleet
    certificate, that name is the agent's id, so a tracker that checks certificates knows
    which agent is speaking."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not str(names[0].value):
        raise ValueError("the certificate must carry exactly one common name")
    return str(names[0].value)


def _write(path: Path, text: str, mode: int) -> None:
    durable.write(path, (text + "\n").encode(), mode=mode)
