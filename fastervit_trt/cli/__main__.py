"""``python -m fastervit_trt.cli``: the main job, ``fastervit-export``."""

import sys

from .export import main

sys.exit(main())
