"""``veil anonymize``: hide faces, people and plates in photos, files or whole folders.

Outputs mirror the input tree under ``-o OUTDIR`` (same names; the extension follows
``--format``); without ``-o`` each ``photo.jpg`` gets a ``photo.anonymized.jpg`` beside
it; ``--in-place`` replaces the originals (atomically). A bad file is reported and
skipped; the exit code is 1 when some failed, 2 for bad options, 3 when models fail.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from veil.cli.bulk import check_engine, ray_items
from veil.cli.batch_item import init_worker, process_one
from veil.cli.common import console, err_console, user_errors
from veil.cli.paths import collect_images
from veil.cli.resume import Manifest, remove_stale_temporaries
from veil.cli.video import print_video_dry_run, process_video, video_extension
from veil.errors import ModelError, OptionsError, VeilError
from veil.imageio import EXTENSIONS, atomic_write
from veil.pipeline.options import Options, option_help

_SUFFIX = ".anonymized"
#: memory one worker may need at its peak (models + buffers of a large photo)
_WORKER_BYTES = 1.0e9
_MAX_AUTO_JOBS = 8
_IMAGES_PER_WORKER = 4


class _Rate(ProgressColumn):
    """Images per second (rich's own speed column is for bytes)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "img/s")
        return Text(f"{speed:.2f} {unit}" if speed else f"-- {unit}", style="progress.data.speed")


# -- planning: which file goes where ----------------------------------------------------
def _options(config: Path | None, overrides: dict[str, Any]) -> Options:
    values = {k: v for k, v in overrides.items() if v is not None}
    return Options.from_toml(config, values) if config else Options.from_mapping(values)


def _destination(src: Path, root: Path, outdir: Path | None, in_place: bool, fmt: str | None,
                 video_ext: str | None = None) -> Path:  # fmt: skip
    """Where ``src``'s output goes; a video gets its output container's extension
    (``--format`` is for photos)."""
    if in_place:
        return src
    if outdir is not None:
        dst = outdir / src.relative_to(root)
    else:
        dst = src.with_name(src.stem + _SUFFIX + src.suffix)
    if video_ext:
        return dst.with_suffix(video_ext)
    return dst.with_suffix(EXTENSIONS[fmt]) if fmt else dst


def plan(paths: list[Path], outdir: Path | None, in_place: bool, fmt: str | None) -> list[tuple[Path, Path]]:
    """``(source, destination)`` for every input image; refuses collisions up front."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise OptionsError(f"no such file or folder: {', '.join(missing)}")
    out_resolved = outdir.resolve() if outdir else None
    jobs: list[tuple[Path, Path]] = []
    for src, root in collect_images(paths):
        from_folder = src not in paths
        if (from_folder and out_resolved is not None and out_resolved != root.resolve()
                and src.resolve().is_relative_to(out_resolved)):
            continue  # an earlier run's outputs, in a folder inside the input folder
        if from_folder and outdir is None and not in_place and src.stem.endswith(_SUFFIX):
            continue
        jobs.append((src, _destination(src, root, outdir, in_place, fmt, video_extension(src))))
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        key = dst.resolve()
        if key in seen:
            raise OptionsError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
        if not in_place and key == src.resolve():
            raise OptionsError(f"{src} would be overwritten by its output; choose another -o folder or use --in-place")
    return jobs


# -- work: one image, in this process or a worker -----------------------------------------
def auto_jobs(images: int) -> int:
    """Worker processes for ``--jobs auto``: one per core (small models use one core
    better than they share two), fewer when memory is short or images are few."""
    cores = _cores()
    avail = available_memory()
    by_memory = int(avail // _WORKER_BYTES) if avail else cores
    return max(1, min(cores, images // _IMAGES_PER_WORKER, by_memory, _MAX_AUTO_JOBS))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes this process can still use: the kernel's MemAvailable (free memory plus
    reclaimable caches), capped by a container's (cgroup v2) memory limit; 0 = unknown."""
    avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            room = max(0, int(limit) - used)
            avail = min(avail, room) if avail else room
    except (OSError, ValueError):
        pass
    return avail


def _run(jobs: list[tuple[Path, Path]], options: Options, dry_run: bool, in_place: bool, workers: int,
         manifest: Manifest | None = None) -> Iterator[dict]:  # fmt: skip
    """Process ``jobs`` here or in ``workers`` processes; each finished output is recorded
    in ``manifest`` (when given) before its item is yielded."""
    args = [(str(s), str(d), options, dry_run, in_place, manifest is not None) for s, d in jobs]
    if workers <= 1 or len(args) <= 1:
        for a in args:
            item = _recorded(process_one(*a), manifest)
            yield item
            if item.get("fatal"):
                return
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding ONNX threads
    workers = min(workers, len(args))
    threads = max(1, _cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(threads, os.getpid()))
    with pool:
        futures = [pool.submit(process_one, *a) for a in sorted(args, key=_largest_first)]
        try:
            for fut in as_completed(futures):
                item = _recorded(fut.result(), manifest)
                yield item
                if item.get("fatal"):
                    break
        finally:
            for f in futures:
                f.cancel()


def _largest_first(arg: tuple) -> int:
    """Workers take the largest files first: the batch then ends on small ones, so no
    worker is left with a large photo while the others have nothing to do."""
    try:
        return -os.stat(arg[0]).st_size
    except OSError:
        return 0  # the worker reports the error


def _recorded(item: dict, manifest: Manifest | None) -> dict:
    hashes = item.pop("_hashes", None)
    if manifest is not None and hashes and item["ok"]:
        try:
            manifest.add(Path(item["output"]), *hashes)
        except OSError as exc:  # the output is fine; only a later run cannot skip it
            item.setdefault("notes", []).append(f"not recorded for --skip-existing: {exc.strerror or exc}")
    return item


def _resume(work: list[tuple[Path, Path]], output: Path | None, options: Options, skip: bool | None,
            dry_run: bool) -> tuple[list[tuple[Path, Path]], list[dict], Manifest | None]:  # fmt: skip
    """``(to do, skipped items, manifest)``: removes a killed run's temporary files, and
    with ``--skip-existing`` (the default with ``-o``) leaves out complete outputs."""
    if skip and output is None:
        raise OptionsError("--skip-existing needs -o/--output (it resumes a run into an output folder)")
    if dry_run:
        return work, [], None
    remove_stale_temporaries(d for _, d in work)
    if output is None or skip is False:
        return work, [], None
    manifest = Manifest.load(output, options)
    done = {(s, d) for s, d in work if manifest.complete(s, d)}
    skipped = [{"path": str(s), "output": str(d), "ok": True, "skipped": True} for s, d in work if (s, d) in done]
    return [w for w in work if w not in done], skipped, manifest


def _parse_jobs(value: str) -> int:
    """``--jobs``: a positive number, or 0 for auto."""
    if value.strip().lower() == "auto":
        return 0
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise OptionsError(f"--jobs must be a positive number or auto; got {value!r}", field="jobs")
    return n


# -- output --------------------------------------------------------------------------------
def _print_dry_run(item: dict) -> None:
    rep = item["report"]
    console.print(f"[bold]{item['path']}[/] ({rep['width']}x{rep['height']} {rep['format_in']})", highlight=False)
    for r in rep["regions"]:
        box = ", ".join(f"{v:.0f}" for v in r["box"])
        fb = f" (fallback from {r['fallback']})" if r.get("fallback") else ""
        console.print(f"  would hide {r['target']:<6} {r['score']:.2f} [{box}] {r['style']}/{r['shape']}{fb}", highlight=False)
    if not rep["regions"]:
        console.print("  nothing to hide", highlight=False)
    if rep["metadata_removed"]:
        console.print(f"  would remove metadata: {', '.join(rep['metadata_removed'])}", highlight=False)


def _summary(items: list[dict], dry_run: bool) -> dict[str, Any]:
    hidden: dict[str, int] = {}
    metadata: dict[str, int] = {}
    verify = 0
    for it in items:
        rep = it.get("report") or {}
        for t, n in rep.get("hidden", {}).items():
            hidden[t] = hidden.get(t, 0) + n
        for m in rep.get("metadata_removed", []):
            metadata[m] = metadata.get(m, 0) + 1
        verify += rep.get("verify_found") or 0
    skipped = sum(1 for it in items if it.get("skipped"))
    ok = sum(1 for it in items if it["ok"]) - skipped
    return {"images": len(items), "done": ok, "skipped": skipped, "failed": len(items) - ok - skipped, "dry_run": dry_run,
            "hidden": hidden, "metadata_removed": metadata, "verify_found": verify}  # fmt: skip


def _print_summary(s: dict[str, Any]) -> None:
    verb = "checked" if s["dry_run"] else "anonymized"
    colour = "red" if s["failed"] else "green"
    skipped = f", {s['skipped']} skipped (already done)" if s.get("skipped") else ""
    console.print(f"[bold {colour}]{s['done']} image(s) {verb}{skipped}, {s['failed']} failed[/]", highlight=False)
    names = {"face": "faces", "head": "heads", "person": "people", "plate": "plates"}
    hidden = ", ".join(f"{s['hidden'].get(t, 0)} {n}" for t, n in names.items() if t != "head" or s["hidden"].get(t))
    console.print(f"{'would hide' if s['dry_run'] else 'hidden'}: {hidden}", highlight=False)
    if s["verify_found"]:
        console.print(f"verify pass: {s['verify_found']} more face(s) found and hidden", highlight=False)
    meta = ", ".join(f"{k} ({v})" for k, v in sorted(s["metadata_removed"].items())) or "none found"
    console.print(f"metadata {'to remove' if s['dry_run'] else 'removed'}: {meta}", highlight=False)


@user_errors
def anonymize(
    paths: list[Path] = typer.Argument(..., help="Image or video files, or folders (searched recursively)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder; mirrors the input tree. Default: photo.anonymized.jpg beside each photo."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace the originals (atomically)."),
    targets: Optional[str] = typer.Option(None, "--targets", "-t", help=option_help("targets")),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help=option_help("preset")),
    style: Optional[str] = typer.Option(None, "--style", help=option_help("style")),
    shape: Optional[str] = typer.Option(None, "--shape", help=option_help("shape")),
    strength: Optional[int] = typer.Option(None, "--strength", help=option_help("strength")),
    feather: Optional[float] = typer.Option(None, "--feather", help=option_help("feather")),
    margin: Optional[float] = typer.Option(None, "--margin", help=option_help("margin")),
    color: Optional[str] = typer.Option(None, "--color", help=option_help("color")),
    face_style: Optional[str] = typer.Option(None, "--face-style", help=option_help("style", lead="Style for faces and heads only", default="--style")),
    person_style: Optional[str] = typer.Option(None, "--person-style", help=option_help("style", lead="Style for people only", default="--style")),
    plate_style: Optional[str] = typer.Option(None, "--plate-style", help=option_help("style", lead="Style for plates only", default="--style")),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help=option_help("verify")),
    hide_heads: Optional[bool] = typer.Option(None, "--hide-heads/--no-hide-heads", help=option_help("hide_heads")),
    fmt: Optional[str] = typer.Option(None, "--format", help=option_help("format")),
    quality: Optional[int] = typer.Option(None, "--quality", help=option_help("quality")),
    keep_metadata: Optional[str] = typer.Option(None, "--keep-metadata", help=option_help("keep_metadata")),
    video_codec: Optional[str] = typer.Option(None, "--video-codec", help=option_help("video_codec")),
    video_quality: Optional[int] = typer.Option(None, "--video-quality", help=option_help("video_quality")),
    audio: Optional[str] = typer.Option(None, "--audio", help=option_help("audio")),
    track_extend: Optional[int] = typer.Option(None, "--track-extend", help=option_help("track_extend")),
    config: Optional[Path] = typer.Option(None, "--config", help="Options preset file (TOML); flags override it."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON report of the run here."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be hidden; write nothing."),
    jobs: str = typer.Option("auto", "--jobs", "-j", metavar="N|auto", help="Worker processes, each loading the models once: a number, or auto (one per core, fewer when memory or images are few)."),
    skip_existing: Optional[bool] = typer.Option(None, "--skip-existing/--no-skip-existing", help="Skip outputs an earlier run finished from the same input with the same options (default: on with -o)."),
    engine: str = typer.Option("local", "--engine", help="local (worker processes here) or ray (a Ray Data job over folders or s3:// buckets; pip install \"veil[ray]\"; photos only)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --engine ray: the cluster to join (auto: the one `ray start` runs here). Default: a local Ray."),
) -> None:
    """Hide faces, people and licence plates; strip identifying metadata."""
    options = _options(config, {
        "targets": targets, "preset": preset, "style": style, "shape": shape, "strength": strength,
        "feather": feather, "margin": margin, "color": color, "face_style": face_style,
        "person_style": person_style, "plate_style": plate_style, "verify": verify, "format": fmt,
        "hide_heads": hide_heads, "quality": quality, "keep_metadata": keep_metadata,
        "video_codec": video_codec, "video_quality": video_quality, "audio": audio, "track_extend": track_extend,
    })  # fmt: skip
    if in_place and output is not None:
        raise OptionsError("use either -o/--output or --in-place, not both")
    if in_place and options.format:
        raise OptionsError("--in-place cannot change the format (--format); write to -o instead")
    workers = _parse_jobs(jobs)
    if check_engine(engine, ray_address) == "ray":  # veil.cli.bulk: the same pipeline as a Ray Data job
        items = ray_items(paths, output, options, jobs=workers, skip_existing=skip_existing, in_place=in_place, dry_run=dry_run, address=ray_address)
        return _finish(items, options, report, dry_run=False)
    work = plan(paths, output, in_place, options.format)
    if not work:
        raise OptionsError("no images or videos found in the given paths")
    work, skipped, manifest = _resume(work, output, options, skip_existing, dry_run)
    videos = [(s, d) for s, d in work if video_extension(s)]  # sniffed once here
    video_set = set(videos)
    photos = [w for w in work if w not in video_set]
    workers = workers or auto_jobs(len(photos))

    items: list[dict] = list(skipped)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("dry run" if dry_run else "anonymize", total=len(work))

        def done(item: dict) -> None:
            items.append(item)
            if not item["ok"]:
                bar.console.print(f"[red]failed[/] {item['path']}: {item['error']}", highlight=False, soft_wrap=True)
            elif dry_run:
                (print_video_dry_run(item, bar.console) if item.get("kind") == "video" else _print_dry_run(item))
            bar.advance(task)

        for item in _run(photos, options, dry_run, in_place, workers, manifest):
            done(item)
        for src, dst in videos:  # one at a time, in this process: a video keeps every core busy
            if any(it.get("fatal") for it in items):
                break
            done(_recorded(process_video(src, dst, options, dry_run, in_place, bar, manifest is not None), manifest))
    _finish(items, options, report, dry_run)


def _finish(items: list[dict], options: Options, report: Path | None, dry_run: bool) -> None:
    """The summary, the report and the exit code (every engine)."""
    summary = _summary(items, dry_run)
    _print_summary(summary)
    if report is not None:
        from veil import __version__

        doc = {"veil": __version__, "options": options.to_json(), "summary": summary, "images": items}
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(report, json.dumps(doc, indent=2).encode())
        except OSError as exc:  # a full disk, a read-only folder, a parent that is a file
            raise VeilError(f"cannot write the report {report}: {exc.strerror or exc}") from None
        console.print(f"report: {report}", highlight=False)
    fatal = next((it for it in items if it.get("fatal")), None)
    if fatal is not None:
        raise ModelError(fatal["error"])
    if summary["failed"]:
        raise typer.Exit(1)
