"""Every Redis key Gantry uses, named in one place (Redis holds what may be lost or must expire)."""
from __future__ import annotations

PREFIX = "gantry:"


def attestation_nonce(nonce: str) -> str:
    """Attestation nonce (boot/runtime/instance_verification), 600 s, consumed once."""
    return f"{PREFIX}nonce:{nonce}"


def boot_token(token: str) -> str:
    """Boot token issued by boot attestation, 600 s, bound to hotkey and VM name."""
    return f"{PREFIX}boot_token:{token}"


def rint_nonce(config_id: str) -> str:
    """Runtime-integrity nonce of a launch config, 7200 s, GETDEL once."""
    return f"{PREFIX}rint_nonce:{config_id}"


def signature_nonce(hotkey: str, nonce: str) -> str:
    """v2 signature replay guard, SET NX EX 600."""
    return f"{PREFIX}signonce:{hotkey}:{nonce}"


def rate_limit(user_id: str, bucket: str, window: int) -> str:
    return f"{PREFIX}ratelimit:{bucket}:{user_id}:{window}"


def events_stream() -> str:
    """Redis Stream of events for WatchEvents (capped length)."""
    return f"{PREFIX}events"


def instance_logs(instance_id: str) -> str:
    return f"{PREFIX}logs:{instance_id}"


def readiness_probe() -> str:
    return f"{PREFIX}probe"


def session_changes(session_id: str) -> str:
    """Pub/sub channel announcing a change of one broker session (WatchSession wakes on it)."""
    return f"{PREFIX}broker:session:{session_id}"


def scale_target(chute_id: str) -> str:
    """Target instance count of a chute, written by an autoscaler; read by the launch scaling gates."""
    return f"{PREFIX}scale:{chute_id}"


def events_relayed(outbox_id: int) -> str:
    """Marker that outbox row `outbox_id` is in the events stream (SET NX by the relay script, expires with the
    stream's age limit): a relay re-run after a crash between XADD and its commit skips the row."""
    return f"{PREFIX}events:relayed:{outbox_id}"


def events_trimmed() -> str:
    """Id of the newest entry trimmed from the events stream: a cursor older than it cannot be resumed."""
    return f"{PREFIX}events:trimmed"


def miner_stats(per_chute: bool, hotkey: str | None) -> str:
    """A GetStats result (serialised response) for these arguments; miner.stats_cache_seconds."""
    return f"{PREFIX}miner:stats:{int(per_chute)}:{hotkey or '*'}"


def miner_scores() -> str:
    """The GetScores result over every hotkey (a hotkey filter is applied to it); miner.stats_cache_seconds."""
    return f"{PREFIX}miner:scores"


def miner_unique_chute_history(hotkey: str) -> str:
    """A hotkey's GetUniqueChuteHistory points (serialised response); miner.stats_cache_seconds."""
    return f"{PREFIX}miner:uqhist:{hotkey}"
