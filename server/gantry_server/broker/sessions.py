"""Sessions: create, verify, extend and end a rented GPU instance, with the database as the only state.

Rules that keep money and instances safe:
- No row is written before every check that can refuse the request has passed (no zombie rows).
- The provider call runs in a task of its own: a client that disconnects does not cancel a half-done create.
- Every transition is a conditional UPDATE (repositories.sessions.transition); whoever loses a race re-reads.
- A session reaches a terminal status only after the provider confirmed the instance is gone (or stopped, for
  storage_policy "preserve"); until then it stays "stopping" and the lifecycle loop keeps trying.
- Its cost is recorded in the same transaction as that terminal status, on every path, once.
- The private key is kept only encrypted under the keyring: an idempotent retry of a create can hand it out
  again (a lost 201 no longer strands a billed instance), and the broker can verify SSH after a restart.
  The idempotency record is (consumer_id, request_id): with GANTRY_BROKER_AUTH=required the consumer is the
  authenticated caller, so nobody else's retry can find it; open, only the unguessable request_id protects it.
- `owner` (broker.consumers.owner_of_call): when set, a session of any other consumer is NOT_FOUND, checked
  before anything changes.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from redis.asyncio import Redis
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..clock import Clock
from ..config import BrokerSettings
from ..errors import Conflict, FailedPrecondition, GantryError, InvalidArgument, NotFound, Unavailable
from ..domain.validation import Violations
from ..providers.base import (CreateSpec, ErrorKind, GpuProvider, InstanceState, ProviderError, ProviderOffer, instance_label)
from ..store.models import ACTIVE_SESSION_STATUSES, TERMINAL_SESSION_STATUSES
from ..store.repositories import sessions as repo
from . import metrics
from .costs import record_session_cost
from .keys import generate_keypair_async

log = logging.getLogger(__name__)

WORKLOAD_TYPES = ("llm", "llm_vllm", "llm_tgi", "training", "batch", "interactive", "inference", "ssh", "benchmark")
RETRY_SCOPES = ("same_gpu", "same_vram", "any")
SSH_KEY_TYPES = ("ed25519", "rsa")
STATUSES = ("pending", "provisioning", "running", "stopping", "stopped", "failed")
MAX_RESERVATION_HOURS = 12
CREATE_LEASE = timedelta(minutes=3)  # a create stuck longer than this is recovered by the lifecycle loop
STEP_LEASE = timedelta(seconds=90)
PERMANENT_AUTH_FAILURES = 3
STALE_MESSAGE = "The selected offer is no longer available. Please refresh inventory and select a different offer."
_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,255}$")


class ProvisionFailed(GantryError):
    """The provider refused the create for a reason other than stale inventory (legacy 500 with error_type)."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "PROVISION_FAILED"
    default_http_status = 500


@dataclass
class Broker:
    """Everything the broker's sessions and loops share, built once per process (app.py)."""

    settings: BrokerSettings
    engine: AsyncEngine
    redis: Redis
    clock: Clock
    keyring: Any
    providers: dict[str, GpuProvider]
    inventory: Any  # broker.inventory.Inventory
    deployment_id: str
    owner: str = field(default_factory=lambda: f"gantry-{uuid.uuid4().hex[:12]}")  # lease owner of this process

    def lease_token(self) -> str:
        """A lease names one unit of work, not just the process: two coroutines of one process never share it."""
        return f"{self.owner}:{uuid.uuid4().hex[:8]}"

    def provider(self, name: str) -> GpuProvider:
        provider = self.providers.get(name)
        if provider is None:
            raise Unavailable(f"provider {name} is not configured on this server")
        return provider


def _key_context(session_id: str) -> bytes:
    return f"broker-session-key:{session_id}".encode()


class SessionManager:
    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self._tasks: set[asyncio.Task] = set()  # provisioning work that must outlive the request
        self.created_here: set[str] = set()  # sessions whose provider create this process ran (SIGTERM destroy)

    # ---- reads ---------------------------------------------------------------------------------------------------

    async def get(self, session_id: str, *, owner: str | None = None, not_found: str | None = None) -> Row:
        async with self.b.engine.connect() as conn:
            row = await repo.get(conn, session_id)
        if row is None or (owner is not None and row.consumer_id != owner):  # same answer: ids do not leak
            raise NotFound(not_found or f"session not found: {session_id}")
        return row

    async def list(self, *, consumer_id: str, status: str, provider: str, limit: int,
                   before: tuple[datetime, str] | None = None) -> list[Row]:
        async with self.b.engine.connect() as conn:
            return await repo.list_sessions(conn, consumer_id=consumer_id, status=status, provider=provider,
                                            limit=limit, before=before)

    def private_key(self, row: Row) -> str:
        return self.b.keyring.decrypt(row.ssh_private_key_enc, context=_key_context(row.id)).decode()

    # ---- create --------------------------------------------------------------------------------------------------

    async def create(self, req) -> tuple[Row, str]:
        """Validate, insert (pending), create the provider instance in a shielded task; (row, private key)."""
        consumer_id, request_id = req.consumer_id.strip(), req.request_id.strip()
        _validate_create(req)
        if request_id:
            replay = await self._replay(consumer_id, request_id, req.offer_id)
            if replay is not None:
                return replay
        offer = await self.b.inventory.provider_offer(req.offer_id)
        provider = self.b.provider(offer.provider)
        template = None
        if req.template_hash_id:
            template = await self.b.inventory.template(req.template_hash_id)
        disk_gb = self._disk(req, provider, template)
        async with self.b.engine.connect() as conn:
            existing = await repo.active_for_offer(conn, consumer_id, offer.offer_id)
        if existing is not None:
            raise _duplicate(consumer_id, existing)

        keypair = await generate_keypair_async(req.ssh_key_type or "ed25519")
        now = self.b.clock.now()
        session_id = str(uuid.uuid4())
        timeout_minutes = self._ssh_timeout(req, template)
        launch_mode = "entrypoint" if req.launch_mode == "entrypoint" else "ssh"
        values = dict(
            id=session_id, consumer_id=consumer_id, request_id=request_id or None, provider=offer.provider,
            offer_id=offer.offer_id, machine_id=offer.machine_id, gpu_type=offer.gpu_type,
            gpu_count=offer.gpu_count, vram_gb=offer.vram_gb, status="pending",
            ssh_user=provider.default_ssh_user, ssh_key_type=keypair.key_type,
            ssh_public_key=keypair.public_openssh,
            ssh_private_key_enc=self.b.keyring.encrypt(keypair.private_pem.encode(), context=_key_context(session_id)),
            workload_type=req.workload_type, reservation_hours=req.reservation_hours,
            idle_threshold_minutes=req.idle_threshold_minutes,
            storage_policy="preserve" if req.storage_policy == "preserve" else "destroy",
            launch_mode=launch_mode, docker_image=req.docker_image or None, model_id=req.model_id or None,
            quantization=req.quantization or None, exposed_ports=list(req.exposed_ports),
            api_port=(list(req.exposed_ports) or [8000])[0] if launch_mode == "entrypoint" else None,
            template_hash_id=req.template_hash_id or None, template_name=getattr(template, "name", None),
            disk_gb=disk_gb, on_start_cmd=req.on_start_cmd or None, price_per_hour=offer.price_per_hour,
            auto_retry=req.auto_retry, max_retries=min(req.max_retries if req.max_retries > 0 else 3, 5)
            if req.auto_retry else 0, retry_scope=(req.retry_scope or "same_gpu") if req.auto_retry else None,
            created_at=now, expires_at=now + timedelta(hours=req.reservation_hours),
            provision_deadline=now + timedelta(minutes=timeout_minutes), updated_at=now,
            lease_owner=self.b.lease_token(), lease_until=now + CREATE_LEASE,
        )
        async with self.b.engine.begin() as conn:
            row = await repo.insert_session(conn, values)
            if row is None:  # lost a race: the other create holds the offer or the idempotency key
                if request_id and (other := await repo.by_request_id(conn, consumer_id, request_id)) is not None:
                    return other, self.private_key(other)
                existing = await repo.active_for_offer(conn, consumer_id, offer.offer_id)
                raise _duplicate(consumer_id, existing) if existing else Conflict("session create conflicted; retry")
        await repo.publish_change(self.b.redis, row.id, row.version)
        task = asyncio.create_task(self._provision(row, offer, keypair.public_openssh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        row = await asyncio.shield(task)  # the create goes on if the caller goes away
        return row, keypair.private_pem

    async def _replay(self, consumer_id: str, request_id: str, offer_id: str) -> tuple[Row, str] | None:
        async with self.b.engine.connect() as conn:
            row = await repo.by_request_id(conn, consumer_id, request_id)
        if row is None:
            return None
        if row.offer_id != offer_id:
            raise Conflict(f"request_id {request_id} was already used for offer {row.offer_id}",
                           reason="IDEMPOTENCY_KEY_REUSED")
        if row.status == "pending":  # the original create is still talking to the provider
            raise Unavailable("the original create with this request_id is still in progress; retry shortly",
                              retry_after_seconds=1)
        return row, self.private_key(row)

    def _disk(self, req, provider: GpuProvider, template) -> int:
        from .disk import estimate_disk  # noqa: PLC0415

        estimate = estimate_disk(model_id=req.model_id or None, quantization=req.quantization or None,
                                 templated=template is not None,
                                 template_disk_gb=getattr(template, "recommended_disk_space", 0) or None)
        if req.HasField("disk_gb"):
            if estimate is not None and req.disk_gb < estimate.minimum_gb:
                raise _insufficient_disk(req.disk_gb, estimate)
            return req.disk_gb
        return estimate.recommended_gb if estimate is not None else provider.default_disk_gb

    def _ssh_timeout(self, req, template) -> int:
        if req.HasField("ssh_timeout_minutes"):
            return min(max(req.ssh_timeout_minutes, 1), 30)
        if template is not None:
            from .templates import ssh_timeout_minutes_for_image  # noqa: PLC0415

            return ssh_timeout_minutes_for_image(template.image, default=self.b.settings.ssh_verify_timeout_minutes)
        return self.b.settings.ssh_verify_timeout_minutes

    async def _provision(self, row: Row, offer: ProviderOffer, public_key: str) -> Row:
        """pending -> provisioning (instance created, billing starts) or -> failed (no instance, no cost).

        With auto_retry, a stale offer is replaced by a comparable one (same session, same key) up to
        max_retries times before the create gives up.
        """
        while True:
            provider = self.b.provider(row.provider)
            spec = CreateSpec(
                offer=offer, label=instance_label(self.b.deployment_id, row.id), ssh_public_keys=(public_key,),
                disk_gb=row.disk_gb or provider.default_disk_gb, image=row.docker_image,
                on_start_cmd=row.on_start_cmd, template_hash_id=row.template_hash_id,
                exposed_ports=tuple(row.exposed_ports), launch_mode=row.launch_mode,
                env={k: v for k, v in (("MODEL_ID", row.model_id), ("QUANTIZE", row.quantization)) if v})
            try:
                instance = await provider.create_instance(spec)
                break
            except ProviderError as exc:
                if exc.kind is ErrorKind.STALE_INVENTORY and row.auto_retry:
                    switched = await self._retry_elsewhere(row, offer, exc)
                    if switched is not None:
                        row, offer = switched
                        continue
                await self._create_failed(row, offer, exc)
                raise _create_error(row, exc) from None
            except Exception as exc:  # an adapter bug must still leave a truthful row
                await self._create_failed(row, offer, ProviderError(ErrorKind.TRANSIENT, row.provider,
                                                                    "CreateInstance", type(exc).__name__))
                raise
        if row.retry_count:
            metrics.RETRY_SUCCESSES.labels(row.provider, row.retry_scope or "same_gpu").inc()
        metrics.SESSIONS_CREATED.labels(row.provider).inc()
        self.created_here.add(row.id)
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            updated = await repo.transition(
                conn, row.id, ("pending",), now, status="provisioning",
                provider_instance_id=instance.instance_id, billing_started_at=now, instance_seen_at=now,
                ssh_host=instance.ssh_host, ssh_port=instance.ssh_port,
                ssh_user=instance.ssh_user or row.ssh_user,
                next_check_at=now + timedelta(seconds=provider.ssh_pre_delay_seconds),
                lease_owner=None, lease_until=None)
            if updated is None:  # ended (DELETE) while the provider was creating: keep the instance owned
                updated = await repo.transition(
                    conn, row.id, ("stopped", "failed"), now, status="stopping",
                    provider_instance_id=instance.instance_id, billing_started_at=now,
                    lease_owner=None, lease_until=None, next_check_at=now)
        if updated is None:  # pragma: no cover - the row was deleted by hand
            await provider.destroy_instance(instance.instance_id)
            return row
        await repo.publish_change(self.b.redis, updated.id, updated.version)
        await self.refresh_active_gauge()
        if updated.status == "stopping":
            return await self.finish_stopping(updated.id)
        if self.b.settings.fast_verify:
            task = asyncio.create_task(self._drive_verification(updated.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return updated

    async def _retry_elsewhere(self, row: Row, offer: ProviderOffer,
                               exc: ProviderError) -> tuple[Row, ProviderOffer] | None:
        """Move a pending session to the best comparable offer (reference §3.10 scopes), or None when none is left.

        same_gpu: same provider and GPU, price <= 1.2x; same_vram: same provider, VRAM >= the original, <= 1.5x;
        any: VRAM >= the original, <= 2x, any provider. Offers and machines that already failed in this chain are
        skipped. The choice is the inventory's order (confidence, then price): deterministic, unlike the
        reference's random pick among the cheapest three.
        """
        from .inventory import OfferFilter  # noqa: PLC0415

        scope = row.retry_scope or "same_gpu"
        if row.retry_count >= row.max_retries:
            metrics.RETRY_EXHAUSTED.labels(row.provider, scope).inc()
            return None
        failed = set(filter(None, (row.failed_offers or "").split(","))) | {offer.offer_id}
        failed_machines = {offer.machine_id} - {None}
        factor = {"same_gpu": 1.2, "same_vram": 1.5, "any": 2.0}[scope]
        page = await self.b.inventory.list_offers(OfferFilter(
            provider=offer.provider if scope != "any" else None,
            gpu_type=offer.gpu_type if scope == "same_gpu" else None,
            min_vram=offer.vram_gb if scope != "same_gpu" else None,
            max_price=offer.price_per_hour * factor))
        for candidate in page.offers:
            alt = candidate.offer
            if alt.offer_id in failed or (alt.machine_id and alt.machine_id in failed_machines):
                continue
            now = self.b.clock.now()
            try:
                async with self.b.engine.begin() as conn:
                    switched = await repo.transition(
                        conn, row.id, ("pending",), now, offer_id=alt.offer_id, machine_id=alt.machine_id,
                        provider=alt.provider, gpu_type=alt.gpu_type, gpu_count=alt.gpu_count, vram_gb=alt.vram_gb,
                        price_per_hour=alt.price_per_hour, ssh_user=self.b.provider(alt.provider).default_ssh_user,
                        retry_count=row.retry_count + 1, failed_offers=",".join(sorted(failed)))
            except IntegrityError:  # this consumer already has an active session on that offer
                continue
            if switched is None:
                return None
            await self.b.inventory.record_failure(offer, "stale_inventory", exc.detail[:2000])
            self.b.inventory.evict(offer.offer_id)
            metrics.RETRY_ATTEMPTS.labels(offer.provider, scope, "stale_inventory").inc()
            return switched, alt
        metrics.RETRY_EXHAUSTED.labels(row.provider, scope).inc()
        return None

    async def _create_failed(self, row: Row, offer: ProviderOffer, exc: ProviderError) -> None:
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            failed = await repo.transition(conn, row.id, ("pending",), now, status="failed", error=str(exc)[:2000],
                                           stop_reason="provision_failed", stopped_at=now,
                                           lease_owner=None, lease_until=None)
        if failed is not None:
            await repo.publish_change(self.b.redis, failed.id, failed.version)
            metrics.SESSIONS_DESTROYED.labels(row.provider, "provision_failed").inc()
        failure_type = "stale_inventory" if exc.kind is ErrorKind.STALE_INVENTORY else "unknown"
        await self.b.inventory.record_failure(offer, failure_type, exc.detail)
        if exc.kind is ErrorKind.STALE_INVENTORY:
            self.b.inventory.evict(offer.offer_id)

    # ---- verification (one step; the lifecycle loop and the fast path both call it) --------------------------

    async def _drive_verification(self, session_id: str) -> None:
        """Fast path for a fresh session: step until it leaves provisioning (real time, this process only)."""
        try:
            while True:
                row = await self.verify_step(session_id)
                if row is None or row.status != "provisioning":
                    return
                wait = (row.next_check_at - self.b.clock.now()).total_seconds() if row.next_check_at else 1.0
                await asyncio.sleep(min(max(wait, 0.05), 5.0))
        except asyncio.CancelledError:
            raise
        except Exception:  # the lifecycle loop takes over
            log.exception("fast verification stopped", extra={"session_id": session_id})

    async def verify_step(self, session_id: str) -> Row | None:
        """One verification attempt of a provisioning session under its lease; the row afterwards."""
        from .ssh import SshCheckError, check_http, check_ssh  # noqa: PLC0415

        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            row = await repo.claim(conn, session_id, self.b.lease_token(), now, now + STEP_LEASE, ("provisioning",))
        if row is None:
            return await self._peek(session_id)
        if now >= row.provision_deadline:
            reason = "api_verify_timeout" if row.launch_mode == "entrypoint" else "ssh_verify_timeout"
            what = "API" if row.launch_mode == "entrypoint" else "SSH"
            if reason == "ssh_verify_timeout":
                metrics.SSH_VERIFY_FAILURES.inc()
            else:
                metrics.API_VERIFY_FAILURES.inc()
            await self._record_offer_failure(row, "ssh_timeout", f"{what} verification timeout")
            return await self.terminate(row.id, reason, final_status="failed", error=f"{what} verification timeout",
                                        from_statuses=("provisioning",))
        if row.next_check_at is not None and now < row.next_check_at:
            return await self._release(row)
        provider = self.b.provider(row.provider)
        try:
            instance = await provider.get_instance(row.provider_instance_id)
        except ProviderError as exc:  # transient: never read as "gone"
            log.warning("status check failed", extra={"session_id": row.id, "error": str(exc)})
            return await self._release(row, next_check_at=now + _backoff(row.verify_attempts),
                                       verify_attempts=row.verify_attempts + 1)
        if instance.state is InstanceState.GONE:
            if instance.offer_at_fault:
                await self._record_offer_failure(row, "instance_vanished", "instance no longer exists on provider")
            return await self.terminate(row.id, "instance_vanished", final_status="failed",
                                        error="instance_vanished: no longer exists on provider",
                                        from_statuses=("provisioning",))
        if instance.state is InstanceState.STOPPED:
            await self._record_offer_failure(row, "instance_stopped", instance.raw_status)
            return await self.terminate(row.id, "instance_stopped", final_status="failed",
                                        error=f"instance stopped unexpectedly: {instance.raw_status}"
                                              f"{f' ({instance.message})' if instance.message else ''}",
                                        from_statuses=("provisioning",))
        host = instance.ssh_host or row.ssh_host
        port = instance.ssh_port or row.ssh_port or 22
        user = instance.ssh_user or row.ssh_user
        fields = dict(ssh_host=host, ssh_port=port, ssh_user=user, verify_attempts=row.verify_attempts + 1,
                      instance_seen_at=now)
        if instance.state is not InstanceState.RUNNING or not host:
            return await self._release(row, next_check_at=now + _backoff(row.verify_attempts), **fields)
        try:
            if row.launch_mode == "entrypoint":
                api_port = instance.ports.get(row.api_port or 8000, row.api_port or 8000)
                endpoint = f"http://{host}:{api_port}"
                if not await check_http(f"{endpoint}/health", timeout=10):
                    return await self._release(row, next_check_at=now + _backoff(row.verify_attempts), **fields)
                fields["api_endpoint"] = endpoint
            else:
                await check_ssh(host, port, user, self.private_key(row))
        except SshCheckError as exc:
            metrics.SSH_VERIFY_ERRORS.labels(row.provider, exc.error_type).inc()
            failures = row.auth_failures + 1 if exc.permanent else 0
            if failures >= PERMANENT_AUTH_FAILURES:
                metrics.SSH_VERIFY_FAILURES.inc()
                await self._record_offer_failure(row, "auth_failed", str(exc))
                return await self.terminate(row.id, "permanent_ssh_error", final_status="failed",
                                            error=f"permanent SSH error: {exc.error_type}",
                                            from_statuses=("provisioning",))
            return await self._release(row, next_check_at=now + _backoff(row.verify_attempts), auth_failures=failures,
                                       **fields)
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            running = await repo.transition(conn, row.id, ("provisioning",), now, status="running", running_at=now,
                                            last_active_at=now, lease_owner=None, lease_until=None,
                                            next_check_at=now + timedelta(
                                                seconds=self.b.settings.idle_probe_interval_seconds), **fields)
        if running is None:
            return await self._peek(row.id)
        elapsed = (now - row.created_at).total_seconds()
        histogram = metrics.API_VERIFY_DURATION if row.launch_mode == "entrypoint" else metrics.SSH_VERIFY_DURATION
        histogram.labels(row.provider).observe(elapsed)
        metrics.SSH_VERIFY_ATTEMPTS.labels(row.provider).observe(running.verify_attempts)
        metrics.PROVISIONING_DURATION.labels(row.provider).observe(elapsed)
        await repo.publish_change(self.b.redis, running.id, running.version)
        await self.refresh_active_gauge()
        return running

    async def _record_offer_failure(self, row: Row, failure_type: str, reason: str) -> None:
        """Recorded from the session's own fields: an offer already evicted or suppressed still counts."""
        from .failures import OfferRef  # noqa: PLC0415

        await self.b.inventory.record_failure(OfferRef(row.offer_id, row.provider, row.gpu_type, row.machine_id),
                                              failure_type, reason[:2000])
        self.b.inventory.evict(row.offer_id)

    async def _release(self, row: Row, **values: Any) -> Row:
        """Give back the lease `row` was claimed with (its lease_owner), saving `values`."""
        async with self.b.engine.begin() as conn:
            await repo.release(conn, row.id, row.lease_owner, **values)
            return await repo.get(conn, row.id)

    async def _peek(self, session_id: str) -> Row | None:
        async with self.b.engine.connect() as conn:
            return await repo.get(conn, session_id)

    # ---- ending --------------------------------------------------------------------------------------------------

    async def terminate(self, session_id: str, reason: str, *, final_status: str = "stopped", error: str | None = None,
                        from_statuses: tuple[str, ...] = ACTIVE_SESSION_STATUSES) -> Row | None:
        """Move to stopping (exactly one caller wins) and destroy the instance; the row afterwards, or None.

        The final status is implied by the reason (failure reasons end "failed"), so a loop that finishes the
        destroy after a crash ends the session the same way.
        """
        now, token = self.b.clock.now(), self.b.lease_token()
        async with self.b.engine.begin() as conn:
            row = await repo.transition(conn, session_id, from_statuses, now, status="stopping", stop_reason=reason,
                                        error=error, lease_owner=token, lease_until=now + STEP_LEASE,
                                        next_check_at=now, destroy_attempts=0)
        if row is None:
            return None
        await repo.publish_change(self.b.redis, row.id, row.version)
        return await self.finish_stopping(row.id, final_status=final_status, token=token)

    async def finish_stopping(self, session_id: str, *, final_status: str | None = None,
                              token: str | None = None) -> Row | None:
        """Destroy (or stop, to preserve the disk) and verify; on success the terminal status and the cost.

        `token`: the lease terminate() took, so the winner of the transition goes on without a second claim.
        """
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            row = await repo.claim(conn, session_id, token or self.b.lease_token(), now, now + STEP_LEASE,
                                   ("stopping",))
        if row is None:
            return await self._peek(session_id)
        if final_status is None:
            final_status = "failed" if row.stop_reason in _FAILURE_REASONS else "stopped"
        preserve = row.storage_policy == "preserve" and final_status == "stopped"
        if row.provider_instance_id:
            provider = self.b.provider(row.provider)
            try:
                if preserve:
                    await provider.stop_instance(row.provider_instance_id)
                else:
                    await provider.destroy_instance(row.provider_instance_id)
                instance = await provider.get_instance(row.provider_instance_id)
                verified = instance.state is InstanceState.GONE or (
                    instance.state is InstanceState.STOPPED and preserve)
                if not verified and not preserve and instance.state is InstanceState.STOPPED:
                    verified = True  # not running any more; a later reconcile removes leftovers
            except ProviderError as exc:
                log.warning("destroy not verified", extra={"session_id": row.id, "error": str(exc)})
                verified = False
            if not verified:
                metrics.DESTROY_FAILURES.inc()
                now = self.b.clock.now()
                retry_at = now + _backoff(row.destroy_attempts, first=5.0, cap=300.0)
                async with self.b.engine.begin() as conn:
                    await repo.release(conn, row.id, row.lease_owner, destroy_attempts=row.destroy_attempts + 1,
                                       next_check_at=retry_at)
                    return await repo.get(conn, row.id)
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            done = await repo.transition(
                conn, row.id, ("stopping",), now, status=final_status, stopped_at=now, lease_owner=None,
                lease_until=None, next_check_at=None,
                preserved_until=now + timedelta(hours=self.b.settings.preserve_hours) if preserve else None)
            if done is None:  # pragma: no cover - only the lease holder finishes
                return await repo.get(conn, row.id)
            await record_session_cost(conn, session_id=row.id, consumer_id=row.consumer_id, provider=row.provider,
                                      gpu_type=row.gpu_type, price_per_hour=row.price_per_hour,
                                      billing_started_at=row.billing_started_at, end=billing_end(row, now), now=now)
        metrics.SESSIONS_DESTROYED.labels(row.provider, row.stop_reason or "user_requested").inc()
        if row.stop_reason == "hard_max":
            metrics.HARD_MAX_ENFORCED.inc()
        elif row.stop_reason == "idle":
            metrics.IDLE_SHUTDOWNS.labels(row.provider).inc()
        await repo.publish_change(self.b.redis, done.id, done.version)
        await self.refresh_active_gauge()
        return done

    async def release_preserved(self, session_id: str) -> Row | None:
        """Delete the disk kept for a preserved session (DELETE on it, or the retention has run out)."""
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            row = await repo.claim(conn, session_id, self.b.lease_token(), now, now + STEP_LEASE, ("stopped",))
        if row is None or row.preserved_until is None:
            if row is not None:
                await self._release(row)
            return row
        try:
            provider = self.b.provider(row.provider)
            await provider.destroy_instance(row.provider_instance_id)
            gone = (await provider.get_instance(row.provider_instance_id)).state is InstanceState.GONE
        except ProviderError:
            gone = False
        if not gone:
            metrics.DESTROY_FAILURES.inc()
            return await self._release(row, next_check_at=now + timedelta(minutes=1))
        return await self._release(row, preserved_until=None)

    # ---- user actions --------------------------------------------------------------------------------------------

    async def done(self, session_id: str, *, owner: str | None = None) -> Row:
        row = await self.get(session_id, owner=owner)
        if row.status in TERMINAL_SESSION_STATUSES:
            raise Conflict(f"session {session_id} is in terminal state: {row.status}", reason="SESSION_TERMINAL")
        if row.status == "stopping":
            return row
        ended = await self.terminate(session_id, "done")
        return ended or await self.get(session_id)

    async def destroy(self, session_id: str, *, owner: str | None = None) -> Row:
        row = await self.get(session_id, owner=owner)
        if row.status == "stopped" and row.preserved_until is not None:
            return await self.release_preserved(session_id) or row
        if row.status in ACTIVE_SESSION_STATUSES:
            ended = await self.terminate(session_id, "user_requested")
            return ended or await self.get(session_id)
        if row.status == "stopping":
            return await self.finish_stopping(session_id) or row
        return row  # stopped/failed: idempotent

    async def extend(self, session_id: str, hours: int, *, owner: str | None = None) -> Row:
        """One atomic UPDATE adds the hours only if the result stays within created_at + hard max, so two
        concurrent extensions can neither lose one another nor cross the limit together."""
        if not 1 <= hours <= MAX_RESERVATION_HOURS:
            raise InvalidArgument.field("additional_hours", "is required and must be between 1 and 12"
                                        if hours == 0 else "must be between 1 and 12")
        if owner is not None:
            await self.get(session_id, owner=owner)  # a session's consumer never changes: no race to lose
        limit = timedelta(hours=self.b.settings.hard_max_hours)
        async with self.b.engine.begin() as conn:
            updated = await repo.extend(conn, session_id, timedelta(hours=hours), limit, self.b.clock.now())
        if updated is not None:
            await repo.publish_change(self.b.redis, updated.id, updated.version)
            return updated
        row = await self.get(session_id)  # refused: say why, from the row as it is now
        if row.status not in ACTIVE_SESSION_STATUSES:
            raise Conflict(f"cannot extend session {session_id} in status {row.status}", reason="SESSION_NOT_ACTIVE")
        hard_max = row.created_at + limit
        left = int((hard_max - row.expires_at).total_seconds() // 3600)
        raise FailedPrecondition(
            f"extension would exceed {self.b.settings.hard_max_hours}-hour hard max: expires_at would be "
            f"{(row.expires_at + timedelta(hours=hours)).isoformat()}, limit {hard_max.isoformat()}; at most "
            f"{max(left, 0)} more hour(s)", reason="HARD_MAX_EXCEEDED")

    async def refresh_active_gauge(self) -> None:
        """gpu_sessions_active from the database (exact on every replica; series drop to 0, never drift)."""
        async with self.b.engine.connect() as conn:
            rows = await repo.count_by_provider_status(conn)
        seen = {(r.provider, r.status): r.n for r in rows}
        for provider in self.b.providers:
            for status in (*ACTIVE_SESSION_STATUSES, "stopping"):
                metrics.SESSIONS_ACTIVE.labels(provider, status).set(seen.get((provider, status), 0))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


VANISHED_REASONS = frozenset({"ghost", "instance_vanished"})  # the provider lost the instance by itself


def billing_end(row: Row, now: datetime) -> datetime:
    """Where a terminated session's billing ends: now (the destroy was just confirmed), or, for an instance the
    provider lost by itself, the last moment it was seen to exist."""
    if row.stop_reason in VANISHED_REASONS and row.instance_seen_at is not None:
        return min(now, max(row.instance_seen_at, row.billing_started_at or row.instance_seen_at))
    return now


_FAILURE_REASONS = frozenset({"ssh_verify_timeout", "api_verify_timeout", "instance_vanished", "instance_stopped",
                              "permanent_ssh_error", "provision_failed"})


def _backoff(attempt: int, *, first: float = 2.0, cap: float = 15.0) -> timedelta:
    return timedelta(seconds=min(first * 1.5 ** attempt, cap))


def _validate_create(req) -> None:
    v = Violations()
    for name in ("consumer_id", "offer_id", "workload_type"):
        v.require(bool(getattr(req, name).strip()), name, "is required")
    v.require(not req.consumer_id or bool(_ID.match(req.consumer_id)), "consumer_id",
              "must be 1-255 characters of letters, digits and ._:@/-")
    if req.workload_type.strip():
        v.require(req.workload_type in WORKLOAD_TYPES, "workload_type", f"must be one of {', '.join(WORKLOAD_TYPES)}")
    if req.reservation_hours == 0:
        v.require(False, "reservation_hours", "is required (1-12)")
    else:
        v.require(req.reservation_hours >= 1, "reservation_hours", "must be at least 1")
        v.require(req.reservation_hours <= MAX_RESERVATION_HOURS, "reservation_hours", "must be at most 12")
    v.require(req.idle_threshold_minutes >= 0, "idle_threshold_minutes", "must be non-negative (0 disables)")
    if req.auto_retry and req.retry_scope:
        v.require(req.retry_scope in RETRY_SCOPES, "retry_scope", f"must be one of {', '.join(RETRY_SCOPES)}")
    if req.ssh_key_type:
        v.require(req.ssh_key_type in SSH_KEY_TYPES, "ssh_key_type", "must be ed25519 or rsa")
    if req.HasField("disk_gb"):
        v.require(1 <= req.disk_gb <= 65536, "disk_gb", "must be between 1 and 65536")
    for i, port in enumerate(req.exposed_ports):
        v.require(1 <= port <= 65535, f"exposed_ports[{i}]", "must be a TCP port (1-65535)")
    # Bounded by the columns they are stored in; PostgreSQL text cannot hold NUL.
    for name, most in (("offer_id", 255), ("request_id", 255), ("docker_image", 512), ("model_id", 255),
                       ("quantization", 32), ("template_hash_id", 64), ("on_start_cmd", 8192)):
        value = getattr(req, name)
        v.require(len(value) <= most, name, f"must be at most {most} characters")
        v.require("\x00" not in value, name, "must not contain NUL characters")
    v.raise_if_any()


def _duplicate(consumer_id: str, existing: Row) -> Conflict:
    return Conflict(f"consumer {consumer_id} already has active session {existing.id} for offer "
                    f"{existing.offer_id} (status: {existing.status})", reason="DUPLICATE_SESSION",
                    metadata={"session_id": existing.id})


def _insufficient_disk(requested: int, estimate) -> InvalidArgument:
    import json  # noqa: PLC0415

    breakdown = estimate.proto_fields()
    return InvalidArgument(
        f"insufficient disk: requested {requested} GB, minimum {estimate.minimum_gb} GB "
        f"(recommended {estimate.recommended_gb} GB)",
        reason="INSUFFICIENT_DISK",
        metadata={"error_type": "insufficient_disk", "requested_gb": str(requested),
                  "minimum_gb": str(estimate.minimum_gb), "recommended_gb": str(estimate.recommended_gb),
                  "breakdown": json.dumps(breakdown)},
        violations=[],
    )


def _create_error(row: Row, exc: ProviderError) -> GantryError:
    if exc.kind is ErrorKind.STALE_INVENTORY:
        return Unavailable(
            f"offer {row.offer_id} from {row.provider} unavailable (stale inventory): {exc.detail}",
            reason="STALE_INVENTORY",
            metadata={"error_type": "stale_inventory", "offer_id": row.offer_id, "provider": row.provider,
                      "retry_suggested": "true", "message": STALE_MESSAGE, "session_id": row.id})
    if exc.kind in (ErrorKind.TRANSIENT, ErrorKind.AUTH):
        return Unavailable(f"provider {row.provider} unavailable: {exc.detail}", reason="PROVIDER_UNAVAILABLE",
                           metadata={"error_type": "provider_unavailable", "retry_suggested": "true",
                                     "session_id": row.id})
    return ProvisionFailed(f"provision failed: {exc.detail}",
                           metadata={"error_type": "invalid_request", "retry_suggested": "false",
                                     "session_id": row.id})

