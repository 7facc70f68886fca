"""``python -m tether_client`` is the ``tether`` CLI."""

import sys

from .cli import main

sys.exit(main())
