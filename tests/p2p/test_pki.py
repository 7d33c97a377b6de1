"""The fleet PKI: agent certs chain to the fleet CA, and bad requests are refused."""

from __future__ import annotations

import random

import pytest
from cryptography import x509

from agent.p2p import pki


def test_agent_cert_is_issued_by_the_ca() -> None:
    ca_cert, ca_key = pki.generate_ca("fleet")
    key, csr = pki.generate_key_and_csr("agent-7")
    cert = x509.load_pem_x509_certificate(pki.sign_csr(ca_cert, ca_key, csr, days=30))
    ca = x509.load_pem_x509_certificate(ca_cert)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=agent-7"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["*"]
    assert b"PRIVATE KEY" in key


def test_sign_csr_refuses_bad_input() -> None:
    ca_cert, ca_key = pki.generate_ca("fleet")
    _, csr = pki.generate_key_and_csr("a")
    with pytest.raises(pki.PKIError):
        pki.sign_csr(ca_cert, ca_key, b"not a csr", days=1)
    with pytest.raises(pki.PKIError):
        pki.sign_csr(ca_cert, ca_key, csr, days=0)
    with pytest.raises(pki.PKIError):
        pki.sign_csr(ca_cert, ca_key, csr, days=pki.MAX_CERT_DAYS + 1)


def _probably_prime(n: int, rng: random.Random, rounds: int = 4) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_dh_group_is_a_safe_prime() -> None:
    import base64

    pem = pki.ffdhe2048_pem().decode()
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    # SEQUENCE(len 0x82 0x01 0x08) INTEGER(0x02 0x82 0x01 0x01) 00 || 256-byte prime ...
    p = int.from_bytes(der[8 : 8 + 257], "big")
    assert p.bit_length() == 2048
    assert der[-3:] == b"\x02\x01\x02"  # generator 2
    rng = random.Random(7)
    assert _probably_prime(p, rng) and _probably_prime((p - 1) // 2, rng)
