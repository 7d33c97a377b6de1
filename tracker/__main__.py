"""``python -m tracker``: the same as ``layerswarm tracker``."""

import sys

from layerswarm.cli import main

sys.exit(main(["tracker", *sys.argv[1:]]))
