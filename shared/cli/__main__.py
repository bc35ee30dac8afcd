"""`python -m shared.cli` = `vit-suite`."""
import sys

from . import main

sys.exit(main())
