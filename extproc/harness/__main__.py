"""`python -m extproc.harness echo [--host H] [--port P]`: the demo's echo upstream alone."""

import sys

from extproc.harness.upstream import main

sys.exit(main())
