import sys

from sing_synth.demo import DEMO_PATH, make_demo

print(make_demo(sys.argv[1] if len(sys.argv) > 1 else DEMO_PATH))
