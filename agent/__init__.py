"""The node agent: a registry mirror that fetches layers from peers first, then upstream."""
