"""Secrets kept in the database sealed, never in plain text.

The key is derived from Django's SECRET_KEY with BLAKE2b (personalised for this
use), so a database copy alone does not reveal the Gitea token or the webhook
secret. Rotating SECRET_KEY makes sealed values unreadable: they must then be
entered again in the admin, which ``unseal`` says plainly.
"""

from __future__ import annotations

import base64

import nacl.exceptions
import nacl.secret
from nacl.encoding import RawEncoder
from nacl.hash import blake2b


class SealError(Exception):
    pass


def _box(secret_key: str) -> nacl.secret.SecretBox:
    key = blake2b(secret_key.encode(), person=b"aitbc-automation", digest_size=32, encoder=RawEncoder)
    return nacl.secret.SecretBox(key)


def seal(plain: str, *, secret_key: str) -> str:
    return base64.b64encode(_box(secret_key).encrypt(plain.encode())).decode("ascii")


def unseal(sealed: str, *, secret_key: str) -> str:
    try:
        return _box(secret_key).decrypt(base64.b64decode(sealed)).decode()
    except (ValueError, nacl.exceptions.CryptoError) as exc:
        raise SealError("cannot unseal a stored secret (SECRET_KEY changed?): enter it again in the admin") from exc


def mask(value: str | None) -> str:
    """What the admin shows for a secret: whether it is set, never any of it."""
    return "set (sealed)" if value else "not set"
