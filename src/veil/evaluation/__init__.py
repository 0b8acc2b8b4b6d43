"""Scoring detectors on labelled photos (``veil eval``)."""
