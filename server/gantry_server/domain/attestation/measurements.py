"""The measurement policy: named, versioned sets of MRTD + RTMR0-3 a quote may show, and the GPUs they allow.

An entry holds one MRTD, the four RTMRs a *boot* quote shows (initramfs, before the root disk is unlocked) and
the four a *runtime* quote shows (the booted system), the GPU models (`gpu_identifier`) allowed on a server of
that image, and optionally the exact GPU count. A quote must match one entry on MRTD and all four RTMRs of its
kind; the entry's version becomes the attestation's `measurement_version`. On a mismatch the error names the
registers that differ from the closest entry, which is what a miner needs to find the wrong component.

Entries come from a JSON file (`GANTRY_TDX_MEASUREMENTS_FILE`, read at start) and from AdminService
(PutMeasurementPolicy, stored in PostgreSQL); an admin entry replaces a file entry of the same name.

    {"measurements": [{"name": "sek8s-h100", "version": "0.3.1", "mrtd": "<96 hex>",
                       "boot_rtmrs": ["<96 hex>", x4], "runtime_rtmrs": ["<96 hex>", x4],
                       "expected_gpus": ["h100"], "gpu_count": 8}]}
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .failures import GPU_MISMATCH, MEASUREMENT_MISMATCH, AttestationFailure
from .quote import REGISTERS, TdxQuote

BOOT = "boot"
RUNTIME = "runtime"
_HEX48 = re.compile(r"^[0-9a-fA-F]{96}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class PolicyFileError(ValueError):
    """The measurements file is unreadable or has an invalid entry (one line for the operator)."""


@dataclass(frozen=True)
class MeasurementEntry:
    name: str
    version: str
    mrtd: str
    boot_rtmrs: tuple[str, ...]
    runtime_rtmrs: tuple[str, ...]
    expected_gpus: tuple[str, ...] = ()
    gpu_count: int | None = None

    @classmethod
    def of(cls, *, name: str, version: str, mrtd: str, boot_rtmrs, runtime_rtmrs, expected_gpus=(),
           gpu_count: int | None = None) -> "MeasurementEntry":
        """Normalised (lower-case hex, stripped); call `problems` first for input from outside."""
        return cls(name=name.strip(), version=version.strip(), mrtd=mrtd.strip().lower(),
                   boot_rtmrs=tuple(r.strip().lower() for r in boot_rtmrs),
                   runtime_rtmrs=tuple(r.strip().lower() for r in runtime_rtmrs),
                   expected_gpus=tuple(g.strip().lower() for g in expected_gpus if g.strip()),
                   gpu_count=gpu_count)

    def registers(self, kind: str) -> dict[str, str]:
        rtmrs = self.boot_rtmrs if kind == BOOT else self.runtime_rtmrs
        return dict(zip(REGISTERS, (self.mrtd, *rtmrs)))


def problems(*, name: str, version: str, mrtd: str, boot_rtmrs, runtime_rtmrs, expected_gpus=(),
             gpu_count: int | None = None) -> list[tuple[str, str]]:
    """(field, description) for every invalid part of an entry; values of the wrong JSON type (a number for a
    string, a string for a list) are invalid parts too, so a hand-written file gets a line, never a traceback."""
    out: list[tuple[str, str]] = []
    if not (isinstance(name, str) and _NAME.match(name)):
        out.append(("name", "1-128 of [A-Za-z0-9_.-], starting alphanumeric"))
    if not (isinstance(version, str) and version.strip() and len(version) <= 64):
        out.append(("version", "required, at most 64 characters"))
    if not _is_register(mrtd):
        out.append(("mrtd", "must be 96 hex characters (48 bytes)"))
    for field, rtmrs in (("boot_rtmrs", boot_rtmrs), ("runtime_rtmrs", runtime_rtmrs)):
        if not isinstance(rtmrs, (list, tuple)) or len(rtmrs) != 4:
            out.append((field, "must list exactly 4 values (RTMR0..RTMR3)"))
        for i, value in enumerate(rtmrs if isinstance(rtmrs, (list, tuple)) else ()):
            if not _is_register(value):
                out.append((f"{field}[{i}]", "must be 96 hex characters (48 bytes)"))
    if not isinstance(expected_gpus, (list, tuple)):
        out.append(("expected_gpus", "must be a list of gpu_identifier strings"))
    else:
        for i, gpu in enumerate(expected_gpus):
            if not (isinstance(gpu, str) and gpu.strip() and len(gpu) <= 64):
                out.append((f"expected_gpus[{i}]", "must be a non-empty gpu_identifier of at most 64 characters"))
    if gpu_count is not None and (type(gpu_count) is not int or not 0 < gpu_count <= 64):
        out.append(("gpu_count", "must be 1..64 when set"))
    return out


def _is_register(value) -> bool:
    return isinstance(value, str) and bool(_HEX48.match(value.strip()))


def load_file(path: Path) -> list[MeasurementEntry]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PolicyFileError(f"cannot read measurements file {path}: {exc}") from None
    items = doc.get("measurements") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise PolicyFileError(f"{path}: expected a list or {{\"measurements\": [...]}}")
    entries = []
    for i, item in enumerate(items):
        try:
            fields = {k: item[k] for k in ("name", "version", "mrtd", "boot_rtmrs", "runtime_rtmrs")}
            fields["expected_gpus"] = item.get("expected_gpus") or []
            fields["gpu_count"] = item.get("gpu_count")
        except (KeyError, TypeError) as exc:
            raise PolicyFileError(f"{path}: entry {i} lacks {exc}") from None
        if bad := problems(**fields):
            raise PolicyFileError(f"{path}: entry {i} ({fields['name']!r}): {bad[0][0]} {bad[0][1]}")
        entries.append(MeasurementEntry.of(**fields))
    return entries


def merge(file_entries: list[MeasurementEntry], stored: list[MeasurementEntry]) -> list[MeasurementEntry]:
    """File entries overlaid by stored (admin) entries of the same name, sorted by name."""
    by_name = {e.name: e for e in file_entries}
    by_name.update((e.name, e) for e in stored)
    return [by_name[k] for k in sorted(by_name)]


def match(entries: list[MeasurementEntry], quote: TdxQuote, kind: str) -> MeasurementEntry:
    """The entry whose MRTD and RTMRs (of `kind`) equal the quote's; MEASUREMENT_MISMATCH naming the registers
    that differ from the closest entry otherwise."""
    actual = quote.registers()
    if not entries:
        raise AttestationFailure(MEASUREMENT_MISMATCH, "Measurement mismatch: no measurement policy is configured "
                                 "on this validator", registers="", kind=kind)
    scored = []
    for entry in entries:
        expected = entry.registers(kind)
        differ = [r for r in REGISTERS if expected[r] != actual[r]]
        if not differ:
            return entry
        scored.append((len(differ), entry.name, entry, differ))
    _, _, closest, differ = min(scored, key=lambda s: (s[0], s[1]))
    expected = closest.registers(kind)
    metadata = {"registers": ",".join(differ), "closest_policy": closest.name, "closest_version": closest.version,
                "kind": kind}
    for r in differ:
        metadata[f"actual_{r.lower()}"] = actual[r]
        metadata[f"expected_{r.lower()}"] = expected[r]
    names = " and ".join(differ) if len(differ) <= 2 else ", ".join(differ[:-1]) + " and " + differ[-1]
    raise AttestationFailure(
        MEASUREMENT_MISMATCH,
        f"Measurement mismatch: {names} {'differs' if len(differ) == 1 else 'differ'} from the closest allowed "
        f"{kind} measurements ({closest.name!r} version {closest.version}); ensure you are running a supported VM "
        f"image", **metadata)


def check_gpus(entry: MeasurementEntry, gpu_identifiers: list[str]) -> None:
    """Every GPU's model must be allowed by the entry, and the count must equal `gpu_count` when set."""
    models = [g.strip().lower() for g in gpu_identifiers]
    if entry.expected_gpus:
        unexpected = sorted({m for m in models if m not in entry.expected_gpus})
        if unexpected:
            raise AttestationFailure(
                GPU_MISMATCH, f"GPU mismatch: {', '.join(unexpected)} not allowed by measurement set {entry.name!r} "
                f"(allowed: {', '.join(entry.expected_gpus)})", unexpected=",".join(unexpected),
                allowed=",".join(entry.expected_gpus), policy=entry.name)
    if entry.gpu_count is not None and len(models) != entry.gpu_count:
        raise AttestationFailure(
            GPU_MISMATCH, f"GPU mismatch: {len(models)} GPUs, measurement set {entry.name!r} requires "
            f"{entry.gpu_count}", count=str(len(models)), required=str(entry.gpu_count), policy=entry.name)
