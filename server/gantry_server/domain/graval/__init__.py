"""Graval: Gantry's proof of GPU work for non-TEE launches (docs/graval.md). Pure domain code: no gRPC, no database.

The claim answers `seed`, `iterations` (= params.iterations) and the sealed symmetric key; the verify call checks
the response, then each GPU's work product, through a `WorkVerifier` (ReferenceWorkVerifier by default). The
caller enforces the deadline, `params.estimate_seconds × 2.15` after retrieval. `solver.solve` is the miner side.
"""
from .scheme import (
    DEFAULT_ROUNDS,
    REASONS,
    GravalParams,
    ReferenceWorkVerifier,
    WorkRejected,
    WorkVerifier,
    check_response,
    make_response,
    max_work_product_chars,
    new_seed,
    open_symmetric_key,
    params_for,
    response_plaintext,
    seal_symmetric_key,
    verify_work,
)

__all__ = [
    "DEFAULT_ROUNDS", "REASONS", "GravalParams", "ReferenceWorkVerifier", "WorkRejected", "WorkVerifier",
    "check_response", "make_response", "max_work_product_chars", "new_seed", "open_symmetric_key", "params_for",
    "response_plaintext", "seal_symmetric_key", "verify_work",
]
