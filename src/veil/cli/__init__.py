"""The ``veil`` command line."""
