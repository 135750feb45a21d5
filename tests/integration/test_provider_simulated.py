"""The simulated provider through the GpuProvider interface: its instances are real SSH servers on loopback."""
from __future__ import annotations

import asyncio
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import asyncssh
import pytest

from gantry_server.broker.keys import generate_keypair
from gantry_server.broker.ssh import SshCheckError, check_http, check_ssh, health_url, probe_activity
from gantry_server.clock import ManualClock
from gantry_server.config import BrokerSettings
from gantry_server.providers.base import (CreateSpec, ErrorKind, GpuProvider, InstanceState, OfferQuery,
                                          ProviderError, instance_label, parse_label)
from gantry_server.providers.simulated import SimulatedProvider

KEY = generate_keypair()
BOOT = 30.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))


@pytest.fixture
async def provider(clock, tmp_path):
    sim = SimulatedProvider(clock=clock, offer_count=12, boot_seconds=BOOT, work_root=tmp_path / "instances")
    yield sim
    await sim.shutdown()


async def _spec(provider: SimulatedProvider, session: str = "s1", **changes) -> CreateSpec:
    offer = (await provider.list_offers(OfferQuery()))[0]
    changes.setdefault("ssh_public_keys", (KEY.public_openssh,))
    return CreateSpec(offer=offer, label=instance_label("dep1", session), disk_gb=50, **changes)


async def _running(provider: SimulatedProvider, clock: ManualClock, **changes):
    created = await provider.create_instance(await _spec(provider, **changes))
    clock.advance(seconds=BOOT)
    return await provider.get_instance(created.instance_id)


async def _ssh_error(instance_host: str, port: int, private_pem: str = KEY.private_pem) -> str:
    with pytest.raises(SshCheckError) as err:
        await check_ssh(instance_host, port, "root", private_pem, connect_timeout=5)
    return err.value.error_type


async def _run(instance, command: str) -> asyncssh.SSHCompletedProcess:
    async with asyncssh.connect(instance.ssh_host, instance.ssh_port, username=instance.ssh_user, known_hosts=None,
                                client_keys=[asyncssh.import_private_key(KEY.private_pem)]) as conn:
        return await conn.run(command, check=False)


# -- offers -----------------------------------------------------------------------------------------------------

async def test_it_is_a_gpu_provider_named_simulated(provider):
    assert isinstance(provider, GpuProvider)
    assert provider.name == "simulated" and provider.default_ssh_user == "root"
    assert await provider.list_templates() == []


async def test_offers_are_the_configured_number_and_the_same_every_time(provider, clock, tmp_path):
    offers = await provider.list_offers(OfferQuery())
    assert len(offers) == 12
    assert len({o.offer_id for o in offers}) == 12
    assert all(o.offer_id.startswith("simulated-") and o.provider == "simulated" for o in offers)
    other = SimulatedProvider(BrokerSettings(simulated_offer_count=12), clock=clock, work_root=tmp_path / "other")
    assert await other.list_offers(OfferQuery()) == offers  # settings or keywords: the same offers


async def test_offers_span_gpu_types_with_their_memory_and_real_looking_terms(provider):
    offers = await provider.list_offers(OfferQuery())
    assert {(o.gpu_type, o.vram_gb) for o in offers} == {("RTX 4090", 24), ("A100", 80), ("H100", 80), ("L4", 24)}
    assert len({o.location for o in offers}) > 1
    assert all(o.price_per_hour > 0 and 0 < o.reliability <= 1 and o.cuda_version and o.available for o in offers)
    a100 = min((o for o in offers if o.gpu_type == "A100"), key=lambda o: o.gpu_count)
    h100 = min((o for o in offers if o.gpu_type == "H100"), key=lambda o: o.gpu_count)
    assert a100.price_per_hour < h100.price_per_hour


async def test_numeric_filters_are_applied(provider):
    big = await provider.list_offers(OfferQuery(min_vram=80))
    assert big and all(o.vram_gb >= 80 for o in big)
    cheap = await provider.list_offers(OfferQuery(max_price=0.5))
    assert cheap and all(o.price_per_hour <= 0.5 for o in cheap)


# -- create, boot, SSH ------------------------------------------------------------------------------------------

async def test_an_instance_starts_refusing_ssh_and_runs_once_its_boot_time_has_passed(provider, clock):
    created = await provider.create_instance(await _spec(provider))
    assert created.state is InstanceState.STARTING and created.label == instance_label("dep1", "s1")
    assert created.ssh_host == "127.0.0.1" and created.ssh_port
    assert await _ssh_error(created.ssh_host, created.ssh_port) == "connection_refused"

    clock.advance(seconds=BOOT - 1)
    assert (await provider.get_instance(created.instance_id)).state is InstanceState.STARTING
    clock.advance(seconds=1)
    running = await provider.get_instance(created.instance_id)
    assert running.state is InstanceState.RUNNING and running.raw_status == "running"
    assert running.started_at == datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc)
    assert running.price_per_hour == created.price_per_hour
    await check_ssh(running.ssh_host, running.ssh_port, "root", KEY.private_pem)


async def test_a_different_key_is_refused(provider, clock):
    running = await _running(provider, clock)
    assert await _ssh_error(running.ssh_host, running.ssh_port, generate_keypair().private_pem) == "auth_failed"


async def test_every_given_key_is_accepted(provider, clock):
    broker_key = generate_keypair()
    running = await _running(provider, clock, ssh_public_keys=(KEY.public_openssh, broker_key.public_openssh))
    await check_ssh(running.ssh_host, running.ssh_port, "root", broker_key.private_pem)


async def test_a_public_key_that_does_not_parse_is_an_invalid_request(provider):
    with pytest.raises(ProviderError) as err:
        await provider.create_instance(await _spec(provider, ssh_public_keys=("ssh-ed25519 garbage",)))
    assert err.value.kind is ErrorKind.INVALID


async def test_commands_run_in_the_instance_directory_which_keeps_files_between_logins(provider, clock):
    running = await _running(provider, clock, env={"MODEL": "llama"})
    await _run(running, "echo weights > model.bin")
    result = await _run(running, "pwd; cat model.bin; echo $MODEL")
    assert result.stdout.split() == [str(provider.host(running.instance_id).workdir), "weights", "llama"]


async def test_commands_never_see_gantrys_own_environment(provider, clock, monkeypatch):
    monkeypatch.setenv("GANTRY_KEK", "do-not-leak")
    running = await _running(provider, clock)
    assert (await _run(running, "env")).stdout.count("do-not-leak") == 0


async def test_exit_status_and_stderr_come_back(provider, clock):
    result = await _run(await _running(provider, clock), "echo oops >&2; exit 3")
    assert (result.exit_status, result.stderr) == (3, "oops\n")


async def test_an_interactive_shell_gets_a_terminal(provider, clock):
    running = await _running(provider, clock)
    async with asyncssh.connect(running.ssh_host, running.ssh_port, username="root", known_hosts=None,
                                client_keys=[asyncssh.import_private_key(KEY.private_pem)]) as conn:
        shell = await conn.create_process(term_type="xterm", term_size=(120, 40))
        shell.stdin.write("stty size; echo done-$((6*7))\nexit\n")
        output = await shell.stdout.read()
        await shell.wait()
    assert "40 120" in output and "done-42" in output and shell.exit_status == 0


async def test_files_can_be_copied_in_with_sftp(provider, clock, tmp_path):
    running = await _running(provider, clock)
    (tmp_path / "data.txt").write_text("dataset")
    async with asyncssh.connect(running.ssh_host, running.ssh_port, username="root", known_hosts=None,
                                client_keys=[asyncssh.import_private_key(KEY.private_pem)]) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(tmp_path / "data.txt"), "data.txt")
    assert (await _run(running, "cat data.txt")).stdout == "dataset"


@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
async def test_the_readme_ssh_command_works_with_openssh(provider, clock, tmp_path):
    running = await _running(provider, clock)
    key_file = tmp_path / "session_key"
    key_file.write_text(KEY.private_pem)
    key_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-i", str(key_file), "-p", str(running.ssh_port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-F", "/dev/null",
        f"root@{running.ssh_host}", "echo ok", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert (proc.returncode, out.decode().strip()) == (0, "ok"), err.decode()


# -- destroy, stop ----------------------------------------------------------------------------------------------

async def test_destroy_makes_it_gone_refuses_ssh_and_deletes_its_disk(provider, clock):
    running = await _running(provider, clock)
    workdir = provider.host(running.instance_id).workdir
    await provider.destroy_instance(running.instance_id)
    assert (await provider.get_instance(running.instance_id)).state is InstanceState.GONE
    assert running.instance_id not in {i.instance_id for i in await provider.list_instances()}
    assert running.instance_id not in provider.alive_instances()
    assert await _ssh_error(running.ssh_host, running.ssh_port) == "connection_refused"
    assert not workdir.exists()


async def test_destroy_is_idempotent_and_counted(provider, clock):
    running = await _running(provider, clock)
    await provider.destroy_instance(running.instance_id)
    await provider.destroy_instance(running.instance_id)
    await provider.destroy_instance("sim-never-existed")
    assert provider.destroy_calls(running.instance_id) == 2
    assert provider.destroy_calls("sim-never-existed") == 1


async def test_destroy_ends_open_sessions_and_what_they_left_running(provider, clock):
    running = await _running(provider, clock)
    pid = int((await _run(running, "nohup sleep 300 >/dev/null 2>&1 & echo $!")).stdout)
    async with asyncssh.connect(running.ssh_host, running.ssh_port, username="root", known_hosts=None,
                                client_keys=[asyncssh.import_private_key(KEY.private_pem)]) as conn:
        long_command = await conn.create_process("sleep 300")
        await provider.destroy_instance(running.instance_id)
        await long_command.wait_closed()
    if sys.platform.startswith("linux"):
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a killed orphan may linger as a zombie of a non-reaping init


async def test_a_booting_instance_can_be_destroyed(provider):
    created = await provider.create_instance(await _spec(provider))
    await provider.destroy_instance(created.instance_id)
    assert (await provider.get_instance(created.instance_id)).state is InstanceState.GONE


async def test_stop_ends_compute_but_keeps_the_disk(provider, clock):
    running = await _running(provider, clock)
    await _run(running, "echo checkpoint > ckpt")
    await provider.stop_instance(running.instance_id)
    stopped = await provider.get_instance(running.instance_id)
    assert stopped.state is InstanceState.STOPPED and stopped.ssh_port is None
    assert await _ssh_error(running.ssh_host, running.ssh_port) == "connection_refused"
    assert (provider.host(running.instance_id).workdir / "ckpt").read_text() == "checkpoint\n"
    assert running.instance_id in {i.instance_id for i in await provider.list_instances()}
    await provider.stop_instance(running.instance_id)  # again: nothing changes


async def test_stopping_a_destroyed_instance_says_gone(provider, clock):
    running = await _running(provider, clock)
    await provider.destroy_instance(running.instance_id)
    with pytest.raises(ProviderError) as err:
        await provider.stop_instance(running.instance_id)
    assert err.value.kind is ErrorKind.GONE


async def test_list_shows_our_instances_with_their_labels(provider, clock):
    a = await provider.create_instance(await _spec(provider, "a"))
    b = await _running(provider, clock, session="b")
    listed = {i.instance_id: i for i in await provider.list_instances()}
    assert {parse_label(i.label, "dep1") for i in listed.values()} == {"a", "b"}
    assert listed[a.instance_id].state is InstanceState.RUNNING  # its boot time passed too
    assert listed[b.instance_id].ssh_port == b.ssh_port


# -- entrypoint mode --------------------------------------------------------------------------------------------

async def test_entrypoint_mode_serves_health_on_the_reported_port_once_booted(provider, clock):
    created = await provider.create_instance(await _spec(provider, launch_mode="entrypoint", exposed_ports=(8000,)))
    assert not await check_http(health_url("127.0.0.1", created.ports[8000]), timeout=5)  # booting
    clock.advance(seconds=BOOT)
    running = await provider.get_instance(created.instance_id)
    assert set(running.ports) == {8000} and running.ports[8000] != running.ssh_port
    assert await check_http(health_url(running.ssh_host, running.ports[8000]), timeout=5)
    await provider.destroy_instance(running.instance_id)
    assert not await check_http(health_url(running.ssh_host, running.ports[8000]), timeout=5)


async def test_ssh_mode_exposes_no_api(provider, clock):
    assert (await _running(provider, clock)).ports == {}


# -- test knobs -------------------------------------------------------------------------------------------------

async def test_a_vanished_instance_is_gone_at_once_and_soon_unreachable(provider, clock):
    running = await _running(provider, clock)
    powered_off = provider.vanish(running.instance_id)
    assert provider.instance_state(running.instance_id) == "gone"
    assert (await provider.get_instance(running.instance_id)).state is InstanceState.GONE
    assert await provider.list_instances() == []
    await powered_off
    assert await _ssh_error(running.ssh_host, running.ssh_port) == "connection_refused"


async def test_an_instance_can_stop_by_itself(provider, clock):
    running = await _running(provider, clock)
    await provider.make_stopped(running.instance_id, raw_status="exited", message="OOM killed")
    stopped = await provider.get_instance(running.instance_id)
    assert (stopped.state, stopped.raw_status, stopped.message) == (InstanceState.STOPPED, "exited", "OOM killed")
    assert await _ssh_error(running.ssh_host, running.ssh_port) == "connection_refused"


@pytest.mark.parametrize("kind", [ErrorKind.STALE_INVENTORY, ErrorKind.TRANSIENT])
async def test_the_next_create_can_be_made_to_fail(provider, kind):
    spec = await _spec(provider)
    provider.fail_next_create(kind)
    with pytest.raises(ProviderError) as err:
        await provider.create_instance(spec)
    assert err.value.kind is kind and provider.alive_instances() == []
    assert (await provider.create_instance(spec)).state is InstanceState.STARTING


async def test_any_operation_can_be_made_to_fail_a_number_of_times(provider, clock):
    running = await _running(provider, clock)
    provider.fail_next("get_instance", ErrorKind.TRANSIENT, times=2)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await provider.get_instance(running.instance_id)
    assert (await provider.get_instance(running.instance_id)).state is InstanceState.RUNNING
    provider.fail_next("destroy_instance")
    with pytest.raises(ProviderError):
        await provider.destroy_instance(running.instance_id)
    assert running.instance_id in provider.alive_instances()  # a failed destroy destroys nothing
    assert provider.destroy_calls(running.instance_id) == 1


async def test_a_sold_out_offer_is_unlisted_and_stale(provider):
    spec = await _spec(provider)
    provider.sell_out(spec.offer.provider_id)
    assert spec.offer.offer_id not in {o.offer_id for o in await provider.list_offers(OfferQuery())}
    with pytest.raises(ProviderError) as err:
        await provider.create_instance(spec)
    assert err.value.kind is ErrorKind.STALE_INVENTORY


async def test_boot_can_be_delayed(provider, clock):
    created = await provider.create_instance(await _spec(provider))
    provider.delay_boot(created.instance_id, 60)
    provider.delay_boot(created.instance_id, hours=1)
    clock.advance(seconds=BOOT + 60)
    assert (await provider.get_instance(created.instance_id)).state is InstanceState.STARTING
    clock.advance(hours=1)
    assert (await provider.get_instance(created.instance_id)).state is InstanceState.RUNNING


async def test_listing_lag_hides_an_instance_for_some_listings_while_get_finds_it(provider, clock):
    running = await _running(provider, clock)
    provider.hide_from_listing(running.instance_id, calls=2)
    for _ in range(2):
        assert await provider.list_instances() == []
        assert (await provider.get_instance(running.instance_id)).state is InstanceState.RUNNING
    assert [i.instance_id for i in await provider.list_instances()] == [running.instance_id]


async def test_listing_lag_can_last_until_lifted(provider, clock):
    running = await _running(provider, clock)
    provider.hide_from_listing(running.instance_id)
    for _ in range(3):
        assert await provider.list_instances() == []
    provider.hide_from_listing(running.instance_id, calls=0)
    assert len(await provider.list_instances()) == 1


async def test_foreign_instances_are_listed_with_their_labels_and_refuse_every_key(provider):
    theirs = await provider.adopt_foreign(instance_label("other-deployment", "s9"))
    unlabelled = await provider.adopt_foreign("my-own-box")
    listed = {i.instance_id: i for i in await provider.list_instances()}
    assert set(listed) == {theirs, unlabelled}
    assert parse_label(listed[theirs].label, "dep1") is None and listed[theirs].state is InstanceState.RUNNING
    assert await _ssh_error(listed[theirs].ssh_host, listed[theirs].ssh_port) == "auth_failed"
    await provider.destroy_instance(theirs)
    assert provider.instance_state(theirs) == "gone" and provider.alive_instances() == [unlabelled]


async def test_an_instance_is_found_by_its_session_id(provider, clock):
    created = await provider.create_instance(await _spec(provider, "session-42"))
    assert provider.instances_of_label_suffix("session-42") == created.instance_id
    assert provider.instance_state(created.instance_id) == "starting"
    with pytest.raises(KeyError):
        provider.instances_of_label_suffix("session-43")


async def test_instances_outlive_the_client_like_on_a_real_provider(provider, clock):
    """Shutdown policy "keep": the broker closes its provider, restarts, and finds the instance still there."""
    created = await provider.create_instance(await _spec(provider))
    await provider.aclose()
    clock.advance(seconds=BOOT)
    running = await provider.get_instance(created.instance_id)
    assert running.state is InstanceState.RUNNING and running.ssh_port == created.ssh_port
    await check_ssh(running.ssh_host, running.ssh_port, "root", KEY.private_pem)


async def test_shutdown_ends_the_simulated_cloud(clock):
    sim = SimulatedProvider(clock=clock, offer_count=4, boot_seconds=0)
    running = await sim.create_instance(await _spec(sim))
    root = sim.host(running.instance_id).workdir.parent
    await sim.shutdown()
    assert await _ssh_error(running.ssh_host, running.ssh_port) == "connection_refused"
    assert not root.exists()


# -- the idle probe against a simulated machine -----------------------------------------------------------------

async def test_probe_sees_the_simulated_gpu_utilisation(provider, clock):
    running = await _running(provider, clock)
    args = (running.ssh_host, running.ssh_port, running.ssh_user, KEY.private_pem)
    provider.set_gpu_utilization(running.instance_id, 93)
    busy = await probe_activity(*args, clock=clock)
    assert busy.gpu_utilization_max == 93 and not busy.is_idle() and busy.observed_at == clock.now()
    provider.set_gpu_utilization(running.instance_id, 1)
    assert (await probe_activity(*args)).is_idle()


async def test_probe_counts_logins_real_and_simulated(provider, clock):
    running = await _running(provider, clock)
    args = (running.ssh_host, running.ssh_port, running.ssh_user, KEY.private_pem)
    provider.set_logins(running.instance_id, 2)
    assert (await probe_activity(*args)).interactive_sessions == 2
    provider.set_logins(running.instance_id, 0)
    async with asyncssh.connect(running.ssh_host, running.ssh_port, username="root", known_hosts=None,
                                client_keys=[asyncssh.import_private_key(KEY.private_pem)]) as conn:
        shell = await conn.create_process(term_type="xterm")
        logged_in = await probe_activity(*args)
        shell.stdin.write("exit\n")
        await shell.wait()
    assert logged_in.interactive_sessions == 1 and not logged_in.is_idle()
    assert (await probe_activity(*args)).interactive_sessions == 0
