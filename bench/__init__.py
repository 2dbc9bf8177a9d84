"""Benchmarks of cemesh; each prints its figures next to the ceiling or goal it is judged by."""
