"""What the agent and the tracker share, and nothing else: the lowest layer.

Settings and ConfigError, serving a daemon, failure causes, log redaction, digest rules, the
wire model between agents and the tracker, the tracker's errors and the tracker clients.
Nothing here imports agent, tracker or layerswarm (import-linter checks it).
"""
