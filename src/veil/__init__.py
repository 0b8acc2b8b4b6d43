"""veil: automatic photo anonymization (faces, people, licence plates)."""

__version__ = "0.1.0"
