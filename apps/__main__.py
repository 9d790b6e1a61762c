"""``python -m apps`` is an alias of the ``mimo-audio`` command."""

import sys

from apps.cli import main

sys.exit(main())
