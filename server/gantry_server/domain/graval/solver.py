"""The reference miner for Graval v1: what a GPU port computes, bit for bit (docs/graval.md).

It runs on the CPU with numpy (tests, benchmarks, and the yardstick a port is checked against); a miner ports
`generate`, `multiply` and `Commitment` to its GPU and keeps the byte layout of `scheme.encode_work_product`.

    >>> from gantry_server.domain.graval.scheme import params_for, verify_work
    >>> params = params_for("4090", 24 * 2**30, matrix_n=16)
    >>> work = solve(42, "GPU-1", params)
    >>> verify_work(work, seed=42, gpu_uuid="GPU-1", params=params)
"""
from __future__ import annotations

import numpy as np

from . import scheme as s


def generate(seed: int, gpu_uuid: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A and Bᵀ (n×n uint32); row r of each is independent, so a GPU generates them in parallel."""
    key = s.matrix_key(seed, gpu_uuid)
    return s.matrix_rows(key, s.MATRIX_A, range(n), n), s.matrix_rows(key, s.MATRIX_BT, range(n), n)


def multiply(a: np.ndarray, bt: np.ndarray, *, block: int = 512) -> np.ndarray:
    """C = A·Bᵀ mod p, exactly, with float64 BLAS on 16-bit limbs.

    With x = x₁·2¹⁶ + x₀ (x₁ < 2¹⁵, x₀ < 2¹⁶), every limb product summed over n ≤ 2²¹ terms stays below 2⁵³, so
    four float64 GEMMs are exact whatever order BLAS adds in; then 2³² ≡ 2 (mod 2³¹−1) recombines them.
    """
    n = a.shape[1]
    if n > 1 << 21:
        raise ValueError("the float64 limb split is exact only up to n = 2^21")
    b1 = (bt >> 16).astype(np.float64).T.copy()
    b0 = (bt & 0xFFFF).astype(np.float64).T.copy()
    out = np.empty((a.shape[0], bt.shape[0]), dtype=np.uint32)
    for start in range(0, a.shape[0], block):
        rows = a[start:start + block]
        a1, a0 = (rows >> 16).astype(np.float64), (rows & 0xFFFF).astype(np.float64)
        hh = (a1 @ b1).astype(np.int64) % s.P
        hl = (a1 @ b0 + a0 @ b1).astype(np.int64) % s.P
        ll = (a0 @ b0).astype(np.int64)
        out[start:start + block] = (hh * 2 + hl * 65536 + ll) % s.P
    return out


class Commitment:
    """The RFC 9162 Merkle tree over C in row-major order, 16 entries (64 bytes, u32le) per leaf.

    Keeps every level (fine for the CPU reference; a GPU port may keep upper levels only and rehash the
    subtrees of the challenged leaves).
    """

    def __init__(self, product: np.ndarray) -> None:
        flat = np.ascontiguousarray(product, dtype="<u4").ravel()
        pad = (-flat.size) % s.CHUNK
        self.data = (np.concatenate([flat, np.zeros(pad, dtype="<u4")]) if pad else flat).tobytes()
        step = 4 * s.CHUNK
        level = [s.leaf_hash(self.data[i:i + step]) for i in range(0, len(self.data), step)]
        self.levels = [level]
        while len(level) > 1:
            level = [s.node_hash(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def chunk(self, leaf: int) -> bytes:
        return self.data[4 * s.CHUNK * leaf:4 * s.CHUNK * (leaf + 1)]

    def path(self, leaf: int) -> list[bytes]:
        siblings = []
        for level in self.levels[:-1]:
            if leaf ^ 1 < len(level):
                siblings.append(level[leaf ^ 1])
            leaf >>= 1
        return siblings


def prove(product: np.ndarray, *, seed: int, gpu_uuid: str, rounds: int) -> str:
    """Commit to C, draw the challenged entries from the root, and encode their openings."""
    n = product.shape[0]
    tree = Commitment(product)
    entries = s.challenges(seed, gpu_uuid, n, tree.root, rounds)
    openings = [(tree.chunk(e // s.CHUNK), tree.path(e // s.CHUNK)) for e in entries]
    return s.encode_work_product(seed, gpu_uuid, n, tree.root, openings)


def solve(seed: int, gpu_uuid: str, params: s.GravalParams) -> str:
    """The work_product for one GPU: generate, multiply, commit, open `params.rounds` entries."""
    a, bt = generate(seed, gpu_uuid, params.matrix_n)
    return prove(multiply(a, bt), seed=seed, gpu_uuid=gpu_uuid, rounds=params.rounds)
