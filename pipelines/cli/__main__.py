"""`python -m pipelines.cli`: the `mlcycle` command."""

import sys

from pipelines.cli import main

sys.exit(main())
