"""`python -m narcissus` runs the command line."""

import sys

from narcissus.cli import main

sys.exit(main())
