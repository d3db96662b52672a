"""``python -m evaluators``: see :mod:`evaluators.cli`."""

import sys

from evaluators.cli import main

sys.exit(main())
