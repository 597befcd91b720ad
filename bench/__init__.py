"""Benchmarks (`make bench`): they measure, tests judge. Each section returns rows of numbers."""
