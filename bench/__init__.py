"""Benchmarks of the SING synthesizer (`python -m bench.render`)."""
