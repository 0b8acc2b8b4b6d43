"""Short-lived download links: one result, readable without sending the API key.

A ``<video src>`` element (and a plain ``<a download>``) cannot send an
``Authorization`` header, and fetching a video of gigabytes into a browser tab as a Blob
is no answer. So an authorized caller asks ``POST .../images/{n}/link`` for a URL with
a ``token`` that opens that one result, for its owner, for at most :data:`LINK_TTL`
seconds (never past the job's expiry): the player then makes its Range requests
itself. Tokens are HMACs under a key that lives only in this process's memory, so a
restart voids them all, as it voids the results they point at. A revoked key's links
stop working with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

#: Seconds a download link works at most.
LINK_TTL = 3600


@dataclass(frozen=True)
class Grant:
    """Who a valid token speaks for: the key that owns the job (``None``: no key)."""

    key_id: str | None


class DownloadTokens:
    """``key``: the signing key (API nodes of one Redis share one, so a link issued by
    one node downloads from any); by default a random one of this process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, job_id: str, n: int, key_id: str | None, expires: int) -> str:
        msg = f"{job_id}\n{n}\n{key_id or ''}\n{expires}".encode()
        return base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()[:18]).decode()

    def issue(self, job_id: str, n: int, key_id: str | None, not_after: float) -> tuple[str, int]:
        """``(token, expires_at)`` for result ``n`` of ``job_id``."""
        expires = int(min(time.time() + LINK_TTL, not_after))
        raw = f"{expires}.{key_id or ''}.{self._mac(job_id, n, key_id, expires)}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("="), expires

    def verify(self, token: str, job_id: str, n: int) -> Grant | None:
        """The grant of a valid, unexpired token for exactly this result, else ``None``."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            expires_s, key_id, mac = raw.split(".", 2)
            expires = int(expires_s)
        except (ValueError, UnicodeDecodeError):
            return None
        if expires < time.time():
            return None
        if not hmac.compare_digest(mac, self._mac(job_id, n, key_id or None, expires)):
            return None
        return Grant(key_id or None)
