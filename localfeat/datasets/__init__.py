"""Datasets: readers of benchmark data and training pair sources."""
