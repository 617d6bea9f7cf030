"""Benchmarks for django-avaturn: ``python -m benchmarks`` (see docs/contributing.md)."""
