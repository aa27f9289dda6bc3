"""`python -m bertjax ...`, the same as the `bertjax` command."""
import sys

from bertjax.cli import main

sys.exit(main())
