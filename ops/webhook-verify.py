#!/usr/bin/env python3
"""Verify a chatq webhook delivery with Python's standard library alone (Standard Webhooks).

    WEBHOOK_SECRET=whsec_... ops/webhook-verify.py WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE < body

Exits 0 when the signature is valid and the timestamp recent, 1 otherwise. The system test
`webhooks::deliveries_verify_with_an_independent_implementation` runs it on real deliveries;
`verify` below is the function the README's "Webhooks" section shows.
"""
import base64
import hashlib
import hmac
import os
import sys
import time


def verify(secret: str, headers: dict, body: bytes, tolerance: int = 300) -> bool:
    """True if `body` with these `webhook-*` headers was signed with `secret` (whsec_...)."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old or too new: a replay
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # The header may carry several space-separated signatures (during a secret rotation).
    return any(
        hmac.compare_digest(sig[len("v1,"):], expected)
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


def main() -> int:
    if len(sys.argv) != 4 or "WEBHOOK_SECRET" not in os.environ:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    headers = dict(zip(["webhook-id", "webhook-timestamp", "webhook-signature"], sys.argv[1:]))
    ok = verify(os.environ["WEBHOOK_SECRET"], headers, sys.stdin.buffer.read())
    print("valid" if ok else "INVALID")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
