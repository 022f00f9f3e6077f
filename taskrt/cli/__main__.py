"""``python -m taskrt.cli``: the ``taskrt`` command line, as ``python -m taskrt``."""

from .dispatch import main

if __name__ == "__main__":
    raise SystemExit(main())
