"""A small bearer-token issuer for distribution's ``auth: token`` mode.

It runs an aiohttp app on a free loopback port in a background thread with its own event
loop, so sync tests, async tests and other threads can all use it. ``GET /token`` checks HTTP
Basic credentials against a user table with per-repository grants and answers
``{"token": T, "access_token": T, "expires_in": 300}`` where T is an RS256 JWT whose ``x5c``
header carries the self-signed certificate the registry trusts (``rootcertbundle``).

Anonymous callers (no Authorization header) get a token with the ``anonymous`` grants (none by
default), so the registry denies them with its own error, or serves public repositories the
way Docker Hub does; wrong passwords get 401 from the issuer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import fnmatch
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class User:
    password: str
    # Repository glob (fnmatch) -> actions granted, e.g. {"private/*": {"pull"}}.
    grants: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allowed(self, repo: str, actions: list[str]) -> list[str]:
        granted: set[str] = set()
        for pattern, acts in self.grants.items():
            if fnmatch.fnmatchcase(repo, pattern):
                granted |= acts
        return [a for a in actions if a in granted or "*" in granted]


def default_users() -> dict[str, User]:
    """alice pulls private/*; bob pulls only public/*; pusher may push and pull anything."""
    return {
        "alice": User("alice-pw", {"private/*": frozenset({"pull"})}),
        "bob": User("bob-pw", {"public/*": frozenset({"pull"})}),
        "pusher": User("pusher-pw", {"*": frozenset({"pull", "push"})}),
    }


@dataclass(frozen=True)
class Issued:
    """One token request as the issuer saw it (for tests that count token fetches)."""

    user: str | None
    service: str
    scopes: tuple[str, ...]
    access: tuple[tuple[str, str, tuple[str, ...]], ...]


class TokenIssuer:
    """Issuer on ``127.0.0.1:<free port>``; ``start()`` / ``stop()`` or use as a context manager.

    ``realm`` is the URL to put in the registry config; ``cert_path`` its ``rootcertbundle``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, User] | None = None,
        anonymous: Mapping[str, frozenset[str]] | None = None,
        issuer: str = "layerswarm-test-issuer",
        expires_in: int = 300,
    ) -> None:
        self.users = dict(users) if users is not None else default_users()
        # Repository glob -> actions anyone may take without credentials.
        self.anonymous = User("", dict(anonymous or {}))
        self.issuer = issuer
        self.expires_in = expires_in
        self.issued: list[Issued] = []
        self._lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = _self_signed(self._key, issuer)
        self.cert_path = workdir / "token-root.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> TokenIssuer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(loop, started), name="token-issuer", daemon=True
        )
        self._thread.start()
        if not started.wait(15) or self.port == 0:
            raise RuntimeError("token issuer did not start within 15s")
        return self

    def _serve(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        # Binding the socket ourselves gives the port without reaching into aiohttp internals.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        loop.run_until_complete(site.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._loop = None
        self._thread = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def token_count(self, user: str | None = None) -> int:
        with self._lock:
            return sum(1 for i in self.issued if i.user == user)

    def _authenticate(self, request: web.Request) -> tuple[bool, str | None]:
        header = request.headers.get("Authorization")
        if header is None:
            return True, None
        kind, _, b64 = header.partition(" ")
        if kind.lower() != "basic":
            return False, None
        try:
            name, _, password = base64.b64decode(b64).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        user = self.users.get(name)
        if user is None or user.password != password:
            return False, None
        return True, name

    async def _token(self, request: web.Request) -> web.Response:
        ok, name = self._authenticate(request)
        if not ok:
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="token"'},
            )
        service = request.query.get("service", "")
        scopes = tuple(request.query.getall("scope", []))
        granted: list[tuple[str, str, tuple[str, ...]]] = []
        user = self.users[name] if name is not None else self.anonymous
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None:
                continue
            typ, repo, actions = parsed
            allowed = user.allowed(repo, actions) if typ == "repository" else []
            if allowed:
                granted.append((typ, repo, tuple(allowed)))
        access = [{"type": t, "name": n, "actions": list(a)} for t, n, a in granted]
        now = dt.datetime.now(dt.UTC)
        claims = {
            "iss": self.issuer,
            "aud": service,
            "sub": name or "",
            "iat": now,
            "nbf": now - dt.timedelta(seconds=5),
            "exp": now + dt.timedelta(seconds=self.expires_in),
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": [self._x5c]})
        with self._lock:
            self.issued.append(Issued(name, service, scopes, tuple(granted)))
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": now.isoformat(),
            }
        )


def _parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    # "repository:NAME:pull,push"; NAME may contain a port-less host part but never ':'.
    typ, _, rest = scope.partition(":")
    name, sep, actions = rest.rpartition(":")
    if not sep or not name:
        return None
    return typ, name, [a for a in actions.split(",") if a]


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
