"""Job-end webhooks: signed JSON POSTs, retried with exponential backoff by a small pool of
background threads (workers never wait on a receiver).

Delivery bounds: each attempt has a *total* time limit (``timeout``: connect, TLS, sending
and reading the answer's status line and headers together, checked before every read),
so a receiver that answers one byte a second, or never stops, is cut off; a cut-off
attempt is a failed attempt, retried like any other. Attempts run concurrently on
``concurrency`` threads, at most ``per_host`` of them to one receiver, so one slow
receiver holds at most ``per_host`` threads and never delays another's webhooks.

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

import base64
import heapq
import ipaddress
import itertools
import json
import logging
import os
import random
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote, urlsplit

import veil
from veil.signing import sign, verify_signature  # noqa: F401  (re-exported: the server signs with it)

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


#: NAT64 prefixes (RFC 6052 well-known, RFC 8215 local use): the last 32 bits are IPv4.
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(addr: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches through: IPv4-mapped (``::ffff:a.b.c.d``),
    6to4 (``2002:AABB:CCDD::``), Teredo (the client address) or NAT64; else ``None``."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if any(addr in net for net in NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _check_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_local: bool) -> None:
    inner = embedded_ipv4(addr)
    if inner is not None:  # judged by where it really goes
        addr = inner
    if addr.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        if not allow_local:
            raise WebhookURLError(f"callback_url points at a loopback address ({addr}); not allowed on this server")
        return
    if addr in METADATA_ADDRESSES:
        raise WebhookURLError(f"callback_url points at a cloud metadata address ({addr})")
    if any(addr in net for net in LINK_LOCAL) or addr.is_link_local:
        raise WebhookURLError(f"callback_url points at a link-local address ({addr})")
    if addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        raise WebhookURLError(f"callback_url points at a non-routable address ({addr})")
    if not addr.is_global and not allow_local:
        raise WebhookURLError(f"callback_url points at a private or loopback address ({addr}); not allowed on this server")


#: Most bytes of a receiver's answer read (status line and headers; the body never is).
MAX_ANSWER_HEAD = 16 * 1024


class AttemptError(OSError):
    """A webhook attempt that did not get a complete answer (``connect``: no connection)."""

    def __init__(self, message: str, *, connect: bool = False):
        super().__init__(message)
        self.connect = connect


def post_once(url: str, headers: Mapping[str, str], body: bytes, *, deadline: float, tls_name: str | None = None) -> int:
    """POST ``body`` to ``url`` and return the answer's status code, all before ``deadline``
    (``time.monotonic()``), or raise :class:`AttemptError`.

    ``url`` is what :func:`pinned_request` made (the checked address itself, or the name
    when private targets are allowed), ``tls_name`` the host name TLS checks. Every step
    gets only the time left (a per-read timeout would start again with every byte a
    trickling receiver sends); the answer counts only once its whole head has arrived.
    """
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AttemptError("no complete answer within the attempt's time limit")
        return remaining

    head = {k.lower(): v for k, v in headers.items()}
    head.setdefault("host", _host_header(parts))
    if parts.username is not None:  # credentials in the URL: HTTP basic authentication
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        head.setdefault("authorization", "Basic " + base64.b64encode(cred).decode("ascii"))
    head.update({"content-length": str(len(body)), "connection": "close"})
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (f"?{quote(parts.query, safe='/%:@!$&()*+,;=-._~?')}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1"] + [f"{k.title()}: {v}" for k, v in head.items()]
    if any(c in line for line in lines for c in "\r\n\x00"):
        raise AttemptError("refusing a header with a line break")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    try:
        sock = socket.create_connection((host, port), timeout=left())
    except OSError as exc:
        raise AttemptError(f"cannot connect: {exc}", connect=True) from None
    try:
        if https:
            sock.settimeout(left())  # CPython bounds the whole handshake by it
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=tls_name or host)
        view = memoryview(request)
        while view:  # a receiver that reads slowly gets no more time than one that does not
            sock.settimeout(left())
            view = view[sock.send(view) :]
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                status = _status_code(buf[:end])
                if 100 <= status < 200:  # an interim answer; the real one follows
                    buf = buf[end + 4 :]
                    continue
                return status
            if len(buf) > MAX_ANSWER_HEAD:
                raise AttemptError("the answer's head is too long")
            sock.settimeout(left())
            chunk = sock.recv(4096)
            if not chunk:
                raise AttemptError("the receiver closed the connection before answering")
            buf += chunk
    except AttemptError:
        raise
    except (OSError, ValueError) as exc:  # timeouts, resets, TLS failures, a garbled answer
        raise AttemptError(str(exc) or type(exc).__name__) from None
    finally:
        sock.close()


def _host_header(parts: Any) -> str:
    host = parts.hostname or ""
    try:
        ipaddress.IPv6Address(host)
        host = f"[{host}]"
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise AttemptError(f"callback_url host {host!r} is not a valid host name") from None
    return host if parts.port is None else f"{host}:{parts.port}"


def _status_code(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise AttemptError(f"not an HTTP answer: {line[:60]!r}")
    return int(code)


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


def deliver_once(url: str, body: bytes, secret: str, event: str, delivery_id: str, attempt: int, *, job_id: str,
                 allow_private: bool, allow_local: bool, timeout: float, user_agent: str) -> str:
    """One signed attempt: ``"delivered"`` (2xx), ``"refused"`` (the address is not
    allowed: never retried) or ``"failed"`` (retry later). Used by the in-process sender
    and by the distributed mode's queued webhook task."""
    deadline = time.monotonic() + timeout  # for the whole attempt, every address
    try:
        addrs = check_callback_url(url, allow_private=allow_private, allow_local=allow_local)
    except WebhookURLError as exc:
        log.warning("webhook for job %s dropped: %s", job_id, exc)
        return "refused"
    ts = str(int(time.time()))
    headers = {
        "User-Agent": user_agent,
        "Content-Type": "application/json",
        "X-Veil-Event": event,
        "X-Veil-Delivery": delivery_id,
        "X-Veil-Attempt": str(attempt),
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(secret, ts, body),
    }
    for addr in list(dict.fromkeys(addrs)) or [None]:  # each checked address in turn, as a resolver would
        try:
            target, pin_headers, extensions = pinned_request(url, addr)
            status = post_once(target, {**headers, **pin_headers}, body, deadline=deadline,
                               tls_name=extensions.get("sni_hostname"))  # fmt: skip
        except AttemptError as exc:
            log.info("webhook for job %s: %s", job_id, exc)
            if exc.connect and time.monotonic() < deadline:
                continue
            return "failed"
        except WebhookURLError as exc:
            log.info("webhook for job %s: %s", job_id, exc)
            return "failed"
        if 200 <= status < 300:
            return "delivered"
        log.info("webhook for job %s: receiver answered %s", job_id, status)
        return "failed"
    return "failed"


def payload_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


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
    receiver: str = field(compare=False, default="")  #: ``host:port``, for the per-receiver cap


def _receiver(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        return f"{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:
        return ""


class WebhookSender:
    """Delivers events from ``concurrency`` background threads; never blocks the caller.

    Due deliveries wait in one heap; each thread takes the earliest due one whose receiver
    has fewer than ``per_host`` attempts running, so a receiver that is slow (every attempt
    of it runs to ``timeout``) holds at most ``per_host`` threads, and the other receivers'
    webhooks go out on the rest.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        allow_local: bool,
        timeout: float = 10.0,
        backoff: float = 1.0,
        max_seconds: float = 600.0,
        concurrency: int = 8,
        per_host: int = 2,
        on_result: Callable[[str, str, int], None] | None = None,
    ):
        self.allow_private = allow_private
        self.allow_local = allow_local
        self.timeout = timeout
        self.backoff = backoff
        self.max_seconds = max_seconds
        self.concurrency = max(1, int(concurrency))
        self.per_host = max(1, min(int(per_host), self.concurrency))
        self.on_result = on_result
        self._heap: list[_Delivery] = []
        self._running: dict[str, int] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._user_agent = f"veil-webhook/{veil.__version__}"

    def start(self) -> None:
        with self._cond:
            if self._threads:
                return
            self._stop = False
            self._threads = [
                threading.Thread(target=self._loop, name=f"veil-webhooks-{i}", daemon=True)
                for i in range(self.concurrency)
            ]
            for t in self._threads:
                t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking deliveries; attempts under way end by their own time limit."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        self._threads = []

    def pending(self) -> int:
        """Deliveries waiting (for their time, or for a thread)."""
        with self._cond:
            return len(self._heap)

    def send(self, url: str, event: str, payload: dict[str, Any], secret: str, job_id: str = "") -> str:
        body = payload_body(payload)
        now = time.time()
        d = _Delivery(now, next(self._seq), url, body, secret, event, "dlv_" + secrets.token_hex(8), job_id,
                      first=now, receiver=_receiver(url))  # fmt: skip
        with self._cond:
            heapq.heappush(self._heap, d)
            self._cond.notify()
        return d.delivery_id

    def _take(self) -> tuple[_Delivery | None, float | None]:
        """The earliest due delivery whose receiver has a free slot (removed from the
        heap), else how long to wait (None: until an attempt ends or one is sent)."""
        now = time.time()
        best: _Delivery | None = None
        wait: float | None = None
        for d in self._heap:
            if self._running.get(d.receiver, 0) >= self.per_host:
                continue
            if d.due <= now:
                if best is None or d < best:
                    best = d
            else:
                wait = d.due - now if wait is None else min(wait, d.due - now)
        if best is None:
            return None, wait
        self._heap.remove(best)
        heapq.heapify(self._heap)
        return best, None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    d, wait = self._take()
                    if d is not None:
                        break
                    self._cond.wait(wait)
                self._running[d.receiver] = self._running.get(d.receiver, 0) + 1
            try:
                self._attempt(d)
            except Exception:  # one odd delivery must not stop all later ones
                log.exception("webhook for job %s failed unexpectedly", d.job_id)
                self._report(d, "failed")
            finally:
                with self._cond:
                    self._running[d.receiver] -= 1
                    if not self._running[d.receiver]:
                        del self._running[d.receiver]
                    self._cond.notify_all()  # a receiver's slot is free again

    def _attempt(self, d: _Delivery) -> None:
        d.attempts += 1
        outcome = deliver_once(d.url, d.body, d.secret, d.event, d.delivery_id, d.attempts, job_id=d.job_id,
                               allow_private=self.allow_private, allow_local=self.allow_local,
                               timeout=self.timeout, user_agent=self._user_agent)  # fmt: skip
        if outcome != "failed":
            self._report(d, outcome)
            return
        delay = min(300.0, self.backoff * (2 ** (d.attempts - 1))) * random.uniform(0.9, 1.1)
        if time.time() + delay - d.first > self.max_seconds:
            log.warning("webhook for job %s given up after %d attempts", d.job_id, d.attempts)
            self._report(d, "failed")
            return
        d.due = time.time() + delay
        self._report(d, "retrying")  # before it is queued again: a fast retry cannot be overwritten
        with self._cond:
            heapq.heappush(self._heap, d)
            self._cond.notify()

    def _report(self, d: _Delivery, status: str) -> None:
        if self.on_result is not None:
            try:
                self.on_result(d.job_id, status, d.attempts)
            except Exception:  # noqa: BLE001 - bookkeeping must not kill the sender
                log.exception("webhook bookkeeping failed")
