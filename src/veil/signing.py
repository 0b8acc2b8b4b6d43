"""Webhook signatures: the server signs, receivers verify, with one definition of both.

Neutral ground below the server and the client, so that ``veil.client`` (and a webhook
receiver using it) never imports the server package.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp.body`` under ``secret``."""
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
