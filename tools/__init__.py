"""Dose x overlap ptychography baseline study harness."""

__version__ = "0.1.0"
