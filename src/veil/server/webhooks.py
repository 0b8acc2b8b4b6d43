"""Job-end webhooks: signed JSON POSTs, retried with exponential backoff in a background
thread (workers never wait on a receiver).

Signature: ``X-Veil-Signature: sha256=<hex>`` where ``hex = HMAC-SHA256(secret,
f"{X-Veil-Timestamp}.{body}")``. The secret is the API key's webhook secret (shown by
``veil keys create``) or, in open local mode, the server's own secret stored once in
``<data_dir>/webhook_secret`` (0600). ``X-Veil-Delivery`` stays the same across retries.

Target rules (checked at submit time and again before every attempt, against every
address the host resolves to): only ``http``/``https``; cloud-metadata and link-local
addresses (169.254.0.0/16, fe80::/10, 100.100.100.200, fd00:ec2::254, 168.63.129.16…)
are refused; loopback and private ranges are allowed only when the server itself is
bound to loopback (open local mode — a local tool posting to a local receiver). Set
``allow_private_webhooks`` to lift all of these. Redirects are never followed, and the
POST goes to the very address that was checked (no second DNS lookup).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

import veil

log = logging.getLogger("veil.server.webhooks")

#: Cloud metadata / host-agent endpoints, refused unless private webhooks are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle…
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",
    )
)
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))

SIGNATURE_HEADER = "X-Veil-Signature"
TIMESTAMP_HEADER = "X-Veil-Timestamp"


class WebhookURLError(ValueError):
    """The callback URL is not allowed."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_callback_url(url: str, *, allow_private: bool, allow_local: bool, resolve: bool = True) -> list[Address]:
    """Raise :class:`WebhookURLError` when ``url`` may not receive webhooks; return the
    addresses checked (none when private targets are allowed or nothing was resolved)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise WebhookURLError("callback_url must be a URL of at most 2048 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("callback_url must use http or https")
    host = parts.hostname
    if not host:
        raise WebhookURLError("callback_url has no host")
    if allow_private:
        return []
    try:
        addrs: list[Address] = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return []
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise WebhookURLError(f"callback_url host {host!r} does not resolve: {exc.strerror}") from None
        addrs = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for addr in addrs:
        _check_address(addr, allow_local=allow_local)
    return addrs


def pinned_request(url: str, addr: Address | None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` rewritten to connect to ``addr``, an address that was checked, with the
    ``Host`` header and TLS name (SNI and certificate check) of the original host: the
    HTTP client must not resolve the name again, or a DNS answer that changes between
    check and connect (DNS rebinding) could point the webhook at an internal address.
    Pinned connections are not kept alive (a pooled connection is matched by address
    alone and could otherwise serve another host name on the same address)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if addr is None or literal:
        return url, {}, {}
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise WebhookURLError(f"callback_url host {host!r} is not a valid host name") from None
    ip = f"[{addr}]" if isinstance(addr, ipaddress.IPv6Address) else str(addr)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + (ip if parts.port is None else f"{ip}:{parts.port}")
    host_header = ascii_host if parts.port is None else f"{ascii_host}:{parts.port}"
    headers = {"Host": host_header, "Connection": "close"}
    return parts._replace(netloc=netloc).geturl(), headers, {"sni_hostname": ascii_host}


def _check_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_local: bool) -> None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr in METADATA_ADDRESSES:
        raise WebhookURLError(f"callback_url points at a cloud metadata address ({addr})")
    if any(addr in net for net in LINK_LOCAL) or addr.is_link_local:
        raise WebhookURLError(f"callback_url points at a link-local address ({addr})")
    if addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        raise WebhookURLError(f"callback_url points at a non-routable address ({addr})")
    if not addr.is_global and not allow_local:
        raise WebhookURLError(f"callback_url points at a private or loopback address ({addr}); not allowed on this server")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, tolerance: float | None = 300) -> bool:
    """Receiver-side check: right HMAC and (when ``tolerance``) a fresh timestamp."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if tolerance is not None and abs(time.time() - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def server_secret(data_dir: Path) -> str:
    """The server's own webhook secret, created once (0600) in the data dir."""
    path = Path(data_dir) / "webhook_secret"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    value = "whsec_" + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(value + "\n")
    return value


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    secret: str = field(compare=False)
    event: str = field(compare=False)
    delivery_id: str = field(compare=False)
    job_id: str = field(compare=False)
    first: float = field(compare=False, default=0.0)
    attempts: int = field(compare=False, default=0)


class WebhookSender:
    """Delivers events from one background thread; never blocks the caller."""

    def __init__(
        self,
        *,
        allow_private: bool,
        allow_local: bool,
        timeout: float = 10.0,
        backoff: float = 1.0,
        max_seconds: float = 600.0,
        on_result: Callable[[str, str, int], None] | None = None,
    ):
        self.allow_private = allow_private
        self.allow_local = allow_local
        self.timeout = timeout
        self.backoff = backoff
        self.max_seconds = max_seconds
        self.on_result = on_result
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stop = False
            self._client = httpx.Client(
                timeout=self.timeout,
                follow_redirects=False,
                headers={"User-Agent": f"veil-webhook/{veil.__version__}"},
                trust_env=False,
            )
            self._thread = threading.Thread(target=self._loop, name="veil-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def send(self, url: str, event: str, payload: dict[str, Any], secret: str, job_id: str = "") -> str:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        now = time.time()
        d = _Delivery(now, next(self._seq), url, body, secret, event, "dlv_" + secrets.token_hex(8), job_id, first=now)
        with self._cond:
            heapq.heappush(self._heap, d)
            self._cond.notify()
        return d.delivery_id

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0].due > time.time()):
                    wait = None if not self._heap else max(0.0, self._heap[0].due - time.time())
                    self._cond.wait(wait)
                if self._stop:
                    return
                d = heapq.heappop(self._heap)
            try:
                self._attempt(d)
            except Exception:  # one odd delivery must not stop all later ones
                log.exception("webhook for job %s failed unexpectedly", d.job_id)
                self._report(d, "failed")

    def _attempt(self, d: _Delivery) -> None:
        d.attempts += 1
        try:
            addrs = check_callback_url(d.url, allow_private=self.allow_private, allow_local=self.allow_local)
        except WebhookURLError as exc:
            log.warning("webhook for job %s dropped: %s", d.job_id, exc)
            self._report(d, "refused")
            return
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Veil-Event": d.event,
            "X-Veil-Delivery": d.delivery_id,
            "X-Veil-Attempt": str(d.attempts),
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(d.secret, ts, d.body),
        }
        ok = False
        assert self._client is not None
        for addr in list(dict.fromkeys(addrs)) or [None]:  # each checked address in turn, as a resolver would
            try:
                url, pin_headers, extensions = pinned_request(d.url, addr)
                resp = self._client.post(url, content=d.body, headers={**headers, **pin_headers}, extensions=extensions)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.info("webhook for job %s: %s", d.job_id, exc)
                continue
            except (httpx.HTTPError, WebhookURLError) as exc:
                log.info("webhook for job %s: %s", d.job_id, exc)
                break
            ok = 200 <= resp.status_code < 300
            if not ok:
                log.info("webhook for job %s: receiver answered %s", d.job_id, resp.status_code)
            break
        if ok:
            self._report(d, "delivered")
            return
        delay = min(300.0, self.backoff * (2 ** (d.attempts - 1))) * random.uniform(0.9, 1.1)
        if time.time() + delay - d.first > self.max_seconds:
            log.warning("webhook for job %s given up after %d attempts", d.job_id, d.attempts)
            self._report(d, "failed")
            return
        d.due = time.time() + delay
        with self._cond:
            heapq.heappush(self._heap, d)
            self._cond.notify()
        self._report(d, "retrying")

    def _report(self, d: _Delivery, status: str) -> None:
        if self.on_result is not None:
            try:
                self.on_result(d.job_id, status, d.attempts)
            except Exception:  # noqa: BLE001 - bookkeeping must not kill the sender
                log.exception("webhook bookkeeping failed")
