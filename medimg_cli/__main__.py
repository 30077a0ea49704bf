"""``python -m medimg_cli ...`` is the same as ``medimg ...`` (torchrun needs a module)."""

import sys

from medimg_cli.cli import main

sys.exit(main())
