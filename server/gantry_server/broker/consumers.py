"""Who a broker call acts for: the authenticated consumer (GANTRY_BROKER_AUTH=required) or, open, nobody in particular.

Required: the consumer IS the API-key/user-token user (`current_caller.get().user_id`); a request's `consumer_id`
may be left out or repeat it, and naming anybody else is refused (PERMISSION_DENIED, reason CONSUMER_MISMATCH:
the caller asked to act for another consumer, which no existing or missing session can tell them anything
about). Every read and write is then scoped to that owner, and another consumer's session answers NOT_FOUND.
Open: no owner; `consumer_id` is taken as sent (the seed's behaviour).

>>> owner_of_call("", required=False) is None
True
"""
from __future__ import annotations

from ..domain.auth.caller import current_caller
from ..errors import PermissionDenied, Unauthenticated


def owner_of_call(requested: str, *, required: bool) -> str | None:
    """The consumer every row of this call must belong to; None when the broker is open."""
    if not required:
        return None
    user_id = current_caller.get().user_id
    if not user_id:  # the interceptor authenticates consumer RPCs; refuse rather than serve everyone
        raise Unauthenticated("broker calls need an API key or user token", reason="CONSUMER_AUTH_MISSING")
    requested = requested.strip()
    if requested and requested != user_id:
        raise PermissionDenied(f"consumer_id {requested!r} is not the authenticated consumer; leave it out or "
                               f"send your own ({user_id})", reason="CONSUMER_MISMATCH")
    return user_id
