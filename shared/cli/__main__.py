"""`python -m shared.cli` = `vit-suite`."""
from . import main
from .common import exit_process

exit_process(main())
