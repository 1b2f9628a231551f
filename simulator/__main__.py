"""``python -m simulator``: the simulated devices alone (ports and a config.json snippet)."""

import sys

from simulator.world import main

sys.exit(main())
