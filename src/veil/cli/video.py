"""Videos in ``veil anonymize`` and ``veil detect``: one at a time, in this process.

A video is already a long job that keeps every core busy (onnxruntime's threads during
detection, the encoder's afterwards), so videos do not go to the photo worker pool; each
gets its own progress line (frames, frames per second, time left).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from rich.progress import Progress

from veil.cli.batch_item import record_failure
from veil.cli.resume import file_sha256
from veil.errors import VeilError
from veil.pipeline.options import Options
from veil.video import SNIFF_BYTES, sniff_container  # the video stack itself loads where a video is met


#: What :func:`video_extension` found, per file (path, size, modification time): planning,
#: splitting a batch and running it ask about the same file, which is looked at once.
_SEEN: dict[tuple[str, int, int], str | None] = {}


def video_extension(path: Path) -> str | None:
    """The extension veil writes for the video at ``path``, decided by its content as the
    writer decides it; None when it is not a video."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SEEN:
        if len(_SEEN) >= 100_000:
            _SEEN.clear()
        _SEEN[key] = _extension(path)
    return _SEEN[key]


def _extension(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            family = sniff_container(fh.read(SNIFF_BYTES))
    except OSError:
        return None
    if family is None:
        return None
    from veil.video.container import EXTENSIONS, open_input, output_container

    if family == "matroska":  # WebM or Matroska: its DocType and codecs tell, never its name
        try:
            container, info = open_input(str(path))
            container.close()
            family = info.container
        except VeilError:
            pass  # the run names what is wrong with it
    return EXTENSIONS[output_container(family)]


class _Bar:
    """Feeds one video's progress (both passes) to a rich task."""

    def __init__(self, bar: Progress | None, name: str):
        self.bar, self.name, self.task, self.stage = bar, name, None, ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.bar is None:
            return
        if stage != self.stage:
            if self.task is not None:
                self.bar.remove_task(self.task)
            verb = "detecting" if stage == "detect" else "masking + encoding"
            self.task, self.stage = self.bar.add_task(f"{self.name}: {verb}", total=total, unit="fps"), stage
        self.bar.update(self.task, completed=done, total=max(total, done))

    def close(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)


def process_video(src: Path, dst: Path, options: Options, dry_run: bool, in_place: bool, bar: Progress | None,
                  hashes: bool = False) -> dict[str, Any]:  # fmt: skip
    """Anonymize one video; never raises for a bad file (the batch goes on). With
    ``hashes``, ``item["_hashes"]`` holds the SHA-256 of the input and the output (the
    resume record, as for photos)."""
    from veil.video import anonymize_video

    item: dict[str, Any] = {"path": str(src), "output": None if dry_run else str(dst), "ok": False, "kind": "video"}
    progress = _Bar(bar, src.name)
    try:
        out_ext = video_extension(src)
        if in_place and out_ext and out_ext != src.suffix.lower():
            raise VeilError(f"cannot be anonymized in place: it is written as {out_ext} (use -o)")
        if not dry_run:
            dst.parent.mkdir(parents=True, exist_ok=True)
        source_sha = file_sha256(src) if hashes and not dry_run else ""
        report = anonymize_video(str(src), None if dry_run else dst, options, progress=progress)
        item.update(ok=True, report=report.to_json())
        if source_sha:
            item["_hashes"] = (source_sha, file_sha256(dst))
    except Exception as exc:  # noqa: BLE001 (recorded per file, see record_failure)
        record_failure(item, exc)
    finally:
        progress.close()
    return item


def print_video_dry_run(item: dict, console) -> None:
    rep = item["report"]
    inp = rep["input"]
    console.print(f"[bold]{item['path']}[/] ({inp['width']}x{inp['height']}, {rep['frames']} frames, "
                  f"{inp['fps']:.2f} fps, {rep['shots']} shot(s))", highlight=False)  # fmt: skip
    tracks = ", ".join(f"{n} {t}" for t, n in sorted(rep["tracks"].items())) or "none"
    console.print(f"  tracks: {tracks}; detections: {sum(rep['detections'].values())}; "
                  f"frames filled by tracking: {rep['frames_filled']}", highlight=False)  # fmt: skip
    for lost in rep["lost"]:
        console.print(f"  {lost['target']} track lost after frame {lost['last_seen']}: hidden until frame "
                      f"{lost['hidden_until']}, shot ends at {lost['shot_end']}", highlight=False)  # fmt: skip
    if rep["metadata_removed"]:
        console.print(f"  would remove metadata: {', '.join(rep['metadata_removed'])}", highlight=False)


def detect_video_lines(src: Path, options: Options, out: IO[str], engine: Any, bar: Progress | None) -> int:
    """``veil detect`` on a video: one JSON line per frame (detections with track ids)."""
    from veil.video.pipeline import detect_video, plan_tracks

    progress = _Bar(bar, src.name)
    try:
        info, frames, shots, times = detect_video(str(src), options, engine=engine, progress=progress)
    finally:
        progress.close()
    tp = plan_tracks(frames, shots, info, options)
    for i, dets in enumerate(tp.frames):
        rows = []
        for d in dets:
            row = d.to_json()
            row["track_id"] = d.extra.get("track_id")
            row["detected"] = d.source != "track"
            rows.append(row)
        out.write(json.dumps({"path": str(src), "frame": i, "time": round(times[i], 6), "shot": shots[i],
                              "width": info.width, "height": info.height, "detections": rows}) + "\n")  # fmt: skip
    return len(tp.frames)
