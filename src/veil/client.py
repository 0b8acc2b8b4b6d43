"""A small Python client for the veil API.

    from veil.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as c:
        job = c.submit(["a.jpg", "b.png"], options={"style": "pixelate"})
        job = c.wait(job, timeout=300)
        c.download_archive(job, "out.zip")
        c.delete(job)

Errors come back as :class:`ApiError` carrying the server's problem document.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

import httpx

from veil.signing import verify_signature  # re-exported for webhook receivers

__all__ = ["ApiError", "Client", "Job", "verify_signature"]


class ApiError(Exception):
    """The server answered with an error (an RFC 9457 problem document)."""

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after: float | None = None):
        self.status = status
        self.problem = dict(problem)
        self.retry_after = retry_after
        detail = self.problem.get("detail") or self.problem.get("title") or f"HTTP {status}"
        errors = self.problem.get("errors") or []
        if errors:
            detail += " (" + "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors) + ")"
        super().__init__(f"{status}: {detail}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.problem.get("errors") or [])


@dataclass
class Job:
    id: str
    status: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def images(self) -> list[dict[str, Any]]:
        return list(self.data.get("images") or [])

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Job":
        return cls(id=data["id"], status=data["status"], data=dict(data))


ImageInput = str | Path | bytes | tuple[str, bytes]


def _job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else str(job)


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport,
                                  trust_env=False)

    # -- plumbing ------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code < 400:
            return resp
        try:
            problem = resp.json()
            if not isinstance(problem, dict):
                raise ValueError
        except ValueError:
            problem = {"title": resp.reason_phrase, "status": resp.status_code, "detail": resp.text[:500]}
        ra = resp.headers.get("retry-after")
        try:
            retry_after = float(ra) if ra else None
        except ValueError:
            retry_after = None
        raise ApiError(resp.status_code, problem, retry_after)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._check(self._http.request(method, url, **kwargs))

    # -- API -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/health").json()

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/models").json()["models"]

    def submit(
        self,
        images: ImageInput | Sequence[ImageInput],
        options: Mapping[str, Any] | None = None,
        *,
        callback_url: str | None = None,
        delete_after_download: bool = False,
    ) -> Job:
        """Upload images and videos (paths, bytes or ``(name, bytes)``) as one job; returns at
        once. Paths are streamed from disk, so a large video is never read into memory."""
        if isinstance(images, (str, Path, bytes, tuple)):
            images = [images]  # type: ignore[list-item]
        with ExitStack() as files_open:
            files = [("files", _file_part(item, i, files_open)) for i, item in enumerate(images)]  # type: ignore[arg-type]
            return self._submit(files, options, callback_url, delete_after_download)

    def _submit(self, files: list, options: Mapping[str, Any] | None, callback_url: str | None,
                delete_after_download: bool) -> Job:
        data: dict[str, str] = {}
        if options:
            data["options"] = json.dumps(dict(options))
        if callback_url:
            data["callback_url"] = callback_url
        if delete_after_download:
            data["delete_after_download"] = "true"
        resp = self._request("POST", "/api/v1/jobs", files=files, data=data)
        return Job.from_json(resp.json())

    def status(self, job: Job | str) -> Job:
        return Job.from_json(self._request("GET", f"/api/v1/jobs/{_job_id(job)}").json())

    def wait(self, job: Job | str, timeout: float = 300.0, poll: float = 0.25, max_poll: float = 2.0) -> Job:
        """Poll until the job is done or failed; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            current = self.status(job)
            if current.finished:
                return current
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {current.id} still {current.status} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(max_poll, delay * 1.5)

    def download(self, job: Job | str, n: int, dest: str | Path | None = None) -> bytes:
        """Image ``n`` (upload order, from 0); also written to ``dest`` when given."""
        data = self._request("GET", f"/api/v1/jobs/{_job_id(job)}/images/{n}").content
        if dest is not None:
            Path(dest).write_bytes(data)
        return data

    def download_to(self, job: Job | str, n: int, dest: str | Path) -> int:
        """Stream result ``n`` (a video of gigabytes, say) to the file ``dest``; returns its size."""
        size = 0
        with self._http.stream("GET", f"/api/v1/jobs/{_job_id(job)}/images/{n}") as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            with open(dest, "wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
                    size += len(chunk)
        return size

    def download_archive(self, job: Job | str, dest: str | Path | BinaryIO | None = None,
                         original_names: bool = False) -> bytes | None:
        """The ZIP of all finished images: streamed to ``dest`` (path or file), else returned."""
        params = {"names": "original"} if original_names else None
        with self._http.stream("GET", f"/api/v1/jobs/{_job_id(job)}/archive", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            if dest is None:
                return resp.read()
            if isinstance(dest, (str, Path)):
                with open(dest, "wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)
            else:
                for chunk in resp.iter_bytes():
                    dest.write(chunk)
        return None

    def delete(self, job: Job | str, n: int | None = None) -> None:
        """Delete the whole job, or only image ``n``."""
        url = f"/api/v1/jobs/{_job_id(job)}" + (f"/images/{n}" if n is not None else "")
        self._request("DELETE", url)

    def anonymize(self, image: ImageInput, options: Mapping[str, Any] | None = None) -> tuple[bytes, dict[str, Any], str]:
        """One image synchronously: ``(bytes, report, content_type)``."""
        data = {"options": json.dumps(dict(options))} if options else {}
        resp = self._request("POST", "/api/v1/anonymize", files={"file": _file_tuple(image, 0)}, data=data)
        return resp.content, json.loads(resp.headers.get("x-veil-report") or "{}"), resp.headers.get("content-type", "")

    def render(
        self,
        image: ImageInput,
        regions: Iterable[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
    ) -> tuple[bytes, dict[str, Any], str]:
        """Mask exactly ``regions`` (``[{"target": "face", "box": [x1, y1, x2, y2]}]``)."""
        data = {"regions": json.dumps([dict(r) for r in regions])}
        if options:
            data["options"] = json.dumps(dict(options))
        resp = self._request("POST", "/api/v1/render", files={"file": _file_tuple(image, 0)}, data=data)
        return resp.content, json.loads(resp.headers.get("x-veil-report") or "{}"), resp.headers.get("content-type", "")


def _file_part(item: ImageInput, index: int, stack: ExitStack) -> tuple[str, Any, str]:
    """A multipart file part; a path is opened (and streamed), not read."""
    if isinstance(item, (str, Path)):
        p = Path(item)
        return (p.name, stack.enter_context(open(p, "rb")), "application/octet-stream")
    return _file_tuple(item, index)


def _file_tuple(item: ImageInput, index: int) -> tuple[str, bytes, str]:
    if isinstance(item, tuple):
        name, data = item
        return (str(name), bytes(data), "application/octet-stream")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return (f"image{index:04d}", bytes(item), "application/octet-stream")
    p = Path(item)
    return (p.name, p.read_bytes(), "application/octet-stream")
