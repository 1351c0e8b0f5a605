import sys

from audiox_engine.benchmarks.cli import main

sys.exit(main())
