import sys

from layerswarm.cli import main

sys.exit(main(["agent", *sys.argv[1:]]))
