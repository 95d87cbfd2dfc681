"""``python -m knowloc ...``: the command line where the ``knowloc`` script is not installed (e.g. a GPU machine
that has the sources on PYTHONPATH)."""

import sys

from knowloc.cli import main

sys.exit(main())
