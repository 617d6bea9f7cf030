"""Benchmarks for django-avaturn: ``python -m benchmarks`` (see README, "Benchmarks")."""
