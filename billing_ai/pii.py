"""Keyed-hash tokens for personal data.

Connectors replace names and e-mail addresses with tokens before anything is
landed, so the warehouse never holds PII. The token is an HMAC-SHA256 under a
key from the environment: stable (joins and counts still work) but not
reversible without the key, and unlinkable across deployments with different
keys. What a push needs (an e-mail address) is read from the platform then.
"""

from __future__ import annotations

import hashlib
import hmac

PII_KEY_ENV = "BILLING_AI_PII_KEY"


def tokenize(value: str | None, key: str, kind: str) -> str | None:
    """Token for ``value`` (None stays None). ``kind`` keeps e.g. names and
    e-mails in separate token spaces. E-mails are case-folded first."""
    if value is None or value == "":
        return None
    if not key:
        raise ValueError(f"{PII_KEY_ENV} is empty: refusing to tokenize with no key")
    norm = value.strip().lower() if kind == "email" else value.strip()
    digest = hmac.new(key.encode(), f"{kind}:{norm}".encode(), hashlib.sha256).hexdigest()
    return f"tok_{kind}_{digest[:32]}"
