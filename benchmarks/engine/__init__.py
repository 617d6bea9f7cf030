"""The site engine's benchmark: ``python -m benchmarks engine`` (see ``run``)."""
