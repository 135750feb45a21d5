"""GPU models an instance may run on, with the hourly rate that prices them and weighs their compute.

`compute_multiplier(g) = hourly_rate(g) / max hourly_rate` (reference §4.9): an hour on the most expensive GPU
counts 1.0, an hour on a GPU at half that price 0.5. The rates are list prices in USD per GPU-hour; a model not
listed here is not supported and a claim on it is refused.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    identifier: str  # nodes.gpu_identifier, lower case
    hourly_rate: float


MODELS: dict[str, GpuModel] = {m.identifier: m for m in (
    GpuModel("b200", 5.00), GpuModel("h200", 3.50), GpuModel("h100", 2.50), GpuModel("h100_nvl", 2.40),
    GpuModel("h100_pcie", 2.20), GpuModel("h800", 2.20), GpuModel("mi300x", 2.50), GpuModel("a100", 1.40),
    GpuModel("a100_40gb", 1.10), GpuModel("l40s", 0.90), GpuModel("a6000_ada", 0.80), GpuModel("l40", 0.80),
    GpuModel("a6000", 0.60), GpuModel("5090", 0.70), GpuModel("4090", 0.45), GpuModel("a40", 0.40),
    GpuModel("3090", 0.25), GpuModel("l4", 0.40), GpuModel("a10", 0.35),
)}
MAX_RATE = max(m.hourly_rate for m in MODELS.values())


def model(identifier: str) -> GpuModel | None:
    return MODELS.get(identifier.strip().lower())


def compute_multiplier(identifier: str) -> float:
    found = model(identifier)
    return found.hourly_rate / MAX_RATE if found else 0.0


def supported(node_selector: dict | None) -> list[GpuModel]:
    """The models a chute's node selector allows (`include` narrows, `exclude` removes), in table order."""
    selector = node_selector or {}
    include = {g.lower() for g in selector.get("include") or []}
    exclude = {g.lower() for g in selector.get("exclude") or []}
    return [m for m in MODELS.values() if (not include or m.identifier in include) and m.identifier not in exclude]
