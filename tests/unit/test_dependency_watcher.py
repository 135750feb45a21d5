"""The dependency watcher's verdict: a refused connection takes the process out of service at once; a probe that
only timed out (a busy pool, a saturated core) does so only after TIMEOUTS_TO_TRIP in a row, and a timeout never
brings a down dependency back."""
import asyncio


from gantry_server.dependencies import DependencyWatcher


class Probes(DependencyWatcher):
    """The real watcher with its two probes replaced by scripted outcomes: 'ok', 'refused' or 'hang'."""

    def __init__(self):
        self.changes: list[bool] = []

        async def on_change(ok: bool) -> None:
            self.changes.append(ok)

        super().__init__(None, None, on_change, timeout=0.01, timeouts_to_trip=3)
        self.db = "ok"
        self.redis = self  # ping() below

    async def _outcome(self, what: str) -> None:
        if what == "refused":
            raise ConnectionRefusedError("connection refused")
        if what == "hang":
            await asyncio.Event().wait()

    async def _select_one(self) -> None:
        await self._outcome(self.db)

    async def ping(self) -> None:
        await self._outcome("ok")


async def test_a_refused_database_is_down_at_once_and_back_at_the_first_answer():
    w = Probes()
    w.db = "refused"
    await w.check()
    assert (w.database_ok, w.changes) == (False, [False])
    w.db = "ok"
    await w.check()
    assert (w.database_ok, w.changes) == (True, [False, True])


async def test_a_busy_database_is_not_down_until_it_times_out_three_times_in_a_row():
    w = Probes()
    w.db = "hang"
    await w.check()
    await w.check()
    assert w.database_ok and w.changes == []
    w.db = "ok"  # it answered: the count starts again
    await w.check()
    w.db = "hang"
    await w.check()
    await w.check()
    assert w.database_ok and w.changes == []
    await w.check()
    assert (w.database_ok, w.changes) == (False, [False])


async def test_a_timeout_never_brings_a_down_database_back():
    w = Probes()
    w.db = "refused"
    await w.check()
    w.db = "hang"
    for _ in range(5):
        await w.check()
    assert (w.database_ok, w.changes) == (False, [False])
