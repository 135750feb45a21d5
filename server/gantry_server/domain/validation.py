"""Input checks shared by every service; each failure names the offending field (BadRequest)."""
from __future__ import annotations

import re

from ..errors import FieldViolation, InvalidArgument

_SS58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{46,48}$")


class Violations:
    """Collect every problem of one request, then raise them together.

    >>> v = Violations(); v.require(False, "nodes[0].hotkey", "must be an SS58 address"); v.raise_if_any()
    Traceback (most recent call last):
    ...
    gantry_server.errors.InvalidArgument: nodes[0].hotkey: must be an SS58 address
    """

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def require(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.items.append(FieldViolation(field, description))
        return ok

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument.fields(self.items)


def is_ss58(value: str) -> bool:
    return bool(_SS58.match(value))
