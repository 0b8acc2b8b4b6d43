"""``veil anonymize --engine ray``: the same pipeline over folders or buckets as a Ray Data job.

The driver lists the inputs and the outputs already there (one listing each, cheap on a
bucket) and leaves out every photo whose output exists: outputs are written atomically,
so a killed run resumes where it stopped and no photo is done twice. The rest flows
through three stages: read the bytes (tasks), anonymize and encode them
(:func:`veil.pipeline.core.anonymize_bytes` in a pool of actors that each load the models
once; GPU actors when onnxruntime offers CUDA and the cluster has GPUs), write (tasks).

Pool sizing (ray#44687: an actor pool holding every CPU starves the read tasks and the
job hangs): one logical CPU (half of a one-CPU cluster) is kept for the read and write
tasks, each of which asks for a quarter; the actors, one per remaining core by default,
share the rest, and each runs its models on one thread as ``--jobs`` workers do.

Photos only: a video in the input is reported as not done (the local engine does videos).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator

from veil.bulk.reaper import reap_descendants_on_exit
from veil.bulk.storage import Location, list_files, locate, read_bytes, relative, write_bytes
from veil.errors import ModelError, OptionsError, VeilError
from veil.imageio import DEFAULT_LIMITS, EXTENSIONS
from veil.pipeline.options import Options

#: What ``pip install`` needs for this engine (named in the error when Ray is missing).
EXTRA = 'pip install "veil[ray]"'
#: Logical CPUs each read or write task asks for (I/O, not compute).
IO_CPUS = 0.25
_IMAGES_PER_ACTOR = 4


@dataclass
class BulkJob:
    """One bulk run: inputs (local paths or ``s3://`` URLs), one output root, the options."""

    sources: list[str]
    output: str
    options: Options
    photo_suffixes: frozenset[str]
    video_suffixes: frozenset[str] = frozenset()
    #: actors in the pool; 0 = sized to the cluster (see the module's docstring)
    actors: int = 0
    skip_existing: bool = True
    address: str | None = None


@dataclass
class BulkPlan:
    """What a run does: ``todo`` rows for Ray, and items settled without running anything."""

    out: Location
    src_fs: Any
    todo: list[dict[str, str]] = field(default_factory=list)
    settled: list[dict[str, Any]] = field(default_factory=list)


def require_ray() -> None:
    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise OptionsError(f"--engine ray needs Ray Data and pyarrow: {EXTRA}", field="engine") from None


# -- planning (driver) ---------------------------------------------------------------------
def plan(job: BulkJob) -> BulkPlan:
    """Every input photo and its output; refuses collisions, leaves out finished outputs."""
    require_ray()
    out = locate(job.output)
    inputs = [locate(s) for s in job.sources]
    if len({loc.scheme for loc in inputs}) > 1:
        raise OptionsError("--engine ray reads from one kind of location per run (all local or all s3://)")
    result = BulkPlan(out, inputs[0].fs)
    fmt = job.options.format
    seen: dict[str, str] = {}
    for given, loc in zip(job.sources, inputs):
        files = list_files(loc)
        if not files:
            raise OptionsError(f"no such file, folder or prefix, or nothing in it: {given}")
        single = len(files) == 1 and files[0][0] == loc.path
        for path, size in files:
            if loc.scheme == out.scheme and _inside(path, out.path) and not single:
                continue  # an earlier run's outputs, in a folder inside the input folder
            suffix = PurePosixPath(path).suffix.lower()
            rel = PurePosixPath(path).name if single else relative(path, loc.path)
            if suffix in job.video_suffixes:
                result.settled.append({"path": loc.uri(path), "output": None, "ok": False,
                                       "error": "a video: --engine ray does photos; run --engine local on videos"})  # fmt: skip
                continue
            if suffix not in job.photo_suffixes and not single:
                continue
            dst_rel = str(PurePosixPath(rel).with_suffix(EXTENSIONS[fmt])) if fmt else rel
            dst = f"{out.path.rstrip('/')}/{dst_rel}"
            if dst in seen:
                raise OptionsError(f"{seen[dst]} and {loc.uri(path)} would both be written to {out.uri(dst)}")
            if loc.scheme == out.scheme and dst == path:
                raise OptionsError(f"{loc.uri(path)} would be overwritten by its output; choose another -o")
            seen[dst] = loc.uri(path)
            if size > DEFAULT_LIMITS.max_bytes:
                result.settled.append({"path": loc.uri(path), "output": out.uri(dst), "ok": False,
                                       "error": f"file too large ({size} bytes; the limit is {DEFAULT_LIMITS.max_bytes})"})  # fmt: skip
                continue
            result.todo.append({"src": path, "dst": dst, "shown": loc.uri(path)})
    if not result.todo and not result.settled:
        raise OptionsError("no photos found in the given locations")
    if job.skip_existing:
        done = {p for p, _ in list_files(out)}
        for row in [r for r in result.todo if r["dst"] in done]:
            result.todo.remove(row)
            result.settled.append({"path": row["shown"], "output": out.uri(row["dst"]), "ok": True, "skipped": True})
    return result


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# -- sizing --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSize:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int


def pool_size(cluster: dict[str, float], photos: int, actors: int = 0, cuda: bool = False) -> PoolSize:
    """The actor pool for ``photos`` on a cluster with these resources (see the docstring)."""
    cpus = float(cluster.get("CPU", 1.0))
    gpus = int(cluster.get("GPU", 0.0)) if cuda else 0
    if gpus:
        n = actors or max(1, min(gpus, math.ceil(photos / _IMAGES_PER_ACTOR)))
        return PoolSize(n, min(1.0, max(IO_CPUS, (cpus - 1) / n)), 1.0, 1)
    reserve = min(1.0, cpus / 2)
    n = actors or max(1, min(int(cpus), photos // _IMAGES_PER_ACTOR))
    per = round((cpus - reserve) / n, 3)
    if per < 0.05:
        raise OptionsError(f"--jobs {n} is more actors than this cluster's {cpus:g} CPUs can hold", field="jobs")
    return PoolSize(n, min(per, 1.0), 0.0, 1)


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# -- the three stages (run on the Ray workers) ---------------------------------------------
def _read(batch: dict, fs) -> dict:
    data, errors = [], []
    for src in batch["src"]:
        try:
            data.append(read_bytes(fs, src))
            errors.append("")
        except OSError as exc:
            data.append(b"")
            errors.append(f"cannot read: {exc.strerror or exc}")
    return {**batch, "data": data, "error": errors}


class Anonymizer:
    """One actor: loads the models once, then anonymizes and encodes photo after photo.
    :func:`bound` makes the class for a run (options as class data, not constructor
    arguments, which Ray keeps in its object store for actor restarts)."""

    OPTIONS: Options = Options()
    THREADS = 1

    def __init__(self) -> None:
        options, threads = self.OPTIONS, self.THREADS
        os.environ["VEIL_THREADS"] = str(threads)  # before any model session exists
        import cv2

        cv2.setNumThreads(1)
        from veil.detection.engine import get_engine

        self.options = options
        self.fatal = ""
        try:
            self.engine = get_engine(options.preset)
            self.engine.warm_up()
        except ModelError as exc:  # every photo reports it; the driver stops the run
            self.fatal = str(exc)

    def __call__(self, batch: dict) -> dict:
        from veil.pipeline.core import anonymize_bytes

        outs, errors, reports, fatal = [], [], [], []
        for data, error in zip(batch["data"], batch["error"]):
            out, report = b"", ""
            if not error and self.fatal:
                error = self.fatal
            elif not error:
                try:
                    result = anonymize_bytes(bytes(data), self.options, engine=self.engine)
                    out, report = result.data, json.dumps(result.report.to_json())
                except Exception as exc:  # noqa: BLE001 (one bad photo fails alone)
                    error = str(exc) if isinstance(exc, VeilError) else f"internal error ({type(exc).__name__}: {exc})"
            outs.append(out)
            errors.append(error)
            reports.append(report)
            fatal.append(bool(self.fatal))
        return {"src": batch["src"], "dst": batch["dst"], "shown": batch["shown"], "data": outs,
                "error": errors, "report": reports, "fatal": fatal}  # fmt: skip


def bound(options: Options, threads: int) -> type[Anonymizer]:
    return type("Anonymizer", (Anonymizer,), {"OPTIONS": options, "THREADS": threads})


def _write(batch: dict, fs, scheme: str) -> dict:
    errors = list(batch["error"])
    for i, (dst, data) in enumerate(zip(batch["dst"], batch["data"])):
        if errors[i]:
            continue
        try:
            write_bytes(fs, scheme, dst, bytes(data))
        except OSError as exc:
            errors[i] = f"cannot write: {exc.strerror or exc}"
    return {"shown": batch["shown"], "dst": batch["dst"], "error": errors, "report": batch["report"], "fatal": batch["fatal"]}


# -- the run (driver) ----------------------------------------------------------------------
def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` runs here), or start a
    local one; a local one never spills objects (the originals) to disk."""
    import ray

    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        kw["address"] = address
    else:
        kw["_system_config"] = {"automatic_object_spilling_enabled": False}
        reap_descendants_on_exit()  # before Ray starts: its processes are what it watches
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise VeilError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def run(job: BulkJob, bulk: BulkPlan) -> Iterator[dict[str, Any]]:
    """Anonymize ``bulk.todo`` on Ray; yields one item per photo as it is written (the same
    shape as the local engine's items). Raises :class:`ModelError` when models are missing."""
    if not bulk.todo:
        return
    import ray
    import ray.data

    for name in ("ray", "ray.data"):  # veil reports progress and failures itself
        logging.getLogger(name).setLevel(logging.ERROR)
    connect(job.address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = False
    size = pool_size(ray.cluster_resources(), len(bulk.todo), job.actors, _cuda())
    out = bulk.out
    ds = ray.data.from_items(bulk.todo, override_num_blocks=min(len(bulk.todo), 200))
    ds = ds.map_batches(_read, fn_kwargs={"fs": bulk.src_fs}, batch_size=1, num_cpus=IO_CPUS)
    gpus = {"num_gpus": size.gpus_per_actor} if size.gpus_per_actor else {}
    ds = ds.map_batches(bound(job.options, size.threads), batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=size.actors), num_cpus=size.cpus_per_actor, **gpus)  # fmt: skip
    ds = ds.map_batches(_write, fn_kwargs={"fs": out.fs, "scheme": out.scheme}, batch_size=1, num_cpus=IO_CPUS)
    try:
        yield from _items(ds, out)
    except ray.exceptions.RayError as exc:  # a node or actor lost for good: what is written stays
        raise VeilError(f"the Ray job stopped ({type(exc).__name__}); run the command again to resume") from None


def _items(ds, out: Location) -> Iterator[dict[str, Any]]:
    for row in ds.iter_rows():
        item: dict[str, Any] = {"path": row["shown"], "output": out.uri(row["dst"]), "ok": not row["error"]}
        if row["error"]:
            item["error"] = row["error"]
            if row["fatal"]:
                raise ModelError(row["error"])
        else:
            item["report"] = json.loads(row["report"])
        yield item
