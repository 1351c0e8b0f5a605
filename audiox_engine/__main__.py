"""``python -m audiox_engine ...`` is the ``audiox`` command."""

import sys

from audiox_engine.cli import main

sys.exit(main())
