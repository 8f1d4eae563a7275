"""The top layer: the ``liverank`` command line, the demo and the benchmarks."""
