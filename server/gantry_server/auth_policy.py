"""Who may call each RPC: one table, read by the auth interceptor (and nothing else).

Kinds:
    none          anyone (the handler may still read `current_caller` for the peer IP)
    hotkey        hotkey signature (v1 purpose or body hash, v2, grpc-v1); `registered` demands the hotkey be in
                  metagraph_nodes on GANTRY_NETUID; a blacklisted hotkey is always refused
    user          API key (`authorization: Bearer cpk_...`), user token (`authorization: Bearer <JWT>`, see
                  domain/auth/user_tokens.py), or a hotkey signature with `purpose`
    launch_token  ES256 launch-config JWT whose `sub` is the request's config_id (`config_from="token"`: the
                  request names no config; the token's `sub` is the config, see StreamStartupLogs)
    boot_token    `x-boot-token` bound to the hotkey and the request's vm_name (validated, not consumed)
    nonce         no identity, only a one-time attestation nonce (boot attestation)
    admin         `authorization: Bearer <admin token>`
    consumer      the broker's consumers: `user` by API key or user token when the BrokerSettings switch named by
                  `setting` says "required" (GANTRY_BROKER_AUTH / GANTRY_BROKER_INVENTORY_AUTH), `none` when "open"

`attestation_nonce` (a purpose) adds a one-time attestation nonce from `x-chutes-nonce`, bound to the caller
IP, consumed before the handler runs. Purposes follow domain-validator.md §1.1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Policy:
    kind: str
    purpose: str | None = None  # hotkey/user: v1 purpose; None means v1 signs the body hash
    registered: bool = False
    attestation_nonce: str | None = None
    allow_retrieved: bool = False  # launch_token: verify/activate may reuse a retrieved config
    hotkey_from: str = "metadata"  # boot_token: "metadata" (x-chutes-hotkey) or "request" (request.hotkey)
    rate_limit: str | None = None  # bucket (RATE_LIMITS below; its rate is in config RateLimitSettings)
    setting: str = "auth"  # consumer: the BrokerSettings field ("required"/"open") that decides
    config_from: str = "request"  # launch_token: "request" (request.config_id must be the sub) or "token"


KINDS = frozenset({"none", "hotkey", "user", "launch_token", "boot_token", "nonce", "admin", "consumer"})

NONE = Policy("none")
ADMIN = Policy("admin")


def hotkey(purpose: str | None, *, registered: bool = False, nonce: str | None = None) -> Policy:
    return Policy("hotkey", purpose=purpose, registered=registered, attestation_nonce=nonce)


def launch(*, allow_retrieved: bool = False, nonce: str | None = None) -> Policy:
    return Policy("launch_token", allow_retrieved=allow_retrieved, attestation_nonce=nonce)


_MINER = hotkey("miner", registered=True)
_TEE = hotkey("tee")
_CONSUMER = Policy("consumer")
_CATALOGUE = Policy("consumer", setting="inventory_auth")

POLICIES: dict[str, Policy] = {
    # ops
    "/gantry.ops.v1.OpsService/GetHealth": NONE,
    "/gantry.ops.v1.OpsService/GetReady": NONE,
    "/gantry.ops.v1.OpsService/GetMetrics": NONE,
    # admin
    **{f"/gantry.admin.v1.AdminService/{m}": ADMIN for m in (
        "UpsertChute", "DeleteChute", "SetChuteBounty", "UpsertImage", "DeleteImage", "CreateJob", "CreateUser",
        "CreateApiKey", "RevokeApiKey",
        "UpsertMetagraphNodes", "SetBlacklist", "PutMeasurementPolicy", "ListMeasurementPolicies",
        "CreateUserToken", "RevokeUserToken", "RotateKeys")},
    # instances (seed 000/002)
    "/gantry.instances.v1.InstanceService/GetInstanceReconciliationCsv": NONE,
    "/gantry.instances.v1.InstanceService/GetInstanceComputeHistoryCsv": NONE,
    "/gantry.instances.v1.InstanceService/GetLaunchConfig": hotkey("launch", registered=True),
    "/gantry.instances.v1.InstanceService/GetRintNonce": launch(allow_retrieved=True),
    "/gantry.instances.v1.InstanceService/ClaimTeeLaunchConfig": launch(nonce="instance_verification"),
    "/gantry.instances.v1.InstanceService/VerifyTeeLaunchConfigInstance": launch(allow_retrieved=True),
    "/gantry.instances.v1.InstanceService/ValidateTeeLaunchConfigInstance": launch(nonce="boot"),
    "/gantry.instances.v1.InstanceService/ClaimLaunchConfig": launch(),
    "/gantry.instances.v1.InstanceService/VerifyLaunchConfigInstance": launch(allow_retrieved=True),
    "/gantry.instances.v1.InstanceService/ClaimGravalLaunchConfig": launch(),
    "/gantry.instances.v1.InstanceService/VerifyGravalLaunchConfigInstance": launch(allow_retrieved=True),
    "/gantry.instances.v1.InstanceService/ActivateLaunchConfigInstance": launch(allow_retrieved=True),
    "/gantry.instances.v1.InstanceService/GetInstanceNonce": NONE,
    "/gantry.instances.v1.InstanceService/GetToken": NONE,
    "/gantry.instances.v1.InstanceService/GetTeeInstanceEvidence": Policy("user", purpose="chutes"),
    "/gantry.instances.v1.InstanceService/StreamLogs": Policy("user", purpose="logs"),
    "/gantry.instances.v1.InstanceService/StreamStartupLogs": Policy("launch_token", allow_retrieved=True,
                                                                     config_from="token"),
    "/gantry.instances.v1.InstanceService/DisableInstance": hotkey("instances", registered=True),
    "/gantry.instances.v1.InstanceService/DeleteInstance": hotkey("instances", registered=True),
    "/gantry.instances.v1.InstanceService/CreateInstance": hotkey(None, registered=True),
    "/gantry.instances.v1.InstanceService/ActivateInstance": hotkey(None, registered=True),
    # servers (seed 001)
    "/gantry.servers.v1.ServerService/GetNonce": NONE,
    "/gantry.servers.v1.ServerService/VerifyBootAttestation": Policy("nonce", attestation_nonce="boot"),
    "/gantry.servers.v1.ServerService/GetCacheLuksPassphrase": Policy("boot_token", hotkey_from="request"),
    "/gantry.servers.v1.ServerService/SyncLuksPassphrases": Policy("boot_token", hotkey_from="metadata"),
    "/gantry.servers.v1.ServerService/CreateServer": hotkey(None, registered=True),
    "/gantry.servers.v1.ServerService/PatchServerName": _TEE,
    "/gantry.servers.v1.ServerService/GetServerDetails": _TEE,
    "/gantry.servers.v1.ServerService/RemoveServer": _TEE,
    "/gantry.servers.v1.ServerService/GetRuntimeNonce": _TEE,
    # The reference lists hotkey auth (purpose tee) here as well, but the signature nonce and the attestation
    # nonce would both need X-Chutes-Nonce. The runtime nonce is only issued to the server's owner (hotkey auth
    # on GetRuntimeNonce) at the server's IP, so possessing it from that IP is the credential.
    "/gantry.servers.v1.ServerService/VerifyRuntimeAttestation": Policy("nonce", attestation_nonce="runtime"),
    "/gantry.servers.v1.ServerService/GetAttestationStatus": _TEE,
    # miner (seed 003)
    **{f"/gantry.miner.v1.MinerService/{m}": _MINER for m in (
        "ListChutes", "ListImages", "ListNodes", "ListServers", "ListInstances", "ListAvailableJobs", "ReleaseJob",
        "GetFullInventory", "ListActiveInstances", "GetChute", "GetThrashCooldowns", "WatchEvents")},
    **{f"/gantry.miner.v1.MinerService/{m}": NONE for m in (
        "GetMetrics", "GetStats", "GetScores", "GetUniqueChuteHistory", "GetMetagraph", "ListRollingUpdates",
        "ListChuteUtilization", "GetSupportedNodes")},
    # broker (seed 004): the reference has no authentication; a consumer is an API-key/user-token user when
    # GANTRY_BROKER_AUTH=required (sessions and costs are then the caller's own, see docs/broker.md).
    **{f"/gantry.broker.v1.InventoryService/{m}": _CATALOGUE for m in (
        "ListOffers", "GetOffer", "ListCompatibleTemplates", "ListOfferHealth")},
    **{f"/gantry.broker.v1.TemplateService/{m}": _CATALOGUE for m in ("ListTemplates", "GetTemplate")},
    **{f"/gantry.broker.v1.SessionService/{m}": _CONSUMER for m in (
        "CreateSession", "ListSessions", "GetSession", "GetSessionDiagnostics", "DoneSession", "ExtendSession",
        "DestroySession", "WatchSession")},
    **{f"/gantry.broker.v1.CostService/{m}": _CONSUMER for m in ("GetCosts", "GetCostSummary")},
}

# Rate-limit bucket per RPC: every anonymous or cheap-to-call path that costs the server. Each bucket's rate
# (requests per window, per caller: user, hotkey, else the client IP by the trusted-proxy rule) is configured in
# config.RateLimitSettings (GANTRY_RATE_LIMITS). Every server stream is also capped in concurrency (per caller and
# per process, GANTRY_STREAMS_PER_CALLER / _PER_PROCESS) whether listed here or not.
RATE_LIMITS: dict[str, str] = {
    "/gantry.servers.v1.ServerService/GetNonce": "nonce",
    "/gantry.instances.v1.InstanceService/GetInstanceNonce": "nonce",
    "/gantry.servers.v1.ServerService/GetRuntimeNonce": "nonce",
    "/gantry.servers.v1.ServerService/VerifyBootAttestation": "attestation",
    "/gantry.servers.v1.ServerService/VerifyRuntimeAttestation": "attestation",
    "/gantry.instances.v1.InstanceService/GetTeeInstanceEvidence": "tee_evidence",
    **{f"/gantry.broker.v1.InventoryService/{m}": "inventory" for m in (
        "ListOffers", "GetOffer", "ListCompatibleTemplates", "ListOfferHealth")},
    **{f"/gantry.broker.v1.TemplateService/{m}": "inventory" for m in ("ListTemplates", "GetTemplate")},
    "/gantry.broker.v1.SessionService/CreateSession": "session_create",
    "/gantry.broker.v1.SessionService/WatchSession": "session_watch",
    "/gantry.instances.v1.InstanceService/GetInstanceReconciliationCsv": "export",
    "/gantry.instances.v1.InstanceService/GetInstanceComputeHistoryCsv": "export",
    "/gantry.instances.v1.InstanceService/GetToken": "public",
    **{f"/gantry.miner.v1.MinerService/{m}": "public" for m in (
        "GetMetrics", "GetStats", "GetScores", "GetUniqueChuteHistory", "GetMetagraph", "ListRollingUpdates",
        "ListChuteUtilization", "GetSupportedNodes")},
}
POLICIES.update({rpc: replace(POLICIES[rpc], rate_limit=bucket) for rpc, bucket in RATE_LIMITS.items()})

# Infrastructure services outside the product contract.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def policy_for(rpc: str) -> Policy | None:
    """The policy of an RPC; None for an RPC nobody declared (the interceptor refuses it)."""
    found = POLICIES.get(rpc)
    if found is None and rpc.startswith(OPEN_PREFIXES):
        return NONE
    return found
