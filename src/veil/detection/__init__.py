"""Detection engine: one :class:`Detection` type for faces, people and plates."""

from veil.detection.types import TARGETS, Detection

__all__ = ["TARGETS", "Detection"]
