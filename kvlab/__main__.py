"""``python -m kvlab ...``: the same command line as the ``kvlab`` script."""

from kvlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
