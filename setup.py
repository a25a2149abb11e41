"""The one compiled part: the mixer's block (sing_synth/engine/_mixc.c).  Optional: without a C
compiler the package installs anyway and the mixer runs its numpy path (`Mixer(kernel=...)`)."""
import sys

from setuptools import Extension, setup

FLAGS = [] if sys.platform == "win32" else ["-O3", "-std=c99"]

setup(ext_modules=[Extension("sing_synth.engine._mixc", ["sing_synth/engine/_mixc.c"],
                             extra_compile_args=FLAGS, optional=True)])
