"""`python -m miro_runtime.daemon`: the `mirod` command."""

import sys

from miro_runtime.daemon.main import main

sys.exit(main())
