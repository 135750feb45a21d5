"""Golden table of every legacy REST endpoint named in the seeds: (seed, endpoint name, method, path, RPC).

Written by hand from the seed documents and domain notes, never derived from the protos, so that a changed
`google.api.http` path (which `buf breaking` does not notice) fails the contract test. The endpoint doc
(docs/endpoints.md) is rendered from it.
"""

LEGACY_ROUTES: list[tuple[str, str, str, str, str]] = [
    # seed 000 + 002: Instances
    ("000", "Get Instance Reconciliation Csv", "GET", "/instances/reconciliation_csv", "gantry.instances.v1.InstanceService.GetInstanceReconciliationCsv"),
    ("000", "Get Instance Compute History Csv", "GET", "/instances/compute_history_csv", "gantry.instances.v1.InstanceService.GetInstanceComputeHistoryCsv"),
    ("000", "Get Launch Config", "GET", "/instances/launch_config", "gantry.instances.v1.InstanceService.GetLaunchConfig"),
    ("000", "Get Rint Nonce", "GET", "/instances/launch_config/{config_id}/nonce", "gantry.instances.v1.InstanceService.GetRintNonce"),
    ("000", "Claim Tee Launch Config", "POST", "/instances/launch_config/{config_id}/tee", "gantry.instances.v1.InstanceService.ClaimTeeLaunchConfig"),
    ("000", "Verify Tee Launch Config Instance", "PUT", "/instances/launch_config/{config_id}/tee", "gantry.instances.v1.InstanceService.VerifyTeeLaunchConfigInstance"),
    ("000", "Validate Tee Launch Config Instance", "POST", "/instances/launch_config/{config_id}/attest", "gantry.instances.v1.InstanceService.ValidateTeeLaunchConfigInstance"),
    ("000", "Claim Launch Config", "POST", "/instances/launch_config/{config_id}", "gantry.instances.v1.InstanceService.ClaimLaunchConfig"),
    ("000", "Verify Launch Config Instance", "PUT", "/instances/launch_config/{config_id}", "gantry.instances.v1.InstanceService.VerifyLaunchConfigInstance"),
    ("000", "Claim Graval Launch Config", "POST", "/instances/launch_config/{config_id}/graval", "gantry.instances.v1.InstanceService.ClaimGravalLaunchConfig"),
    ("000", "Verify Graval Launch Config Instance", "PUT", "/instances/launch_config/{config_id}/graval", "gantry.instances.v1.InstanceService.VerifyGravalLaunchConfigInstance"),
    ("000", "Activate Launch Config Instance", "GET", "/instances/launch_config/{config_id}/activate", "gantry.instances.v1.InstanceService.ActivateLaunchConfigInstance"),
    ("000", "Get Instance Nonce", "GET", "/instances/nonce", "gantry.instances.v1.InstanceService.GetInstanceNonce"),
    ("000", "Get Token", "GET", "/instances/token_check", "gantry.instances.v1.InstanceService.GetToken"),
    ("000", "Get Tee Instance Evidence", "GET", "/instances/{instance_id}/evidence", "gantry.instances.v1.InstanceService.GetTeeInstanceEvidence"),
    ("000", "Stream Logs", "GET", "/instances/{instance_id}/logs", "gantry.instances.v1.InstanceService.StreamLogs"),
    ("000", "Disable Instance Endpoint", "POST", "/instances/{chute_id}/{instance_id}/disable", "gantry.instances.v1.InstanceService.DisableInstance"),
    ("000", "Delete Instance", "DELETE", "/instances/{chute_id}/{instance_id}", "gantry.instances.v1.InstanceService.DeleteInstance"),
    ("002", "Create Instance", "POST", "/instances/{chute_id}/", "gantry.instances.v1.InstanceService.CreateInstance"),
    ("002", "Activate Instance", "PATCH", "/instances/{chute_id}/{instance_id}", "gantry.instances.v1.InstanceService.ActivateInstance"),
    # seed 001: Servers
    ("001", "Get Nonce", "GET", "/servers/nonce", "gantry.servers.v1.ServerService.GetNonce"),
    ("001", "Verify Boot Attestation", "POST", "/servers/boot/attestation", "gantry.servers.v1.ServerService.VerifyBootAttestation"),
    ("001", "Get Cache Luks Passphrase", "GET", "/servers/{vm_name}/luks", "gantry.servers.v1.ServerService.GetCacheLuksPassphrase"),
    ("001", "Sync Luks Passphrases", "POST", "/servers/{vm_name}/luks", "gantry.servers.v1.ServerService.SyncLuksPassphrases"),
    ("001", "Create Server", "POST", "/servers/", "gantry.servers.v1.ServerService.CreateServer"),
    ("001", "Patch Server Name", "PATCH", "/servers/{server_id}", "gantry.servers.v1.ServerService.PatchServerName"),
    ("001", "Get Server Details", "GET", "/servers/{server_id}", "gantry.servers.v1.ServerService.GetServerDetails"),
    ("001", "Remove Server", "DELETE", "/servers/{server_name_or_id}", "gantry.servers.v1.ServerService.RemoveServer"),
    ("001", "Get Runtime Nonce", "GET", "/servers/{server_id}/nonce", "gantry.servers.v1.ServerService.GetRuntimeNonce"),
    ("001", "Verify Runtime Attestation", "POST", "/servers/{server_id}/attestation", "gantry.servers.v1.ServerService.VerifyRuntimeAttestation"),
    ("001", "Get Attestation Status", "GET", "/servers/{server_id}/attestation/status", "gantry.servers.v1.ServerService.GetAttestationStatus"),
    # seed 003: Miner
    ("003", "List Chutes", "GET", "/miner/chutes/", "gantry.miner.v1.MinerService.ListChutes"),
    ("003", "List Images", "GET", "/miner/images/", "gantry.miner.v1.MinerService.ListImages"),
    ("003", "List Nodes", "GET", "/miner/nodes/", "gantry.miner.v1.MinerService.ListNodes"),
    ("003", "List Servers", "GET", "/miner/servers/", "gantry.miner.v1.MinerService.ListServers"),
    ("003", "List Instances", "GET", "/miner/instances/", "gantry.miner.v1.MinerService.ListInstances"),
    ("003", "List Available Jobs", "GET", "/miner/jobs/", "gantry.miner.v1.MinerService.ListAvailableJobs"),
    ("003", "Release Job", "DELETE", "/miner/jobs/{job_id}", "gantry.miner.v1.MinerService.ReleaseJob"),
    ("003", "Get Full Inventory", "GET", "/miner/inventory", "gantry.miner.v1.MinerService.GetFullInventory"),
    ("003", "Metrics", "GET", "/miner/metrics/", "gantry.miner.v1.MinerService.GetMetrics"),
    ("003", "List Active Instances", "GET", "/miner/active_instances/", "gantry.miner.v1.MinerService.ListActiveInstances"),
    ("003", "Get Chute", "GET", "/miner/chutes/{chute_id}/{version}", "gantry.miner.v1.MinerService.GetChute"),
    ("003", "Get Stats", "GET", "/miner/stats", "gantry.miner.v1.MinerService.GetStats"),
    ("003", "Get Scores", "GET", "/miner/scores", "gantry.miner.v1.MinerService.GetScores"),
    ("003", "Unique Chute History", "GET", "/miner/unique_chute_history/{hotkey}", "gantry.miner.v1.MinerService.GetUniqueChuteHistory"),
    ("003", "Get Thrash Cooldowns", "GET", "/miner/thrash_cooldowns", "gantry.miner.v1.MinerService.GetThrashCooldowns"),
    ("003", "Get Metagraph", "GET", "/miner/metagraph", "gantry.miner.v1.MinerService.GetMetagraph"),
    # seed 004: GPU broker
    ("004", "Health", "GET", "/health", "gantry.ops.v1.OpsService.GetHealth"),
    ("004", "Ready", "GET", "/ready", "gantry.ops.v1.OpsService.GetReady"),
    ("004", "Metrics", "GET", "/metrics", "gantry.ops.v1.OpsService.GetMetrics"),
    ("004", "List Inventory", "GET", "/api/v1/inventory", "gantry.broker.v1.InventoryService.ListOffers"),
    ("004", "Get Offer", "GET", "/api/v1/inventory/{id}", "gantry.broker.v1.InventoryService.GetOffer"),
    ("004", "Compatible Templates", "GET", "/api/v1/inventory/{id}/compatible-templates", "gantry.broker.v1.InventoryService.ListCompatibleTemplates"),
    ("004", "List Templates", "GET", "/api/v1/templates", "gantry.broker.v1.TemplateService.ListTemplates"),
    ("004", "Get Template", "GET", "/api/v1/templates/{hash_id}", "gantry.broker.v1.TemplateService.GetTemplate"),
    ("004", "Create Session", "POST", "/api/v1/sessions", "gantry.broker.v1.SessionService.CreateSession"),
    ("004", "List Sessions", "GET", "/api/v1/sessions", "gantry.broker.v1.SessionService.ListSessions"),
    ("004", "Get Session", "GET", "/api/v1/sessions/{id}", "gantry.broker.v1.SessionService.GetSession"),
    ("004", "Session Done", "POST", "/api/v1/sessions/{id}/done", "gantry.broker.v1.SessionService.DoneSession"),
    ("004", "Extend Session", "POST", "/api/v1/sessions/{id}/extend", "gantry.broker.v1.SessionService.ExtendSession"),
    ("004", "Destroy Session", "DELETE", "/api/v1/sessions/{id}", "gantry.broker.v1.SessionService.DestroySession"),
    ("004", "Session Diagnostics", "GET", "/api/v1/sessions/{id}/diagnostics", "gantry.broker.v1.SessionService.GetSessionDiagnostics"),
    ("004", "Get Costs", "GET", "/api/v1/costs", "gantry.broker.v1.CostService.GetCosts"),
    ("004", "Cost Summary", "GET", "/api/v1/costs/summary", "gantry.broker.v1.CostService.GetCostSummary"),
]

# Bound routes that are Gantry's own additions (not in any seed); everything else bound must be in the table.
GANTRY_ROUTE_PREFIXES = ("/admin/v1/",)
GANTRY_ROUTES = {
    ("GET", "/miner/events"),
    # Called by a stock miner agent though absent from the seeds (../shared/docs/miner-contract.md A9, A10, A19).
    ("GET", "/chutes/rolling_updates"),
    ("GET", "/chutes/utilization"),
    ("GET", "/nodes/supported"),
    # The miner operator's CLI (miner-contract.md C5; domain-validator.md §6.14).
    ("GET", "/miner/instance_logs"),
    ("GET", "/api/v1/offer-health"),
    ("GET", "/api/v1/sessions/{id}/watch"),
}
