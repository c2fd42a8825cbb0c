"""``python -m edgeva``: the ``edgeva`` console script."""
import sys

from edgeva.cli import main

sys.exit(main())
