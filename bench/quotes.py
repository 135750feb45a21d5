"""TDX quote verification throughput, collateral cached (what an attestation costs in CPU, before any I/O).

    .venv/bin/python bench/quotes.py [-n 2000]

Rows:
  dcap-qvl verify           dcap_qvl.verify on Intel's real quote (../shared/testdata/tdx), collateral parsed once
  DcapVerifier.verify       Gantry's verifier: collateral lookup (in memory) + dcap-qvl + TCB status policy
  Attestor.attest           a full boot attestation minus the database: base64 + parse + verify + nonce binding
                            + measurement match (test-root quote from tests/tdx_builder.py)
  2 threads                 DcapVerifier.verify from two threads: does dcap-qvl release the GIL?

Single-threaded rows are quotes per second on one core. Needs the real vectors for the first two rows (they are
skipped with a note otherwise).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dcap_qvl
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gantry_server.domain.attestation import Attestor, DcapVerifier, FileCollateral, MeasurementEntry, parse_quote  # noqa: E402
from gantry_server.domain.attestation.measurements import BOOT  # noqa: E402
from tests.tdx_builder import QuoteKit, report_data_for  # noqa: E402

VECTORS = ROOT.parent / "shared" / "testdata" / "tdx"
IN_WINDOW = datetime(2025, 6, 25, tzinfo=timezone.utc)


def rate(fn, n: int) -> tuple[float, float]:
    """(quotes per second, p50 µs) over n calls after a short warm-up."""
    for _ in range(min(50, n)):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    return n / total, statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    rows: list[tuple[str, float, float]] = []

    if (VECTORS / "tdx_quote").exists():
        raw = (VECTORS / "tdx_quote").read_bytes()
        collateral = dcap_qvl.QuoteCollateralV3.from_json((VECTORS / "tdx_quote_collateral.json").read_text())
        now = int(IN_WINDOW.timestamp())
        rows.append(("dcap-qvl verify (real quote)", *rate(lambda: dcap_qvl.verify(raw, collateral, now), args.n)))
        verifier = DcapVerifier(FileCollateral(VECTORS))
        quote = parse_quote(raw)
        one = lambda: loop.run_until_complete(verifier.verify(quote, IN_WINDOW))  # noqa: E731
        rows.append(("DcapVerifier.verify (real quote)", *rate(one, args.n)))
        with ThreadPoolExecutor(2) as pool:
            for _ in range(50):
                dcap_qvl.verify(raw, collateral, now)
            start = time.perf_counter()
            list(pool.map(lambda _: dcap_qvl.verify(raw, collateral, now), range(args.n)))
            rows.append(("dcap-qvl verify, 2 threads (real quote)", args.n / (time.perf_counter() - start), 0.0))
    else:
        print(f"note: {VECTORS} not found; real-quote rows skipped", file=sys.stderr)

    issued = datetime(2026, 1, 1, tzinfo=timezone.utc)
    kit = QuoteKit.create(issued)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.json").write_text(kit.collateral_json())
        attestor = Attestor(DcapVerifier(FileCollateral(Path(tmp)),
                                         root_ca_der=kit.root.public_bytes(serialization.Encoding.DER)))
        nonce = "ab" * 32
        reg = bytes([7]) * 48
        b64 = base64.b64encode(kit.quote(report_data=report_data_for(nonce), mrtd=reg, rtmrs=(reg,) * 4)).decode()
        entries = [MeasurementEntry.of(name=f"m{i}", version="1", mrtd=(bytes([i]) * 48).hex(),
                                       boot_rtmrs=[reg.hex()] * 4, runtime_rtmrs=[reg.hex()] * 4)
                   for i in range(1, 9)]
        when = issued + timedelta(days=1)
        full = lambda: loop.run_until_complete(  # noqa: E731
            attestor.attest(b64, kind=BOOT, nonce=nonce, entries=entries, now=when))
        rows.append(("Attestor.attest (test-root quote, 8 policy entries)", *rate(full, args.n)))

    print(f"\n{args.n} quotes per row, one process\n")
    print("| path | quotes/s | p50 µs |")
    print("| --- | --- | --- |")
    for name, qps, p50 in rows:
        print(f"| {name} | {qps:,.0f} | {p50:,.0f} |" if p50 else f"| {name} | {qps:,.0f} | - |")


if __name__ == "__main__":
    main()
