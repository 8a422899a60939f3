"""``python -m routenlp_ray.cli``: the ``routenlp`` command."""

import sys

from routenlp_ray.cli import main

sys.exit(main())
