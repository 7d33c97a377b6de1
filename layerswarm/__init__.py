"""layerswarm: container image layers moved peer-to-peer across a fleet."""

__version__ = "0.1.0"
