"""Graval v1 costs: the reference miner's solve time, the validator's verify time, and the proof size.

    .venv/bin/python bench/graval.py                     # solve + verify for n = 256..2048, then deployment sizes
    .venv/bin/python bench/graval.py --sizes 512 4096 --rounds 64 128

Table 1 runs the numpy reference solver (float64 BLAS on 16-bit limbs, on this CPU: it says nothing about GPU
speed) and `verify_work` on its output. Table 2 prices verification at the sizes `params_for` picks for real GPUs,
where no CPU can produce an honest proof: it times what verify_work does per opening (two rows of ChaCha20, one
dot product mod p, one Merkle path of that depth), which is all its work, and sets it beside what the rejected
first design (open whole rows, Freivalds with B·r) would cost there, extrapolated from measured throughput.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

import numpy as np  # noqa: E402

from gantry_server.domain.graval import scheme as s  # noqa: E402
from gantry_server.domain.graval.solver import generate, multiply, prove  # noqa: E402

GPU = "GPU-7e1c0b3a-5d4f-4e2a-9b8c-1d2e3f405162"
DEPLOYMENTS = [("l4", 24 * 2**30), ("4090", 24 * 2**30), ("a100", 80 * 2**30), ("h100", 80 * 2**30),
               ("b200", 192 * 2**30)]


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def solve_and_verify(sizes: list[int], rounds_list: list[int]) -> None:
    print("| n | rounds | generate s | multiply s | commit+open s | verify ms | work_product chars |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        seed = s.new_seed()
        t0 = time.perf_counter()
        a, bt = generate(seed, GPU, n)
        t1 = time.perf_counter()
        c = multiply(a, bt)
        t2 = time.perf_counter()
        for rounds in rounds_list:
            params = s.GravalParams(n, min(rounds, s.max_openings(n)), 60.0)
            t3 = time.perf_counter()
            work = prove(c, seed=seed, gpu_uuid=GPU, rounds=params.rounds)
            t4 = time.perf_counter()
            verify = best_of(lambda: s.verify_work(work, seed=seed, gpu_uuid=GPU, params=params), repeat=7)
            print(f"| {n} | {params.rounds} | {t1 - t0:.2f} | {t2 - t1:.2f} | {t4 - t3:.2f} | {verify * 1e3:.1f} "
                  f"| {len(work)} |")


def keystream_bytes_per_second() -> float:
    key, size = os.urandom(32), 64 * 2**20
    return size / best_of(lambda: s.matrix_rows(key, s.MATRIX_BT, range(256), size // 1024), repeat=2)


def deployment_costs(rounds_list: list[int]) -> None:
    rate = keystream_bytes_per_second()
    print(f"\nmatrix rows generated (ChaCha20 + mask) at {rate / 2**30:.2f} GiB/s on this CPU\n")
    print("| GPU (memory) | n | estimate s | deadline s | rounds | verify ms | work_product KiB "
          "| row-opening design: proof MiB, validator s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, memory in DEPLOYMENTS:
        for rounds in rounds_list:
            params = s.params_for(model, memory, rounds=rounds)
            n, size = params.matrix_n, s.leaf_count(params.matrix_n)
            seed = s.new_seed()
            entries = s.challenges(seed, GPU, n, secrets.token_bytes(32), rounds)
            paths = [[secrets.token_bytes(32)] * s.path_length(e // s.CHUNK, size) for e in entries]

            def per_openings():
                s.challenges(seed, GPU, n, b"\x00" * 32, rounds)
                for e, path in zip(entries, paths):
                    s.root_from_path(s.leaf_hash(bytes(64)), e // s.CHUNK, size, path)
                s.expected_entries(seed, GPU, n, entries)

            verify = best_of(per_openings, repeat=3)
            chars = 4 * -(-(s.HEADER.size + sum(64 + 32 * len(p) for p in paths)) // 3)
            rows_design = (rounds * n * 4 * 4 / 3 / 2**20, 4 * n * n / rate)
            print(f"| {model} ({memory // 2**30} GiB) | {n} | {params.estimate_seconds:.0f} "
                  f"| {params.estimate_seconds * 2.15:.0f} | {rounds} | {verify * 1e3:.0f} | {chars / 1024:.0f} "
                  f"| {rows_design[0]:.1f} MiB, ≥ {rows_design[1]:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--rounds", type=int, nargs="+", default=[s.DEFAULT_ROUNDS, 128, s.MAX_ROUNDS])
    parser.add_argument("--skip-deployments", action="store_true")
    args = parser.parse_args()
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs\n")
    solve_and_verify(args.sizes, args.rounds)
    if not args.skip_deployments:
        deployment_costs(args.rounds)


if __name__ == "__main__":
    main()
