from __future__ import annotations

# The agent and tracker fixtures are shared: security tests drive the same real daemons.
from tests.agent.conftest import agent_factory, agent_proc  # noqa: F401 (re-exported fixtures)
from tests.tracker.conftest import (  # noqa: F401 (re-exported fixtures)
    clock,
    config,
    make_app,
    redis_server,
    redis_url,
    store,
    token_file,
)
