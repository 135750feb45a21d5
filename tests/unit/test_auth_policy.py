"""The auth policy table covers every RPC Gantry serves, with kinds and purposes from the reference."""
from __future__ import annotations

import pytest

from gantry_server.auth_policy import KINDS, POLICIES, policy_for
from gantry_server.services.registry import SERVICES

ALL_RPCS = {f"/{spec.full_name}/{m.name}" for spec in SERVICES for m in spec.descriptor.methods}
PURPOSES = {None, "launch", "instances", "chutes", "logs", "tee", "miner"}  # domain-validator.md §1.1


def test_every_rpc_has_exactly_one_policy_and_nothing_else_does():
    assert ALL_RPCS - POLICIES.keys() == set(), "RPCs without a policy"
    assert POLICIES.keys() - ALL_RPCS == set(), "policies for RPCs that do not exist"


def test_policies_use_known_kinds_purposes_and_nonce_purposes():
    for rpc, policy in POLICIES.items():
        assert policy.kind in KINDS, rpc
        assert policy.purpose in PURPOSES, rpc
        assert policy.attestation_nonce in {None, "boot", "runtime", "instance_verification"}, rpc


@pytest.mark.parametrize(("rpc", "kind", "purpose", "registered"), [
    ("/gantry.miner.v1.MinerService/GetMetagraph", "none", None, False),
    ("/gantry.miner.v1.MinerService/ListNodes", "hotkey", "miner", True),
    ("/gantry.instances.v1.InstanceService/GetLaunchConfig", "hotkey", "launch", True),
    ("/gantry.servers.v1.ServerService/CreateServer", "hotkey", None, True),  # body hash
    ("/gantry.servers.v1.ServerService/GetServerDetails", "hotkey", "tee", False),
    ("/gantry.instances.v1.InstanceService/DeleteInstance", "hotkey", "instances", True),
    ("/gantry.instances.v1.InstanceService/GetTeeInstanceEvidence", "user", "chutes", False),
    ("/gantry.instances.v1.InstanceService/StreamLogs", "user", "logs", False),
    ("/gantry.instances.v1.InstanceService/ClaimLaunchConfig", "launch_token", None, False),
    ("/gantry.servers.v1.ServerService/SyncLuksPassphrases", "boot_token", None, False),
    ("/gantry.admin.v1.AdminService/CreateApiKey", "admin", None, False),
])
def test_reference_endpoints_keep_their_scheme(rpc, kind, purpose, registered):
    policy = policy_for(rpc)
    assert (policy.kind, policy.purpose, policy.registered) == (kind, purpose, registered)


def test_attestation_nonce_purposes_match_the_reference():
    assert policy_for("/gantry.servers.v1.ServerService/VerifyBootAttestation").attestation_nonce == "boot"
    assert policy_for("/gantry.instances.v1.InstanceService/ClaimTeeLaunchConfig").attestation_nonce == \
        "instance_verification"
    assert policy_for("/gantry.instances.v1.InstanceService/ValidateTeeLaunchConfigInstance").attestation_nonce == "boot"
    assert policy_for("/gantry.servers.v1.ServerService/VerifyRuntimeAttestation").attestation_nonce == "runtime"


def test_undeclared_rpcs_get_no_policy_but_health_is_open():
    assert policy_for("/gantry.miner.v1.MinerService/Nope") is None
    assert policy_for("/grpc.health.v1.Health/Check").kind == "none"
