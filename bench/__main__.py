"""``python -m shopcast.bench``: the same as ``shopcast bench``."""

import sys

from shopcast.bench import main

sys.exit(main(sys.argv[1:]))
