"""SSH verification, the idle probe and the entrypoint health check, against real servers on loopback."""
from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import sys
from datetime import datetime, timezone

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization

from gantry_server.broker.keys import generate_keypair
from gantry_server.broker.ssh import (PROBE_SCRIPT, SshCheckError, check_http, check_ssh, classify_exception,
                                      health_url, parse_probe_output, probe_activity)
from gantry_server.clock import ManualClock
from gantry_server.providers.simulated import HealthServer, SshHost

KEY = generate_keypair()
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
async def host(tmp_path):
    ssh_host = SshHost(tmp_path / "machine", gpu_count=2)
    await ssh_host.start([KEY.public_openssh])
    yield ssh_host
    await ssh_host.stop()


async def _expect(error_type: str, *args, **kwargs) -> SshCheckError:
    with pytest.raises(SshCheckError) as err:
        await check_ssh(*args, **kwargs)
    assert err.value.error_type == error_type, err.value
    return err.value


# -- check_ssh --------------------------------------------------------------------------------------------------

async def test_the_session_key_logs_in_and_echo_ok_passes(host):
    await check_ssh(host.host, host.port, "root", KEY.private_pem)


async def test_an_rsa_session_key_logs_in_too(tmp_path):
    rsa_key = generate_keypair("rsa")
    machine = SshHost(tmp_path / "rsa")
    addr, port = await machine.start([rsa_key.public_openssh])
    try:
        await check_ssh(addr, port, "root", rsa_key.private_pem)
    finally:
        await machine.stop()


async def test_another_key_is_refused_as_a_permanent_auth_failure(host):
    error = await _expect("auth_failed", host.host, host.port, "root", generate_keypair().private_pem)
    assert error.permanent


async def test_another_user_name_is_refused(host):
    await _expect("auth_failed", host.host, host.port, "ubuntu", KEY.private_pem)


async def test_nothing_listening_is_connection_refused_and_worth_retrying():
    with socket.socket() as reserved:  # bound, never listening: a machine still booting
        reserved.bind(("127.0.0.1", 0))
        error = await _expect("connection_refused", "127.0.0.1", reserved.getsockname()[1], "root", KEY.private_pem)
    assert not error.permanent


async def test_a_server_that_hangs_up_is_connection_closed():
    async def hang_up(reader, writer):
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        await _expect("connection_closed", "127.0.0.1", server.sockets[0].getsockname()[1], "root", KEY.private_pem)
    finally:
        server.close()


async def test_a_server_that_never_speaks_is_a_timeout():
    async def stay_silent(reader, writer):
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(stay_silent, "127.0.0.1", 0)
    try:
        await _expect("timeout", "127.0.0.1", server.sockets[0].getsockname()[1], "root", KEY.private_pem,
                      connect_timeout=0.3)
    finally:
        server.close()


async def test_a_host_that_answers_something_else_than_ok_is_command_failed():
    async def motd(process: asyncssh.SSHServerProcess) -> None:
        process.stdout.write("System is going down for maintenance\n")
        process.exit(0)

    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                                   authorized_client_keys=asyncssh.import_authorized_keys(KEY.public_openssh),
                                   process_factory=motd)
    try:
        error = await _expect("command_failed", "127.0.0.1", server.get_port(), "root", KEY.private_pem)
    finally:
        server.close()
    assert "maintenance" in error.message and not error.permanent


async def test_a_private_key_that_does_not_parse_is_permanent(host):
    error = await _expect("key_parse_failed", host.host, host.port, "root", "-----BEGIN OPENSSH PRIVATE KEY-----\nno")
    assert error.permanent


async def test_an_encrypted_private_key_is_a_key_parse_failure(host):
    key = serialization.load_ssh_private_key(KEY.private_pem.encode(), password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret")).decode()
    await _expect("key_parse_failed", host.host, host.port, "root", encrypted)


async def test_a_name_that_does_not_resolve_is_dns_failed():
    await _expect("dns_failed", "no-such-instance.invalid", 22, "root", KEY.private_pem)


@pytest.mark.parametrize("exc,error_type", [
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "network_unreachable"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "network_unreachable"),
    (OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 22), "
             "[Errno 111] Connect call failed ('127.0.0.1', 22)"), "connection_refused"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns_failed"),
    (asyncssh.PermissionDenied("denied"), "auth_failed"),
    (asyncssh.ConnectionLost("lost"), "connection_closed"),
    (ConnectionResetError(), "connection_closed"),
    (asyncio.TimeoutError(), "timeout"),
    (RuntimeError("surprise"), "unknown"),
])
def test_every_failure_has_one_error_type(exc, error_type):
    assert classify_exception(exc) == error_type


# -- probe_activity ---------------------------------------------------------------------------------------------

async def test_the_probe_reports_the_busiest_gpu_free_disk_and_no_logins(host):
    host.set_gpu_utilization([3, 71])
    clock = ManualClock(T0)
    activity = await probe_activity(host.host, host.port, "root", KEY.private_pem, clock=clock)
    assert activity.gpu_utilization_max == 71
    assert activity.interactive_sessions == 0  # the probe's own connection is not a login
    assert activity.disk_free_gb is not None and activity.disk_free_gb > 0
    assert activity.observed_at == clock.now()
    assert not activity.is_idle(threshold_pct=5)


async def test_a_quiet_gpu_and_nobody_logged_in_is_idle(host):
    host.set_gpu_utilization([0, 2])
    activity = await probe_activity(host.host, host.port, "root", KEY.private_pem)
    assert activity.is_idle(threshold_pct=5)
    assert not activity.is_idle(threshold_pct=1)


async def test_an_open_interactive_login_is_not_idle(host):
    async with asyncssh.connect(host.host, host.port, username="root", known_hosts=None,
                                client_keys=[asyncssh.import_private_key(KEY.private_pem)]) as conn:
        shell = await conn.create_process(term_type="xterm")
        activity = await probe_activity(host.host, host.port, "root", KEY.private_pem)
        shell.stdin.write("exit\n")
        await shell.wait()
    assert activity.interactive_sessions == 1 and not activity.is_idle()


async def test_without_a_gpu_logins_alone_decide(tmp_path):
    machine = SshHost(tmp_path / "cpu", gpu_count=0)
    addr, port = await machine.start([KEY.public_openssh])
    try:
        activity = await probe_activity(addr, port, "root", KEY.private_pem)
    finally:
        await machine.stop()
    assert activity.gpu_utilization_max is None and activity.is_idle()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fallback reads /proc")
@pytest.mark.parametrize("with_ps", [True, False], ids=["ps", "proc-fallback"])
async def test_the_probe_script_counts_sshd_logins_but_not_its_own_connection(tmp_path, with_ps):
    """On a real host there is no simulation: logins are sshd processes, found with ps or, without it, in /proc."""
    env = dict(os.environ)
    if not with_ps:
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        (fake_bin / "ps").write_text("#!/bin/sh\nexit 1\n")  # busybox-like: no -o support
        (fake_bin / "ps").chmod(0o755)
        env["PATH"] = f"{fake_bin}:{env['PATH']}"
    script = tmp_path / "probe.sh"
    script.write_text(PROBE_SCRIPT)

    async def logins_seen(parent_title: str = "sshd: root@notty") -> int:
        # By default the probe's parent carries the title sshd gives the probe's own connection.
        proc = await asyncio.create_subprocess_exec(parent_title, "-c", f"sh -s < {script}; true",
                                                    executable="/bin/sh", stdout=asyncio.subprocess.PIPE, env=env)
        out, _ = await proc.communicate()
        return parse_probe_output(out.decode(), T0).interactive_sessions

    before = await logins_seen()
    assert before == await logins_seen(parent_title="sh")  # its own connection is never counted
    sessions = [await asyncio.create_subprocess_exec(title, "60", executable=shutil.which("sleep"))
                for title in ("sshd: root@pts/7", "sshd-session: ubuntu@notty", "sshd: root [priv]")]
    try:
        assert await logins_seen() == before + 2  # a PTY login and a VS Code-like one; the monitor is no login
    finally:
        for proc in sessions:
            proc.kill()
            await proc.wait()


def test_probe_output_without_a_login_count_is_an_error_not_idle():
    with pytest.raises(SshCheckError) as err:
        parse_probe_output("gpu=\ndisk_kb=100\n", T0)
    assert err.value.error_type == "command_failed"


def test_probe_output_of_a_host_without_nvidia_smi():
    activity = parse_probe_output("gpu=\nsessions=0\ndisk_kb=52428800\n", T0)
    assert activity.gpu_utilization_max is None and activity.disk_free_gb == 50.0


# -- check_http -------------------------------------------------------------------------------------------------

async def test_health_200_counts_as_up_and_404_too():
    server = HealthServer()
    addr, port = await server.start()
    try:
        assert await check_http(health_url(addr, port), timeout=5)
        assert await check_http(health_url(addr, port, "/no-such-path"), timeout=5)  # answers: the API is up
    finally:
        await server.stop()
    assert not await check_http(health_url(addr, port), timeout=5)  # refused


async def test_a_server_error_is_not_up():
    async def fail(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(fail, "127.0.0.1", 0)
    try:
        assert not await check_http(health_url("127.0.0.1", server.sockets[0].getsockname()[1]), timeout=5)
    finally:
        server.close()


async def test_a_malformed_url_is_not_up():
    assert not await check_http("http://[not-an-address/health", timeout=1)
