"""`python -m bertjax.cli ...`, the same as `bertjax ...`."""
import sys

from bertjax.cli import main

sys.exit(main())
