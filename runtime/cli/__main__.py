"""`python -m runtime.cli` is `berth`."""

import sys

from runtime.cli import main

sys.exit(main())
