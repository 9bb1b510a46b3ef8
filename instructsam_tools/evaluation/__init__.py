"""Evaluation: metrics (metrics.py is the public API) and reports (report.py)."""
