"""``python -m scaled.tools.bench SUBCOMMAND`` (see :mod:`scaled.tools.bench.cli`)."""

import sys

from scaled.tools.bench.cli import main

sys.exit(main())
