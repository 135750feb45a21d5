"""Associated data of an instance's encrypted columns: a blob decrypts only in the row it was written for."""
from __future__ import annotations


def symmetric_key_context(instance_id: str) -> bytes:
    return f"instance:{instance_id}:symmetric_key".encode()


def rint_session_key_context(instance_id: str) -> bytes:
    return f"instance:{instance_id}:rint_session_key".encode()
