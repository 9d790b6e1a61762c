"""``python -m eval`` / ``torchrun --nproc_per_node N -m eval run ...``: the same CLI as ``mimo-audio eval``."""

import sys

from eval.cli import main

sys.exit(main())
