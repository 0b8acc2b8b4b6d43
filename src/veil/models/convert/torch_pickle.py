"""Read a PyTorch ``.pt`` checkpoint without torch, and without running its code.

A checkpoint written by ``torch.save`` is a zip archive::

    <prefix>/data.pkl       pickle of the saved object (a dict for Ultralytics)
    <prefix>/data/<key>     one raw storage (tensor bytes) per key
    <prefix>/byteorder      "little" or "big" (absent in old files: little)
    <prefix>/version

``pickle`` would import and call whatever globals ``data.pkl`` names (torch, ultralytics,
and anything a hostile file puts there). :class:`_SafeUnpickler` instead resolves every
global to something inert:

* a short allow-list of harmless builtins (``set``, ``frozenset``, ``OrderedDict``...);
* veil's own re-implementations of torch's tensor rebuild functions, which turn a
  storage + offset + size + stride into a numpy array;
* for everything else a *stand-in* class (:class:`Stub`), created on the fly, that only
  records its constructor arguments and its pickled state (``__dict__``). Stand-ins of
  ``torch.nn`` / ``ultralytics`` modules thus keep ``_modules``, ``_parameters``,
  ``_buffers`` and plain attributes (``f``, ``i``, ``stride``, ``eps``...), which is
  all a converter needs to walk the network.

No code from the file is executed, so loading an untrusted checkpoint is safe; memory is
bounded too (a tensor may not hold more elements than its storage, and the archive's
declared uncompressed size is capped by ``max_bytes``).
Floating-point tensors are returned as float32 numpy arrays (fp16 storages are widened),
integer/bool tensors keep their dtype.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Stub",
    "StubRef",
    "buffers",
    "children",
    "class_name",
    "load_checkpoint",
    "params",
]


# torch storage class name -> numpy dtype of its raw bytes
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("f8"),
    "FloatStorage": np.dtype("f4"),
    "HalfStorage": np.dtype("f2"),
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
# torch.dtype names that may appear as globals (``torch float16``) for UntypedStorage files
_DTYPE_NAMES: dict[str, np.dtype] = {
    "float64": np.dtype("f8"),
    "double": np.dtype("f8"),
    "float32": np.dtype("f4"),
    "float": np.dtype("f4"),
    "float16": np.dtype("f2"),
    "half": np.dtype("f2"),
    "int64": np.dtype("i8"),
    "long": np.dtype("i8"),
    "int32": np.dtype("i4"),
    "int": np.dtype("i4"),
    "int16": np.dtype("i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}


class Stub:
    """Inert stand-in for any class named in a pickle.

    Instances record the arguments they were built with (``_stub_args``) and take their
    pickled state into ``__dict__``; nothing else happens.
    """

    _stub_module = ""
    _stub_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:  # noqa: PYI034
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # never runs foreign code
        pass

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["_stub_state"] = state
        if isinstance(slots, dict):
            self.__dict__.update(slots)

    def __getattr__(self, name: str) -> Any:
        # like nn.Module: submodules, parameters and buffers read as attributes
        d = self.__dict__
        for slot in ("_modules", "_parameters", "_buffers"):
            table = d.get(slot)
            if isinstance(table, dict) and name in table:
                return table[name]
        raise AttributeError(name)

    # pickle's APPENDS / SETITEMS may target list- or dict-like stand-ins
    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_stub_items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_stub_items", []).extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_stub_dict", {})[key] = value

    def __repr__(self) -> str:
        return f"<stub {self._stub_module}.{self._stub_name}>"


class StubRef:
    """Inert result of ``getattr(obj, name)`` inside a pickle (e.g. ``Detect.forward``)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> StubRef:
        return StubRef(self, "()")

    def __repr__(self) -> str:
        return f"<ref {self.owner!r}.{self.name}>"


class _StorageType:
    """Stand-in for ``torch.HalfStorage`` etc.: only carries the numpy dtype."""

    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.dtype = dtype


def _safe_getattr(obj: Any, name: Any, *default: Any) -> Any:
    # Never look attributes up on real objects (that could reach code); always inert.
    return StubRef(obj, str(name))


def _as_tensor(storage: np.ndarray, offset: int, size: Any, stride: Any) -> np.ndarray:
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    item = storage.dtype.itemsize
    n = int(np.prod(size)) if size else 1
    if n > max(storage.size, 1):  # overlapping (expanded) views could be a memory bomb
        raise pickle.UnpicklingError("tensor has more elements than its storage")
    if n == 0:
        arr = np.zeros(size, dtype=storage.dtype)
    else:
        last = (
            offset + sum((s - 1) * st for s, st in zip(size, stride))
            if size
            else offset
        )
        if offset < 0 or last >= storage.size or any(st < 0 for st in stride):
            raise pickle.UnpicklingError("tensor view lies outside its storage")
        arr = np.lib.stride_tricks.as_strided(
            storage[offset:],
            shape=size,
            strides=tuple(st * item for st in stride),
            writeable=False,
        )
        arr = np.array(arr, copy=True)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def _rebuild_tensor_v2(
    storage,
    storage_offset,
    size,
    stride,
    requires_grad=False,
    backward_hooks=None,
    metadata=None,
):
    return _as_tensor(storage, int(storage_offset), size, stride)


def _rebuild_tensor_v3(
    storage,
    storage_offset,
    size,
    stride,
    requires_grad,
    backward_hooks,
    dtype,
    metadata=None,
):
    if (
        isinstance(dtype, _StorageType)
        and storage.dtype == np.uint8
        and dtype.dtype != storage.dtype
    ):
        storage = storage.view(dtype.dtype)
    return _as_tensor(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if callable(func) and func in _REBUILDERS:
        return func(*args)
    return Stub()


_REBUILDERS = {
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("__builtin__", "slice"): slice,
    ("builtins", "getattr"): _safe_getattr,
    ("__builtin__", "getattr"): _safe_getattr,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(
        self, file: io.BufferedIOBase, zf: zipfile.ZipFile, prefix: str, byteorder: str
    ) -> None:
        super().__init__(file)
        self._zf = zf
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, np.ndarray] = {}
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return _StorageType(name, _DTYPE_NAMES[name])
        key = (module, name)
        cls = self._stubs.get(key)
        if cls is None:
            safe = (
                "".join(
                    c if c.isalnum() or c == "_" else "_" for c in name.split(".")[-1]
                )
                or "Stub"
            )
            cls = type(safe, (Stub,), {"_stub_module": module, "_stub_name": name})
            self._stubs[key] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        key = str(key)
        if key in self._storages:
            return self._storages[key]
        if isinstance(storage_type, _StorageType):
            dtype = storage_type.dtype
        else:  # torch.UntypedStorage: raw bytes, typed later by _rebuild_tensor_v3
            dtype = np.dtype("u1")
        try:
            raw = self._zf.read(f"{self._prefix}data/{key}")
        except KeyError as exc:
            raise pickle.UnpicklingError(f"storage {key} missing from archive") from exc
        dtype = dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        count = len(raw) // dtype.itemsize
        if numel is not None and int(numel) > count:
            raise pickle.UnpicklingError(f"storage {key} is truncated")
        arr = np.frombuffer(raw, dtype=dtype, count=count)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        self._storages[key] = arr
        return arr


def load_checkpoint(path: str | Path, max_bytes: int = 2 << 30) -> Any:
    """Unpickle a torch zip checkpoint safely; tensors become numpy arrays (floats as float32).

    Raises ``ValueError`` for a file that is not a torch zip checkpoint or whose members
    would unpack to more than ``max_bytes``; ``pickle.UnpicklingError`` for a corrupt one.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a torch zip checkpoint (legacy non-zip .pt files are not supported)"
        )
    with zipfile.ZipFile(path) as zf:
        pkls = [
            n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1
        ]
        if len(pkls) != 1:
            raise ValueError(
                f"{path}: expected one <prefix>/data.pkl, found {len(pkls)}"
            )
        prefix = pkls[0][: -len("data.pkl")]
        if sum(info.file_size for info in zf.infolist()) > max_bytes:
            raise ValueError(
                f"{path}: checkpoint unpacks to more than {max_bytes} bytes"
            )
        byteorder = "little"
        if f"{prefix}byteorder" in zf.namelist():
            byteorder = (
                zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                or "little"
            )
        with zf.open(pkls[0]) as fh:
            data = io.BytesIO(fh.read())
        return _SafeUnpickler(data, zf, prefix, byteorder).load()


# --- small helpers to walk nn.Module stand-ins --------------------------------------


def class_name(obj: Any) -> str:
    """``Conv``, ``C2f``, ``Sequential``... for a stand-in; ``type(obj).__name__`` otherwise."""
    return getattr(type(obj), "_stub_name", "") or type(obj).__name__


def children(obj: Any) -> dict[str, Any]:
    """The module's ``_modules`` (ordered), empty if it has none; ``None`` entries dropped."""
    mods = obj.__dict__.get("_modules") if hasattr(obj, "__dict__") else None
    return {k: v for k, v in (mods or {}).items() if v is not None}


def params(obj: Any) -> dict[str, np.ndarray]:
    return {
        k: v
        for k, v in (obj.__dict__.get("_parameters") or {}).items()
        if v is not None
    }


def buffers(obj: Any) -> dict[str, np.ndarray]:
    return {
        k: v for k, v in (obj.__dict__.get("_buffers") or {}).items() if v is not None
    }
