"""A rented machine without the rent: a real SSH server on loopback that runs real commands in a directory.

`SshHost` backs every instance of the simulated provider, and the fake Vast.ai/TensorDock servers of the tests
can back theirs with it too, so provisioning, SSH verification, idle probes and destruction run for real::

    host = SshHost(tmp_path / "instance-1", gpu_name="RTX 4090")
    addr, port = await host.start([keypair.public_openssh])   # ssh -i key -p PORT root@127.0.0.1 works now
    host.set_gpu_utilization(80)                               # what `nvidia-smi` reports inside
    await host.stop()                                          # port refuses, sessions and their processes end

Security: commands run as the Gantry process's own OS user (there is no root here, "root" is only the login
name), in the host's working directory (a temporary directory, never the data directory), with HOME there too and
a scrubbed environment (HOME, PATH, the instance's env: never Gantry's own variables, which hold database URLs
and keys). Once a host has started, the Gantry process is made non-dumpable (Linux `PR_SET_DUMPABLE` 0), so a
shell of the same OS user can neither read `/proc/<gantry pid>/environ` (GANTRY_KEK, GANTRY_ADMIN_TOKEN, provider
keys) or its memory nor attach a debugger. SFTP/SCP are chrooted to the working directory. It listens on loopback
only and accepts only the given public keys: no passwords, no keyboard-interactive, no agent or port forwarding.

Hidden directories (`hidden_dirs`: the simulated provider passes Gantry's data directory, which holds
`admin_token`, the KEK file of the embedded default and the embedded PostgreSQL and Redis files) are covered by
an empty, unreadable tmpfs in a private mount namespace of every command (`unshare --user --map-root-user
--mount`, unprivileged user namespaces): the shell sees an empty directory there. Where the kernel forbids
unprivileged user namespaces, commands run without the mask and a warning says so once (`masking_available()`).

What a shell can still read: every other file the Gantry OS user can, by absolute path (the user's real home,
for one), and it can connect to local services as that user. It is a shell for whoever may create a session: a
development tool, enabled only when configured (the embedded default), refused beyond loopback, and guarded from
web pages by the REST gateway (Origin, Host and Content-Type checks, gantry_gateway/browser.py). Run it under an
OS user of its own, or not at all, on a machine with secrets.

There is no GPU and no sshd, so two commands are answered from the host's simulated state through small
programs placed first on PATH: `nvidia-smi` (GPU names, memory, utilisation) and `ps -eo pid=,args=` (one
"sshd: root@pts/N" line per interactive login, which is how the broker's probe counts logins on a real host).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import weakref
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import asyncssh

_host_key: asyncssh.SSHKey | None = None


def _server_host_key() -> asyncssh.SSHKey:
    """One Ed25519 host key per process: generating one per instance would only cost time."""
    global _host_key
    if _host_key is None:
        _host_key = asyncssh.generate_private_key("ssh-ed25519")
    return _host_key


_PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3

# Runs in a new user+mount namespace: an empty tmpfs (mode 000) over each directory before `--`, then the
# command after it in a second, nested user+mount namespace. The nesting matters: mounts inherited from a more
# privileged mount namespace are locked, so the shell (root of its own namespace) cannot unmount the mask; in the
# first namespace it could. `unshare` execs without forking, so a PTY session keeps its controlling terminal.
_MASK = ('while [ "$1" != -- ]; do mount -t tmpfs -o size=4k,mode=000 gantry-hidden "$1" || exit 125; shift; done; '
         'shift; exec unshare --user --map-root-user --mount -- "$@"')
_masking: bool | None = None


def masking_available() -> bool:
    """Whether this machine lets an unprivileged process hide directories in a mount namespace of its own
    (checked once per process)."""
    global _masking
    if _masking is None:
        unshare = shutil.which("unshare")
        ok = False
        if unshare is not None:
            import subprocess  # noqa: PLC0415 - once per process

            with contextlib.suppress(OSError, subprocess.SubprocessError):
                ok = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "--", "/bin/sh", "-c", _MASK,
                                     "gantry-mask", tempfile.gettempdir(), "--", "true"], timeout=10,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if not ok:
            import logging  # noqa: PLC0415

            logging.getLogger(__name__).warning(
                "simulated hosts: unprivileged mount namespaces are not available here; shells can read Gantry's "
                "data directory (admin token, KEK file) by absolute path")
        _masking = ok
    return _masking


def masked(argv: Sequence[str], hidden: Sequence[Path]) -> list[str]:
    """`argv` run with each of `hidden` covered by an empty tmpfs (unchanged when nothing is to be hidden or the
    machine cannot)."""
    if not hidden or not masking_available():
        return list(argv)
    return [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", "--", "/bin/sh", "-c",
            _MASK, "gantry-mask", *(str(d) for d in hidden), "--", *argv]


def _not_dumpable() -> None:
    """Keep same-user shells out of this process's /proc files (environ, mem) and ptrace. Linux only; children
    are dumpable again after exec, so the shells themselves are unaffected."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def process_dumpable() -> bool | None:
    """Whether this process may be read through /proc or ptrace by its own user (None: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415

    return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))


def _reserve_port(host: str) -> socket.socket:
    """A bound, not yet listening socket: the port is ours and connecting to it is refused (a booting machine)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    return sock


_NVIDIA_SMI = """\
import json, sys
state = json.load(open(STATE))
gpus, args = state["gpus"], sys.argv[1:]
query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
if query is None:
    print(f"NVIDIA-SMI {state['driver_version']}   Driver Version: {state['driver_version']}   "
          f"CUDA Version: {state['cuda_version']}")
    for i, g in enumerate(gpus):
        print(f"|  {i}  {g['name']:<28} | {g['memory_mib']:>6}MiB | {round(g['utilization']):>3}%  Default |")
    sys.exit(0)
fmt = next((a.split("=", 1)[1] for a in args if a.startswith("--format=")), "csv")
units = "nounits" not in fmt
fields = [f.strip() for f in query.split(",")]
def value(i, g, f):
    table = {"index": str(i), "name": g["name"], "count": str(len(gpus)),
             "utilization.gpu": f"{round(g['utilization'])}" + (" %" if units else ""),
             "memory.total": f"{g['memory_mib']}" + (" MiB" if units else ""),
             "memory.used": "0" + (" MiB" if units else ""),
             "driver_version": state["driver_version"]}
    if f not in table:
        print(f'Field "{f}" is not a valid field to query.'); sys.exit(2)
    return table[f]
if "noheader" not in fmt:
    print(", ".join(fields))
for i, g in enumerate(gpus):
    print(", ".join(value(i, g, f) for f in fields))
"""

_PS = """\
import json, os, sys
if sys.argv[1:] == ["-eo", "pid=,args="]:
    state = json.load(open(STATE))
    for n in range(state["logins"]):
        print(f"{4190000 + n} sshd: {state['user']}@pts/{n}")
    sys.exit(0)
os.environ["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != BIN)
try:
    os.execvp("ps", ["ps", *sys.argv[1:]])
except OSError:
    print("ps: not found", file=sys.stderr); sys.exit(127)
"""


class SshHost:
    """A real SSH server on loopback for one login name, accepting only the given keys (see module doc)."""

    def __init__(self, workdir: Path | None = None, *, user: str = "root", host: str = "127.0.0.1",
                 gpu_name: str = "RTX 4090", gpu_count: int = 1, vram_gb: int = 24, cuda_version: str = "12.4",
                 env: Mapping[str, str] | None = None, hidden_dirs: Iterable[Path] = ()) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gantry-sshhost-"))
        # Directories the shells must not see (module doc); one that holds the working directory cannot be.
        work = self.workdir.resolve()
        self.hidden_dirs = [d for d in (Path(h).resolve() for h in hidden_dirs)
                            if d.is_dir() and d != work and d not in work.parents]
        self.user = user
        self.host = host
        self.port: int | None = None
        self._env = dict(env or {})
        self._marker = f"GANTRY_SIMULATED_HOST={secrets.token_hex(8)}"  # in every session's environment
        self._allowed: set[bytes] = set()
        self._sock: socket.socket | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._children: set[int] = set()  # process group ids of running commands
        self._open_logins = 0
        self._simulated_logins = 0
        self._state = {"gpus": [{"name": f"NVIDIA {gpu_name}", "memory_mib": vram_gb * 1024, "utilization": 0.0}
                                for _ in range(max(gpu_count, 0))],
                       "driver_version": "550.54.15", "cuda_version": cuda_version, "logins": 0, "user": user}
        self._sim_dir = self.workdir / ".gantry-sim"
        self._bin = self._sim_dir / "bin"
        self._install_shims()
        # Sessions' background jobs must not outlive Gantry even when nobody stopped the host.
        weakref.finalize(self, _kill_marked, self._marker)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def reserve(self) -> int:
        """Pick the port now, accept later: until `start`, connecting is refused, like a booting machine."""
        if self._sock is None:
            self._sock = _reserve_port(self.host)
            self.port = self._sock.getsockname()[1]
        assert self.port is not None
        return self.port

    async def start(self, authorized_keys: Iterable[str] | None = None) -> tuple[str, int]:
        """Listen (on the reserved port, else a new ephemeral one) and return (host, port)."""
        if authorized_keys is not None:
            self.set_authorized_keys(authorized_keys)
        if self._acceptor is not None:
            assert self.port is not None
            return self.host, self.port
        self.reserve()
        _not_dumpable()
        sock, self._sock = self._sock, None
        self._acceptor = await asyncssh.listen(
            sock=sock, server_factory=lambda: _Server(self), server_host_keys=[_server_host_key()],
            process_factory=self._run_session, encoding=None, line_editor=False, gss_host=None,
            allow_scp=True, sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=bytes(self.workdir)),
            agent_forwarding=False, x11_forwarding=False, config=None)
        assert self.port is not None
        return self.host, self.port

    async def stop(self) -> None:
        """Stop listening, drop every connection and kill every command still running. Idempotent.

        The directory is kept (a stopped instance keeps its disk), unless the host made it itself."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._connections):
            conn.close()
        for pgid in list(self._children):
            _kill_group(pgid, signal.SIGKILL)
        await asyncio.to_thread(_kill_marked, self._marker)  # what sessions left running: `cmd &`, nohup
        for conn in list(self._connections):
            await conn.wait_closed()
        self._connections.clear()
        self.port = None
        if self._own_workdir:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    # -- what the machine looks like from inside ---------------------------------------------------------------

    def set_authorized_keys(self, keys: Iterable[str]) -> None:
        """Replace the accepted keys (authorized_keys lines); ValueError when one does not parse."""
        allowed = set()
        for line in keys:
            try:
                allowed.add(asyncssh.import_public_key(line.strip()).public_data)
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise ValueError(f"not an SSH public key: {line[:40]!r}: {exc}") from None
        self._allowed = allowed

    def set_gpu_utilization(self, percent: float | Sequence[float]) -> None:
        """What `nvidia-smi` reports: one value for every GPU, or one per GPU."""
        values = [float(percent)] * len(self._state["gpus"]) if isinstance(percent, (int, float)) else list(percent)
        if len(values) != len(self._state["gpus"]):
            raise ValueError(f"{len(self._state['gpus'])} GPUs, got {len(values)} utilisation values")
        for gpu, value in zip(self._state["gpus"], values):
            gpu["utilization"] = value
        self._write_state()

    @property
    def simulated_logins(self) -> int:
        """Extra logins the probe sees without anyone connecting (tests of idle shutdown)."""
        return self._simulated_logins

    @simulated_logins.setter
    def simulated_logins(self, n: int) -> None:
        self._simulated_logins = n
        self._write_state()

    @property
    def interactive_sessions(self) -> int:
        """Open shell/PTY sessions plus simulated logins: what the broker's probe should report."""
        return self._open_logins + self._simulated_logins

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _install_shims(self) -> None:
        self._bin.mkdir(parents=True, exist_ok=True)
        state = self._sim_dir / "state.json"
        for name, body in (("nvidia-smi", _NVIDIA_SMI), ("ps", _PS)):
            path = self._bin / name
            path.write_text(f"#!{sys.executable} -I\nSTATE = {str(state)!r}\nBIN = {str(self._bin)!r}\n{body}")
            path.chmod(0o755)
        self._write_state()

    def _write_state(self) -> None:
        self._state["logins"] = self.interactive_sessions
        tmp = self._sim_dir / "state.json.tmp"
        with contextlib.suppress(FileNotFoundError):  # a session ending after its disk was deleted (destroy)
            tmp.write_text(json.dumps(self._state))
            os.replace(tmp, self._sim_dir / "state.json")

    def _environment(self, term: str | None) -> dict[str, str]:
        env = {"HOME": str(self.workdir), "USER": self.user, "LOGNAME": self.user, "SHELL": "/bin/sh",
               "LANG": "C.UTF-8", "PS1": f"{self.user}@gantry-sim:\\w$ ",
               "PATH": os.pathsep.join([str(self._bin), os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"])}
        if term:
            env["TERM"] = term
        env.update(self._env)
        name, value = self._marker.split("=", 1)
        env[name] = value
        return env

    # -- sessions ----------------------------------------------------------------------------------------------

    async def _run_session(self, process: asyncssh.SSHServerProcess) -> None:
        """Exec requests run `/bin/sh -c`; a shell request runs an interactive shell, on a real PTY if asked."""
        term = process.get_terminal_type()
        command = process.command
        interactive = term is not None or command is None
        if interactive:
            self._open_logins += 1
            self._write_state()
        try:
            if command is not None:
                argv = ["/bin/sh", "-c", command]
            elif term is not None:
                argv = [shutil.which("bash") or "/bin/sh", "-i"]
            else:
                argv = ["/bin/sh"]
            argv = masked(argv, self.hidden_dirs)
            env = self._environment(term)
            code = await (_run_on_pty(self, process, argv, env) if term else _run_on_pipes(self, process, argv, env))
        except (OSError, asyncssh.Error):
            code = 255
        finally:
            if interactive:
                self._open_logins -= 1
                self._write_state()
        with contextlib.suppress(OSError, asyncssh.Error):  # the client may have gone already
            process.exit(code)


class _Server(asyncssh.SSHServer):
    def __init__(self, host: SshHost) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._host._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._host._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self._host.user and key.public_data in self._host._allowed


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode  # killed by signal N -> 128+N, like a shell


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_marked(marker: str) -> None:
    """Kill every process that carries the host's marker in its environment: the background jobs its sessions
    started, whatever their process group. Linux (/proc) only; elsewhere the tracked process groups suffice."""
    proc, wanted = Path("/proc"), marker.encode()
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _signal_of(exc: Exception) -> int | None:
    if isinstance(exc, asyncssh.BreakReceived):
        return signal.SIGINT
    if isinstance(exc, asyncssh.SignalReceived):
        return getattr(signal, f"SIG{exc.signal}", None)
    return None


async def _run_on_pipes(host: SshHost, process: asyncssh.SSHServerProcess, argv: list[str],
                        env: dict[str, str]) -> int:
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=host.workdir, env=env, start_new_session=True)
    host._children.add(child.pid)

    async def feed() -> None:
        assert child.stdin is not None
        while True:
            try:
                data = await process.stdin.read(65536)
            except (asyncssh.BreakReceived, asyncssh.SignalReceived) as exc:
                if (sig := _signal_of(exc)) is not None:
                    _kill_group(child.pid, sig)
                continue
            except asyncssh.TerminalSizeChanged:
                continue
            if not data:
                break
            child.stdin.write(data)
            await child.stdin.drain()
        child.stdin.close()

    async def copy(src: asyncio.StreamReader, dst: asyncssh.SSHWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()

    feeder = asyncio.create_task(feed())
    try:
        assert child.stdout is not None and child.stderr is not None
        await asyncio.gather(copy(child.stdout, process.stdout), copy(child.stderr, process.stderr))
        return _exit_code(await child.wait())
    finally:
        feeder.cancel()
        if child.returncode is None:  # the client went away mid-command: hang up on it, as sshd would
            _kill_group(child.pid, signal.SIGKILL)
            await child.wait()
        host._children.discard(child.pid)


def _set_winsize(fd: int, size: tuple[int, int, int, int]) -> None:
    width, height, pixwidth, pixheight = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height or 24, width or 80, pixwidth, pixheight))


# The shell needs the terminal as its controlling tty (for ^C and job control). A preexec_fn cannot do it
# portably (uvloop runs it before the child's stdio is set up), so a two-line Python step execs into the shell.
_LOGIN_TTY = "import os, sys; os.login_tty(0); os.execvp(sys.argv[1], sys.argv[1:])"


async def _run_on_pty(host: SshHost, process: asyncssh.SSHServerProcess, argv: list[str],
                      env: dict[str, str]) -> int:
    master, slave = os.openpty()
    _set_winsize(master, process.term_size)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", _LOGIN_TTY, *argv, stdin=slave, stdout=slave, stderr=slave,
            cwd=host.workdir, env=env)
    finally:
        os.close(slave)
    host._children.add(child.pid)
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes] = asyncio.Queue()
    os.set_blocking(master, False)

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the slave side is gone, the shell has exited
            data = b""
        if not data:
            loop.remove_reader(master)
        output.put_nowait(data)

    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(os.dup(master), "wb", buffering=0))

    async def feed() -> None:
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.TerminalSizeChanged as exc:
                _set_winsize(master, exc.term_size)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived) as exc:
                if (sig := _signal_of(exc)) is not None:
                    _kill_group(child.pid, sig)
                continue
            writer.write(data or b"\x04")  # channel EOF: ^D to the line discipline
            if not data:
                return

    loop.add_reader(master, readable)
    feeder = asyncio.create_task(feed())
    exited = asyncio.ensure_future(child.wait())
    try:
        # The session ends when the shell exits, even if a background job still holds the terminal (as sshd).
        while True:
            getter = asyncio.ensure_future(output.get())
            await asyncio.wait({getter, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                process.stdout.write(b"".join(_drain(output, master)))
                break
            if not (data := getter.result()):
                break
            process.stdout.write(data)
            await process.stdout.drain()
        return _exit_code(await exited)
    finally:
        feeder.cancel()
        loop.remove_reader(master)
        writer.close()
        os.close(master)
        if child.returncode is None:
            _kill_group(child.pid, signal.SIGKILL)
            await child.wait()
        host._children.discard(child.pid)


def _drain(queue: asyncio.Queue[bytes], fd: int) -> Iterator[bytes]:
    """What the exited shell left: queued reads, then whatever is still buffered in the terminal."""
    while not queue.empty():
        yield queue.get_nowait()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # BlockingIOError: nothing more; EIO: slave closed
            return
        if not data:
            return
        yield data


class HealthServer:
    """The stand-in for an entrypoint workload's API: GET /health answers 200, anything else 404."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    def reserve(self) -> int:
        if self._sock is None:
            self._sock = _reserve_port(self.host)
            self.port = self._sock.getsockname()[1]
        assert self.port is not None
        return self.port

    async def start(self) -> tuple[str, int]:
        if self._server is None:
            self.reserve()
            sock, self._sock = self._sock, None
            self._server = await asyncio.start_server(self._answer, sock=sock)
        assert self.port is not None
        return self.host, self.port

    async def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):  # a silent client must not hold stop() (3.12 waits for them)
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self.port = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            ok = method in (b"GET", b"HEAD") and path.split(b"?")[0] == b"/health"
            body = b'{"status":"ok"}' if ok else b'{"error":"not found"}'
            status = b"200 OK" if ok else b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
