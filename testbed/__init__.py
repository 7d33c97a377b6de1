"""Helpers that run the real parts (registry, token issuer, clients, namespaces) for tests.

Modules: ``procs`` (start/wait/stop by PID), ``registry`` (docker-registry + access log),
``tokenissuer`` (bearer tokens), ``images`` (OCI layouts + skopeo push), ``clients`` (skopeo,
podman, containerd pulling through a mirror), ``netns`` (hosts in network namespaces).
The pytest fixtures built on them live in ``tests/conftest.py``.
"""

# Credentials the fixtures configure. Test-only secrets, never real ones.
HTPASSWD_USERS = {"alice": "alice-pw", "pusher": "pusher-pw"}
PUSHER = ("pusher", "pusher-pw")
ALICE = ("alice", "alice-pw")
BOB = ("bob", "bob-pw")
