from __future__ import annotations

# The agent fixtures are shared with tests/agent: security tests drive the same real agents.
from tests.agent.conftest import agent_factory, agent_proc  # noqa: F401 (re-exported fixtures)
