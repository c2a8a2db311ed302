"""Evaluation: metrics (pure functions), benchmark runners, result caches and plots."""
