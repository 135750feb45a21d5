"""The user-facing command groups of `gantry` that talk to a running server over gRPC with `gantry_client`.

    common.py   settings shared with `gantry admin` (address, TLS files), exit codes, the connect deadline,
                server errors, and output: tables and progress with `rich` on a terminal, plain text otherwise
    gpu.py      `gantry gpu ...`: a GPU consumer (broker face)
    miner.py    `gantry miner ...`: a miner operator (MinerService, signed by the miner's hotkey)
"""
