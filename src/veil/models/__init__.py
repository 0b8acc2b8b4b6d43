"""Model store: declarative records of registry-packaged weights, fetched, checked and cached."""

from veil.models.registry import MODELS, get_spec
from veil.models.spec import ModelSpec, SourceFile
from veil.models.store import ModelStore, default_store

__all__ = ["MODELS", "ModelSpec", "ModelStore", "SourceFile", "default_store", "get_spec"]
