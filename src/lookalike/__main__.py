from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":  # decode worker processes (spawn) import the main module
    sys.exit(main())
