"""`python -m benchmark.simulator [options]`: what SimulatorProcess runs."""
import sys

from . import main

sys.exit(main())
