"""Same as `mrijac data subset` (see `--help`); kept here with the other data preparation scripts."""

import sys

from mrijac.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "subset", *sys.argv[1:]]))
