"""`python -m captioner.cli`, the same as `captioner`."""

import sys

from . import main

sys.exit(main())
