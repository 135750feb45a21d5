"""Every broker metric the seed names, with the labels of the reference (domain-broker Part 2 §5), in one place.

Each metric moves exactly once per event, at the place the event happens (tests assert it). The
`gpu_sessions_active` gauge is not moved by hand: it is recomputed from the database (see
`refresh_active_gauge`), so it cannot drift and drops to 0 for a status once no session is in it.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_ACTIVE = Gauge("gpu_sessions_active", "Sessions by provider and non-terminal status",
                        ["provider", "status"])
SESSIONS_CREATED = Counter("gpu_sessions_created_total", "Provider instances created for sessions", ["provider"])
SESSIONS_DESTROYED = Counter("gpu_sessions_destroyed_total", "Sessions ended, by the reason they ended",
                             ["provider", "reason"])
ORPHANS_DETECTED = Counter("gpu_orphans_detected_total", "Provider instances of ours with no live session")
GHOSTS_DETECTED = Counter("gpu_ghosts_detected_total", "Live sessions whose provider instance is gone")
RECONCILIATION_MISMATCHES = Counter("gpu_reconciliation_mismatches_total", "Orphans plus ghosts")
DESTROY_FAILURES = Counter("gpu_destroy_failures_total", "Destroy attempts that did not verify")
HARD_MAX_ENFORCED = Counter("gpu_hard_max_enforced_total", "Sessions ended by the 12 h hard max")
SSH_VERIFY_DURATION = Histogram("gpu_ssh_verify_duration_seconds", "SSH verification time until success",
                                ["provider"], buckets=[2.0 ** i for i in range(10)])
SSH_VERIFY_ATTEMPTS = Histogram("gpu_ssh_verify_attempts", "SSH attempts until success", ["provider"],
                                buckets=list(range(1, 11)))
SSH_VERIFY_FAILURES = Counter("gpu_ssh_verify_failures_total", "SSH verifications that failed (timeout, permanent)")
SSH_VERIFY_ERRORS = Counter("gpu_ssh_verify_errors_by_type", "Failed SSH attempts by error class",
                            ["provider", "error_type"])
API_VERIFY_DURATION = Histogram("gpu_api_verify_duration_seconds", "Entrypoint API verification time",
                                ["provider"], buckets=[2.0 ** i for i in range(12)])
API_VERIFY_FAILURES = Counter("gpu_api_verify_failures_total", "Entrypoint API verifications that failed")
PROVISIONING_DURATION = Histogram("gpu_provisioning_duration_seconds", "Create accepted to running",
                                  ["provider"], buckets=[2.0 ** i for i in range(10)])
PROVIDER_API_ERRORS = Counter("gpu_provider_api_errors_total", "Provider API calls that failed",
                              ["provider", "operation"])
PROVIDER_API_CALLS = Counter("gpu_provider_api_calls_total", "Provider API calls",
                             ["provider", "operation", "status"])  # status: success, error, circuit_open
PROVIDER_API_SECONDS = Histogram("gpu_provider_api_response_time_seconds", "Provider API call latency",
                                 ["provider", "operation"],
                                 buckets=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])
CIRCUIT_STATE = Gauge("gpu_provider_circuit_breaker_state", "0 closed, 1 open, 2 half-open", ["provider"])
COST_ACCRUED = Counter("gpu_cost_accrued_usd", "USD recorded as session cost", ["provider"])
RETRY_ATTEMPTS = Counter("gpu_session_retry_attempts_total", "Auto-retries started",
                         ["provider", "scope", "reason"])
RETRY_SUCCESSES = Counter("gpu_session_retry_successes_total", "Auto-retries that provisioned",
                          ["provider", "scope"])
RETRY_EXHAUSTED = Counter("gpu_session_retry_exhausted_total", "Auto-retry chains that ran out",
                          ["provider", "scope"])
DISK_AVAILABLE = Gauge("gpu_session_disk_available_gb", "Last observed free disk of a session", ["provider"])
OFFER_FAILURES = Counter("gpu_offer_failures_total", "Offer failures recorded by the failure tracker",
                         ["provider", "gpu_type", "failure_type"])
IDLE_SHUTDOWNS = Counter("gpu_idle_shutdowns_total", "Sessions ended for idleness", ["provider"])

# Reasons a session ends (label of gpu_sessions_destroyed_total and the session's stop_reason).
REASONS = ("user_requested", "done", "expired", "hard_max", "idle", "ghost", "shutdown", "ssh_verify_timeout",
           "api_verify_timeout", "instance_vanished", "instance_stopped", "permanent_ssh_error", "provision_failed")
