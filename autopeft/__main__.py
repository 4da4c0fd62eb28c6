"""``python -m autopeft``: the same as the ``autopeft`` command (local workers start this way)."""

import sys

from autopeft.cli.command import main

sys.exit(main())
