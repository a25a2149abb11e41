#!/usr/bin/env python3
"""The live instrument: `python run_synth.py --help` (the same as `sing-synth play`)."""
import sys

from sing_synth.play import main

if __name__ == "__main__":
    sys.exit(main())
