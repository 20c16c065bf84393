"""``python -m diffusers_city.cli`` runs the ``diffusers-city`` command line."""

import sys

from . import main

sys.exit(main())
