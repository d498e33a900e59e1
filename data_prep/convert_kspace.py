"""Same as `mrijac data convert kspace` (see `--help`); kept here with the other data preparation scripts."""

import sys

from mrijac.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", "kspace", *sys.argv[1:]]))
