"""Point container runtimes at the local layerswarm agent by editing their config files.

- ``files``: the safe way to change a config file (parse first, diff, backup, atomic write).
- ``tomledit``: TOML edited in place with tomlkit, so comments and order survive.
- ``docker``, ``containerd``, ``podman``: each turns a runtime's current config into the
  desired one; pure functions over parsed data, so they are tested without touching /etc.

``layerswarm.configure`` is the command that ties them together.
"""
