"""A tiny fleet PKI for peer TLS: a CA held by the tracker, one cert per agent.

The tracker generates (or loads) the fleet CA; an agent generates its key and a CSR locally
(the key never leaves the node), authenticates to the tracker, and gets the CSR signed. The
resulting PEMs form an ``agent.p2p.engine.FleetTLS``. Keys are ECDSA P-256: small, fast
handshakes, and supported by libtorrent's OpenSSL.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Signed certs may not outlive this; a stolen agent cert should age out.
MAX_CERT_DAYS = 825


class PKIError(ValueError):
    """A CSR or certificate is malformed or not acceptable."""


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_ca(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """Return (cert_pem, key_pem) of a new self-signed fleet CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def generate_key_and_csr(agent_id: str) -> tuple[bytes, bytes]:
    """Return (key_pem, csr_pem) for an agent; the CN is the agent id."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)]))
        .sign(key, hashes.SHA256())
    )
    return _pem_key(key), csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, days: int) -> bytes:
    """Issue an agent cert for ``csr_pem``; raise PKIError for a bad CSR or validity.

    Only the CSR's public key and CN are copied: whatever extensions the requester asked for
    are ignored, so an agent cannot obtain a CA cert.
    """
    if not 0 < days <= MAX_CERT_DAYS:
        raise PKIError(f"cert validity must be 1..{MAX_CERT_DAYS} days, got {days}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PKIError("not a PEM certificate signing request") from exc
    if not csr.is_signature_valid:
        raise PKIError("CSR signature does not match its key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not str(cns[0].value):
        raise PKIError("CSR must carry exactly one common name")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PKIError("fleet CA key must be an EC key")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(cns[0].value))]))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # libtorrent accepts a peer cert for an SSL torrent only if a SAN (or the CN)
            # matches the torrent's name; "*" makes one agent cert valid for every segment.
            x509.SubjectAlternativeName([x509.DNSName("*")]),
            critical=False,
        )
        .add_extension(
            # Peers are both TLS clients and servers of each other.
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@functools.cache
def ffdhe2048_pem() -> bytes:
    """PEM DH parameters of the RFC 7919 ffdhe2048 group, derived from its definition.

    libtorrent's in-memory cert call insists on DH parameters. Peers negotiate ECDHE (TLS 1.3)
    anyway, so these only matter for a TLS 1.2 DHE fallback; a standard, vetted group is the
    safe choice, and deriving it (p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1,
    g = 2) avoids both a slow parameter generation and a pasted constant.
    """
    guard = 64
    term = total = 1 << (1918 + guard)
    k = 1
    # e = sum(1/k!) in fixed point; the guard bits absorb the truncation of each term.
    while term:
        term //= k
        total += term
        k += 1
    p = 2**2048 - 2**1984 + ((total >> guard) + 560316) * 2**64 - 1
    # PKCS#3 DHParameter ::= SEQUENCE { prime INTEGER, base INTEGER }, DER-encoded by hand:
    # cryptography's DH module is deprecated and would warn.
    der = _der(0x30, _der_int(p) + _der_int(2))
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN DH PARAMETERS-----\n" + "\n".join(lines) + "\n-----END DH PARAMETERS-----\n"
    ).encode()


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_int(value: int) -> bytes:
    # A leading zero byte keeps a value whose top bit is set positive.
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))
