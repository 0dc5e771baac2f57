"""Allows ``python -m edgevoice``."""

import sys

from edgevoice.cli import main

sys.exit(main())
