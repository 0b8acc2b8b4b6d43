"""Webhooks: signed delivery to a real receiver, retries, refused targets."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from test_server_support import (
    FAST,
    Receiver,
    assert_problem,
    photo_files,
    start_server,
    wait_job,
)

from veil.server.config import ServerConfig
from veil.server.webhooks import (
    WebhookURLError,
    check_callback_url,
    server_secret,
    sign,
    verify_signature,
)


@pytest.fixture(scope="module")
def srv():
    s = start_server(ServerConfig(data_dir=Path(tempfile.mkdtemp()), webhook_backoff=0.1, webhook_max_seconds=20))
    yield s
    s.stop()


def _submit(client, callback_url, headers=None):
    """Two small real photos (one face each), fast preset."""
    return client.post(
        "/api/v1/jobs",
        files=photo_files(2),
        data={"callback_url": callback_url, "options": json.dumps(FAST)},
        headers=headers or {},
    )


def _wait_for(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_webhook_delivered_and_signed_with_server_secret(srv):
    rec = Receiver()
    try:
        with srv.client() as c:
            job = _submit(c, rec.url)
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            assert rec.event.wait(60)
            req = rec.requests[0]
            h = req["headers"]
            secret = server_secret(srv.state.config.data_dir)
            assert h["x-veil-signature"] == sign(secret, h["x-veil-timestamp"], req["body"])
            assert verify_signature(secret, h["x-veil-timestamp"], req["body"], h["x-veil-signature"])
            assert not verify_signature("wrong", h["x-veil-timestamp"], req["body"], h["x-veil-signature"])
            event = rec.json()
            assert event["event"] == "job.done" and h["x-veil-event"] == "job.done"
            assert event["job"]["id"] == job_id and event["job"]["images"] == 2 and event["job"]["done"] == 2
            assert event["job"]["detections"]["face"] == 2
            assert event["links"]["archive"].startswith(srv.url) and len(event["links"]["images"]) == 2
            _wait_for(lambda: c.get(f"/api/v1/jobs/{job_id}").json()["webhook"]["status"] == "delivered")
        secret_file = srv.state.config.data_dir / "webhook_secret"
        assert (secret_file.stat().st_mode & 0o777) == 0o600
    finally:
        rec.close()


def test_webhook_retried_until_receiver_recovers_and_uses_key_secret(tmp_path):
    srv = start_server(ServerConfig(data_dir=tmp_path, require_keys=True, webhook_backoff=0.1, webhook_max_seconds=20))
    rec = Receiver(fail_first=2)
    try:
        created = srv.state.keys.create("hooks")
        with srv.client(Authorization=f"Bearer {created.token}") as c:
            job_id = _submit(c, rec.url).json()["id"]
            assert rec.event.wait(60)
            assert rec.attempts == 3
            req = rec.requests[0]
            h = req["headers"]
            assert h["x-veil-attempt"] == "3"
            assert verify_signature(created.key.secret, h["x-veil-timestamp"], req["body"], h["x-veil-signature"])
            _wait_for(lambda: c.get(f"/api/v1/jobs/{job_id}").json()["webhook"] == {"status": "delivered", "attempts": 3})
    finally:
        rec.close()
        srv.stop()


def test_webhook_gives_up_after_bounded_time(tmp_path):
    srv = start_server(ServerConfig(data_dir=tmp_path, webhook_backoff=0.05, webhook_max_seconds=0.5))
    rec = Receiver(fail_first=10_000)
    try:
        with srv.client() as c:
            job_id = _submit(c, rec.url).json()["id"]
            _wait_for(lambda: c.get(f"/api/v1/jobs/{job_id}").json().get("webhook", {}).get("status") == "failed")
            assert 2 <= rec.attempts < 20
            # the job itself is unaffected
            assert wait_job(c, job_id)["status"] == "done"
    finally:
        rec.close()
        srv.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://100.100.100.200/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "not a url",
    ],
)
def test_refused_callback_urls(srv, url):
    with srv.client() as c:
        assert_problem(_submit(c, url), 422, "callback_url")


def test_callback_url_rules():
    # loopback/private only in open local mode (allow_local), metadata never without the flag
    check_callback_url("http://127.0.0.1:9/x", allow_private=False, allow_local=True)
    check_callback_url("http://10.0.0.5/x", allow_private=False, allow_local=True)
    for url in ("http://127.0.0.1/x", "http://10.1.2.3/x", "http://192.168.1.1/x"):
        with pytest.raises(WebhookURLError):
            check_callback_url(url, allow_private=False, allow_local=False)
    with pytest.raises(WebhookURLError):
        check_callback_url("http://169.254.169.254/", allow_private=False, allow_local=True)
    check_callback_url("http://169.254.169.254/", allow_private=True, allow_local=False)
    check_callback_url("https://93.184.215.14/hook", allow_private=False, allow_local=False)


def test_webhook_posts_to_the_checked_address_without_a_second_lookup(monkeypatch):
    """DNS rebinding: the host is resolved once per attempt, checked, and connected to;
    the receiver still sees the original Host header."""
    import socket

    from veil.server.webhooks import WebhookSender, pinned_request

    rec = Receiver()
    port = int(rec.url.rsplit(":", 1)[1].split("/")[0])
    lookups: list[str] = []
    real = socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):  # the outside world: a name with two addresses,
        if host == "hooks.example":  # the first one dead (nothing listens on 127.0.0.2)
            lookups.append(host)
            return real("127.0.0.2", *args, **kwargs) + real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    sender = WebhookSender(allow_private=False, allow_local=True, backoff=0.1, max_seconds=10)
    sender.start()
    try:
        sender.send(f"http://hooks.example:{port}/hook", "job.done", {"ok": True}, "s3cret", job_id="j1")
        assert rec.event.wait(30)
        assert rec.requests[0]["headers"]["host"] == f"hooks.example:{port}"
        assert lookups == ["hooks.example"]  # checked once; httpx did not resolve it again
    finally:
        sender.stop()
        rec.close()
    ip = __import__("ipaddress").ip_address
    url, headers, ext = pinned_request("https://hooks.example/x?y=1", ip("2001:db8::1"))
    assert url == "https://[2001:db8::1]/x?y=1" and ext == {"sni_hostname": "hooks.example"}
    assert headers == {"Host": "hooks.example", "Connection": "close"}
    url, headers, ext = pinned_request("https://user:pw@bücher.example:8443/x", ip("93.184.215.14"))
    assert url == "https://user:pw@93.184.215.14:8443/x"
    assert headers["Host"] == "xn--bcher-kva.example:8443" and ext == {"sni_hostname": "xn--bcher-kva.example"}
    assert pinned_request("http://127.0.0.1:9/x", None) == ("http://127.0.0.1:9/x", {}, {})


class Trickler:
    """A raw-socket receiver on 127.0.0.1 that reads the request, then answers one byte
    every ``interval`` seconds: ``answer`` (a complete, valid 200) or, with ``forever``,
    header lines that never end. Records when the sender gives up on the connection."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", interval: float = 0.2,
                 forever: bool = False):  # fmt: skip
        import socket
        import threading

        self.answer, self.interval, self.forever = answer, interval, forever
        self.connected = threading.Event()  # a request has arrived and the trickle began
        self.closed = threading.Event()  # the sender closed a connection before the answer ended
        self.connections = 0
        self.finished = 0  # answers sent to the end
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        import itertools
        import select

        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.connections += 1
            self.connected.set()
            stream = itertools.cycle(b"X-Wait: still-thinking\r\n") if self.forever else iter(self.answer)
            for byte in stream:
                if self._stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    self.closed.set()
                    return
                readable, _, _ = select.select([conn], [], [], self.interval)  # the pace, and the sender's close
                if readable and not conn.recv(65536):
                    self.closed.set()
                    return
            self.finished += 1

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def test_a_trickling_receiver_does_not_stall_another_keys_webhook(tmp_path):
    """Key A's receiver never stops trickling its answer; key B's webhook still arrives
    while A's attempt runs, and A's attempt is cut off at the time limit, not delivered."""
    srv = start_server(ServerConfig(data_dir=tmp_path, require_keys=True, webhook_timeout=5, webhook_backoff=60,
                                    webhook_max_seconds=600))  # fmt: skip
    slow, fast = Trickler(forever=True), Receiver()
    try:
        key_a, key_b = srv.state.keys.create("slow"), srv.state.keys.create("fast")
        with srv.client(Authorization=f"Bearer {key_a.token}") as a, srv.client(Authorization=f"Bearer {key_b.token}") as b:
            job_a = _submit(a, slow.url).json()["id"]
            assert slow.connected.wait(60), "A's webhook never started"
            job_b = _submit(b, fast.url).json()["id"]
            assert fast.event.wait(60), "B's webhook never arrived"
            assert not slow.closed.is_set(), "B's webhook waited for A's attempt to end"
            _wait_for(lambda: b.get(f"/api/v1/jobs/{job_b}").json()["webhook"]["status"] == "delivered")
            assert a.get(f"/api/v1/jobs/{job_a}").json()["webhook"]["status"] == "pending"  # still trickling
            assert slow.closed.wait(60), "A's trickling receiver was never cut off"
            _wait_for(lambda: a.get(f"/api/v1/jobs/{job_a}").json()["webhook"] == {"status": "retrying", "attempts": 1})
            assert verify_signature(key_b.key.secret, fast.requests[0]["headers"]["x-veil-timestamp"],
                                    fast.requests[0]["body"], fast.requests[0]["headers"]["x-veil-signature"])  # fmt: skip
    finally:
        slow.close()
        fast.close()
        srv.stop()


def test_an_answer_slower_than_the_time_limit_is_a_failed_attempt():
    """A valid 200 sent one byte at a time, finishing after the limit: each byte comes well
    within a per-read timeout, but the attempt as a whole is over time, so it is cut off,
    retried and finally given up; never recorded as delivered."""
    from veil.server.webhooks import WebhookSender

    slow = Trickler(interval=0.25)  # the 41-byte answer takes ~10 s
    results: list[tuple[str, int]] = []
    sender = WebhookSender(allow_private=False, allow_local=True, timeout=1.5, backoff=0.2, max_seconds=2.5,
                           on_result=lambda job, status, attempts: results.append((status, attempts)))  # fmt: skip
    sender.start()
    try:
        sender.send(slow.url, "job.done", {"ok": True}, "s3cret", job_id="j1")
        _wait_for(lambda: results and results[-1][0] in ("failed", "delivered"), timeout=60)
        assert [s for s, _ in results[:-1]] == ["retrying"] * (len(results) - 1) and len(results) >= 2
        assert "delivered" not in [s for s, _ in results]
        assert slow.finished == 0 and slow.connections == results[-1][1]
    finally:
        sender.stop()
        slow.close()


def test_one_receiver_holds_at_most_two_sender_threads():
    """Many webhooks to one slow receiver: at most ``per_host`` attempts at once to it,
    so the other threads stay free for everyone else."""
    from veil.server.webhooks import WebhookSender

    slow, fast = Trickler(forever=True), Receiver()
    sender = WebhookSender(allow_private=False, allow_local=True, timeout=4, backoff=60, max_seconds=600,
                           concurrency=3, per_host=2)  # fmt: skip
    sender.start()
    try:
        for i in range(5):
            sender.send(slow.url, "job.done", {"i": i}, "s3cret", job_id=f"slow{i}")
        _wait_for(lambda: slow.connections == 2)
        sender.send(fast.url, "job.done", {"ok": True}, "other", job_id="fast")
        assert fast.event.wait(30)
        assert slow.connections == 2 and not slow.closed.is_set()  # the third thread served the other receiver
    finally:
        slow.close()  # ends the attempts under way, so that stop() need not wait for their limit
        sender.stop()
        fast.close()


def test_https_webhook_to_the_checked_address_with_the_host_names_certificate(monkeypatch, tmp_path):
    """TLS: the attempt connects to the checked address and checks the certificate
    against the URL's host name (SNI); a certificate for another name is refused."""
    import datetime
    import socket
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from veil.server.webhooks import WebhookSender

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    got: list[dict] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append({"host": self.headers["Host"], "body": body})
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    real = socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):  # the outside world: two names for this machine
        if host in ("hooks.example", "other.example"):
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust the test's own certificate
    results: list[tuple[str, str]] = []
    sender = WebhookSender(allow_private=False, allow_local=True, timeout=5, backoff=60, max_seconds=600,
                           on_result=lambda job, status, attempts: results.append((job, status)))  # fmt: skip
    sender.start()
    try:
        sender.send(f"https://other.example:{port}/hook", "job.done", {"n": 1}, "s3cret", job_id="wrong-name")
        sender.send(f"https://hooks.example:{port}/hook", "job.done", {"n": 2}, "s3cret", job_id="right-name")
        assert arrived.wait(30)
        _wait_for(lambda: len(results) == 2)
        assert dict(results) == {"right-name": "delivered", "wrong-name": "retrying"}
        assert got == [{"host": f"hooks.example:{port}", "body": b'{"n":2}'}]
    finally:
        sender.stop()
        httpd.shutdown()
        httpd.server_close()
