"""Graval v1, validator side: parameters, the challenge's sealed key, the response check and the proof check.

A claiming miner gets a seed. For each GPU it computes C = A·Bᵀ mod p (p = 2³¹−1), A and Bᵀ being n×n matrices
expanded from (seed, GPU uuid) with ChaCha20; it commits to C with a Merkle root and opens the entries that the
root itself selects (Fiat–Shamir). The validator recomputes each opened entry from one row of A and one row of Bᵀ:
O(rounds·n) work against the miner's n³. `docs/graval.md` is the specification, with the soundness argument and
a known-answer vector; this module and `solver.py` are its executable form and must stay byte-for-byte with it.

    >>> from gantry_server.domain.graval.solver import solve
    >>> params = params_for("h100", 80 * 2**30, matrix_n=8)
    >>> verify_work(solve(7, "GPU-1", params), seed=7, gpu_uuid="GPU-1", params=params)  # None: accepted
    >>> verify_work(solve(8, "GPU-1", params), seed=7, gpu_uuid="GPU-1", params=params)
    Traceback (most recent call last):
    ...
    gantry_server.domain.graval.scheme.WorkRejected: work product is for seed 8, expected seed 7
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

P = (1 << 31) - 1          # the Mersenne prime 2^31 - 1: products fit 62 bits, reduction is shifts and adds
CHUNK = 16                 # entries of C per Merkle leaf: 64 bytes, one ChaCha block's worth
DEFAULT_ROUNDS = 64        # entries opened; see docs/graval.md "Soundness" for the trade-off
MAX_ROUNDS = 256           # most openings a work product may carry (bounds its size and the validator's work)
MAX_MATRIX_N = 1 << 20     # 4 TiB per matrix: no GPU comes close; keeps every index in 64 bits
MIN_AUTO_N = 256
MATRIX_A, MATRIX_BT = 0, 1  # the ChaCha20 nonce's first word: which matrix a row belongs to
MAGIC = b"GGV1"
HEADER = struct.Struct("<4sQ16sIH32s")  # magic, seed, gpu digest, n, openings, root: 66 bytes
TAG_MATRICES = b"gantry/graval/v1/matrices\x00"
TAG_CHALLENGE = b"gantry/graval/v1/challenge\x00"
TAG_SEAL = b"gantry/graval/v1/seal\x00"
SEAL_VERSION = 1
SEALED_BYTES = 1 + 12 + 16 + 16  # version, GCM nonce, the 16-byte key, GCM tag
MAX_RESPONSE_HEX = 1024

# Every WorkRejected.reason, with what it means (all are 403 on the verify endpoint).
REASONS: dict[str, str] = {
    "RESPONSE_MALFORMED": "response or iv is not hex of the right length",
    "RESPONSE_MISMATCH": "response does not decrypt to the expected plaintext under the instance's key",
    "KEY_SEAL_INVALID": "(miner side) the sealed symmetric key does not open with this token's env_key",
    "PROOF_TOO_LARGE": "work_product is longer than any valid one for these parameters; not parsed",
    "PROOF_MALFORMED": "work_product is not canonical base64 of the v1 layout (truncated, trailing, bad values)",
    "PROOF_WRONG_CHALLENGE": "work_product answers another seed, GPU or matrix size",
    "PROOF_INVALID": "an opened chunk does not hash up to the committed Merkle root",
    "WORK_INCORRECT": "an opened entry differs from the true product: the work was not done (or not right)",
}


class WorkRejected(ValueError):
    """The response or the work product does not prove the work; `reason` is a key of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# -- parameters -------------------------------------------------------------------------------------------------

# Dense INT8 tensor throughput (TOPS, no sparsity) from the vendors' data sheets. A fast exact mod-p GEMM splits
# each 31-bit operand into four 8-bit limbs: 16 INT8 GEMMs at 2 ops per multiply-add, so 32 INT8 ops per modular
# multiply-add. These are data-sheet figures, not measurements: calibrate with a GPU port (docs/graval.md).
INT8_DENSE_TOPS: dict[str, float] = {
    "b200": 4500, "h200": 1979, "h100": 1979, "h100_nvl": 1671, "h100_pcie": 1513, "h800": 1979, "mi300x": 2615,
    "a100": 624, "a100_40gb": 624, "l40s": 733, "a6000_ada": 728, "l40": 362, "a6000": 310, "5090": 838,
    "4090": 661, "a40": 299, "3090": 284, "l4": 242, "a10": 250,
}
OPS_PER_MODULAR_MAC = 32
EFFICIENCY = 0.25      # sustained share of peak after limb splitting, carries and reductions (placeholder)
SETUP_SECONDS = 20.0   # process start, matrix generation, Merkle hashing, the upload
VRAM_SHARE = 0.5       # A, Bᵀ and C as uint32 (12·n² bytes) take about this share of the GPU's memory


@dataclass(frozen=True)
class GravalParams:
    """The challenge for one GPU model.

    `matrix_n` is the side of A, Bᵀ and C; `rounds` the fewest entries a work product must open; the caller's
    deadline is `estimate_seconds × 2.15` after retrieval. `iterations` is what the claim answers.
    """

    matrix_n: int
    rounds: int
    estimate_seconds: float

    def __post_init__(self) -> None:
        if not 1 <= self.matrix_n <= MAX_MATRIX_N:
            raise ValueError(f"matrix_n must be in 1..{MAX_MATRIX_N}, got {self.matrix_n}")
        if not 1 <= self.rounds <= max_openings(self.matrix_n):
            raise ValueError(f"rounds must be in 1..{max_openings(self.matrix_n)} for n={self.matrix_n}, "
                             f"got {self.rounds}")
        if not self.estimate_seconds > 0:
            raise ValueError(f"estimate_seconds must be positive, got {self.estimate_seconds}")

    @property
    def iterations(self) -> int:
        """The claim's `iterations`: the matrix side n. With the seed it is all a miner needs to start."""
        return self.matrix_n


def max_openings(n: int) -> int:
    return min(MAX_ROUNDS, n * n)


def matrix_n_for_memory(memory_bytes: int) -> int:
    """The largest multiple of 256 with 12·n² ≤ VRAM_SHARE·memory (never below 256)."""
    n = math.isqrt(int(VRAM_SHARE * memory_bytes) // 12) // 256 * 256
    return min(max(n, MIN_AUTO_N), MAX_MATRIX_N)


def params_for(gpu_identifier: str, memory_bytes: int, *, matrix_n: int | None = None,
               rounds: int = DEFAULT_ROUNDS) -> GravalParams:
    """Parameters for one GPU: n from its memory (or `matrix_n`), the estimate from the model's throughput.

    A model missing from INT8_DENSE_TOPS gets the slowest listed rate, so an honest miner is never refused for
    our ignorance of its hardware (the launcher refuses unsupported models before this matters).

        >>> p = params_for("h100", 80 * 2**30)
        >>> p.matrix_n, p.rounds, round(p.estimate_seconds)
        (59648, 64, 34)
    """
    if memory_bytes <= 0 and matrix_n is None:
        raise ValueError(f"memory_bytes must be positive, got {memory_bytes}")
    n = matrix_n if matrix_n is not None else matrix_n_for_memory(memory_bytes)
    tops = INT8_DENSE_TOPS.get(gpu_identifier.strip().lower(), min(INT8_DENSE_TOPS.values()))
    macs_per_second = tops * 1e12 / OPS_PER_MODULAR_MAC * EFFICIENCY
    return GravalParams(matrix_n=n, rounds=min(rounds, max_openings(n)),
                        estimate_seconds=SETUP_SECONDS + n ** 3 / macs_per_second)


def new_seed() -> int:
    """A fresh challenge seed from the OS CSPRNG: 1 ≤ seed < 2⁶³ (a positive int64; 0 means "not claimed")."""
    return secrets.randbelow((1 << 63) - 1) + 1


def _check_seed(seed: int) -> None:
    if not 1 <= seed < 1 << 63:
        raise ValueError(f"seed must be a positive int64, got {seed}")


def _lp(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


# -- the matrices ----------------------------------------------------------------------------------------------

def matrix_key(seed: int, gpu_uuid: str) -> bytes:
    """The ChaCha20 key of both matrices: SHA-256(TAG_MATRICES ‖ u64le seed ‖ u32le len ‖ uuid)."""
    _check_seed(seed)
    return hashlib.sha256(TAG_MATRICES + struct.pack("<Q", seed) + _lp(gpu_uuid)).digest()


def matrix_rows(key: bytes, which: int, rows: Sequence[int], n: int) -> np.ndarray:
    """Rows of A (`which`=0) or Bᵀ (1) as uint32 in [0, p).

    Row r is the RFC 8439 ChaCha20 keystream under `key` with nonce u32le(which) ‖ u64le(r), block counter from
    0; entry c is keystream word c (little-endian u32) with its top bit cleared, and 2³¹−1 read as 0.
    """
    out = np.empty((len(rows), n), dtype=np.uint32)
    zeros = bytes(4 * n)
    for k, r in enumerate(rows):
        # cryptography takes RFC 8439's 32-bit block counter and 96-bit nonce as one 16-byte value
        counter_and_nonce = struct.pack("<IIQ", 0, which, r)
        stream = Cipher(algorithms.ChaCha20(key, counter_and_nonce), mode=None).encryptor().update(zeros)
        out[k] = np.frombuffer(stream, dtype="<u4")
    out &= 0x7FFFFFFF
    out[out == P] = 0
    return out


def expected_entries(seed: int, gpu_uuid: str, n: int, entries: Sequence[int]) -> list[int]:
    """C[i][j] = Σ_l A[i][l]·Bᵀ[j][l] mod p for each flat index e = i·n + j: two rows of stream per entry."""
    key = matrix_key(seed, gpu_uuid)
    rows_a = sorted({e // n for e in entries})
    rows_b = sorted({e % n for e in entries})
    a = dict(zip(rows_a, matrix_rows(key, MATRIX_A, rows_a, n).astype(np.uint64)))
    b = dict(zip(rows_b, matrix_rows(key, MATRIX_BT, rows_b, n).astype(np.uint64)))
    # products < 2^62 fit uint64; the sum of n ≤ 2^20 reduced terms stays below 2^51
    return [int(((a[e // n] * b[e % n]) % P).sum() % P) for e in entries]


# -- the commitment (RFC 9162 §2.1 Merkle tree over 64-byte chunks of C, row-major) -------------------------------

def leaf_count(n: int) -> int:
    return -(-n * n // CHUNK)


def leaf_hash(chunk: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + chunk).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def path_length(index: int, size: int) -> int:
    """Siblings on the path of leaf `index` in a tree of `size` leaves (a last odd node is carried up as is)."""
    length = 0
    while size > 1:
        length += (index ^ 1) < size
        index, size = index >> 1, (size + 1) >> 1
    return length


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    h, used = leaf, 0
    while size > 1:
        if index & 1:
            h, used = node_hash(path[used], h), used + 1
        elif index + 1 < size:
            h, used = node_hash(h, path[used]), used + 1
        index, size = index >> 1, (size + 1) >> 1
    return h


# -- Fiat–Shamir ------------------------------------------------------------------------------------------------

def challenges(seed: int, gpu_uuid: str, n: int, root: bytes, count: int) -> list[int]:
    """The first `count` distinct flat indices e = i·n + j drawn from SHAKE-256 over the statement and the root.

    The stream is read as u64le values; x is rejected when x ≥ 2⁶⁴ − (2⁶⁴ mod n²) (no modulo bias), else
    e = x mod n², skipped if already drawn. Prefix-stable: opening more than required opens a superset.
    """
    if not 1 <= count <= n * n:
        raise ValueError(f"count must be in 1..{n * n}, got {count}")
    msg = TAG_CHALLENGE + struct.pack("<Q", seed) + _lp(gpu_uuid) + struct.pack("<I", n) + root
    total = n * n
    limit = (1 << 64) - (1 << 64) % total
    drawn: list[int] = []
    seen: set[int] = set()
    size, pos = 8 * (count + 16), 0
    while True:
        stream = hashlib.shake_256(msg).digest(size)
        for (x,) in struct.iter_unpack("<Q", stream[pos:]):
            if x < limit and (e := x % total) not in seen:
                seen.add(e)
                drawn.append(e)
                if len(drawn) == count:
                    return drawn
        pos, size = size, size * 2


# -- the work product ------------------------------------------------------------------------------------------

def gpu_digest(gpu_uuid: str) -> bytes:
    return hashlib.sha256(gpu_uuid.encode("utf-8")).digest()[:16]


def encode_work_product(seed: int, gpu_uuid: str, n: int, root: bytes,
                        openings: Sequence[tuple[bytes, Sequence[bytes]]]) -> str:
    """Base64 (RFC 4648, padded) of the header, then per challenged entry its 64-byte chunk and Merkle path."""
    body = b"".join(chunk + b"".join(path) for chunk, path in openings)
    return base64.b64encode(HEADER.pack(MAGIC, seed, gpu_digest(gpu_uuid), n, len(openings), root) + body).decode()


def max_work_product_chars(params: GravalParams) -> int:
    """No valid work product for `params` is longer; verify_work refuses longer ones before decoding."""
    depth = max(0, (leaf_count(params.matrix_n) - 1).bit_length())
    most = HEADER.size + max_openings(params.matrix_n) * (4 * CHUNK + 32 * depth)
    return 4 * -(-most // 3)


def verify_work(work_product: str, *, seed: int, gpu_uuid: str, params: GravalParams) -> None:
    """Accept (return None) or raise WorkRejected, cheapest checks first. Cost: O(openings·n), no state kept."""
    _check_seed(seed)
    n = params.matrix_n
    if not isinstance(work_product, str):
        raise WorkRejected("PROOF_MALFORMED", "work_product must be a base64 string")
    limit = max_work_product_chars(params)
    if len(work_product) > limit:
        raise WorkRejected("PROOF_TOO_LARGE", f"work_product has {len(work_product)} characters; no valid one "
                                              f"for n={n} has more than {limit}")
    try:
        raw = base64.b64decode(work_product.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise WorkRejected("PROOF_MALFORMED", "work_product is not base64 (RFC 4648, padded)") from None
    if base64.b64encode(raw).decode() != work_product:
        raise WorkRejected("PROOF_MALFORMED", "work_product is not canonical base64 (padding bits must be zero)")
    if len(raw) < HEADER.size:
        raise WorkRejected("PROOF_MALFORMED", f"work_product is {len(raw)} bytes; the header alone is "
                                              f"{HEADER.size} (truncated)")
    magic, got_seed, got_gpu, got_n, count, root = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise WorkRejected("PROOF_MALFORMED", f"work_product starts with {magic!r}, expected {MAGIC!r} (Graval v1)")
    if got_seed != seed:
        raise WorkRejected("PROOF_WRONG_CHALLENGE", f"work product is for seed {got_seed}, expected seed {seed}")
    if got_gpu != gpu_digest(gpu_uuid):
        raise WorkRejected("PROOF_WRONG_CHALLENGE", f"work product is for another GPU, expected GPU {gpu_uuid}")
    if got_n != n:
        raise WorkRejected("PROOF_WRONG_CHALLENGE", f"work product is for n={got_n}, expected n={n} "
                                                    "(the claim's iterations)")
    if not params.rounds <= count <= max_openings(n):
        raise WorkRejected("PROOF_MALFORMED", f"work product opens {count} entries; expected "
                                              f"{params.rounds}..{max_openings(n)}")
    entries = challenges(seed, gpu_uuid, n, root, count)
    size = leaf_count(n)
    depths = [path_length(e // CHUNK, size) for e in entries]
    expected_len = HEADER.size + sum(4 * CHUNK + 32 * d for d in depths)
    if len(raw) != expected_len:
        raise WorkRejected("PROOF_MALFORMED", f"work product is {len(raw)} bytes; its {count} openings take "
                                              f"{expected_len} (truncated, or trailing data)")
    opened, pos = [], HEADER.size
    for m, (e, depth) in enumerate(zip(entries, depths)):
        chunk = raw[pos:pos + 4 * CHUNK]
        path = [raw[pos + 4 * CHUNK + 32 * t:pos + 4 * CHUNK + 32 * (t + 1)] for t in range(depth)]
        pos += 4 * CHUNK + 32 * depth
        values = np.frombuffer(chunk, dtype="<u4")
        beyond = (e // CHUNK + 1) * CHUNK - n * n  # entries of the last chunk past the end of C must be 0
        if (values >= P).any() or (beyond > 0 and values[CHUNK - beyond:].any()):
            raise WorkRejected("PROOF_MALFORMED", f"opening {m}: values must be reduced mod p (and padding 0)")
        if root_from_path(leaf_hash(chunk), e // CHUNK, size, path) != root:
            raise WorkRejected("PROOF_INVALID", f"opening {m} (C[{e // n}][{e % n}]) does not hash up to the "
                                                "committed Merkle root")
        opened.append(int(values[e % CHUNK]))
    for e, got, want in zip(entries, opened, expected_entries(seed, gpu_uuid, n, entries)):
        if got != want:
            raise WorkRejected("WORK_INCORRECT", f"C[{e // n}][{e % n}] is {got}, expected {want}: the committed "
                                                 "product is wrong at a challenged entry")


@runtime_checkable
class WorkVerifier(Protocol):
    """Checks one GPU's work product; raises WorkRejected. Deployments may plug in another scheme."""

    def verify_work(self, work_product: str, *, seed: int, gpu_uuid: str, params: GravalParams) -> None: ...


class ReferenceWorkVerifier:
    """Graval v1 as specified in docs/graval.md."""

    def verify_work(self, work_product: str, *, seed: int, gpu_uuid: str, params: GravalParams) -> None:
        verify_work(work_product, seed=seed, gpu_uuid=gpu_uuid, params=params)


# -- the symmetric key and the response ---------------------------------------------------------------------------

def _seal_key(env_key: str, config_id: str, seed: int, gpu_uuid: str) -> tuple[bytes, bytes]:
    if len(env_key) != 32:
        raise ValueError("env_key must be 32 hex characters")
    try:
        ikm = bytes.fromhex(env_key)
    except ValueError:
        raise ValueError("env_key must be 32 hex characters") from None
    _check_seed(seed)
    info = TAG_SEAL + struct.pack("<Q", seed) + _lp(config_id) + _lp(gpu_uuid)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm), bytes([SEAL_VERSION]) + info


def seal_symmetric_key(symmetric_key: bytes, *, env_key: str, config_id: str, seed: int, gpu_uuid: str) -> str:
    """The claim's `symmetric_key.ciphertext`: hex of version ‖ nonce ‖ AES-256-GCM(key) under HKDF(env_key, …).

    Only a holder of the launch token (which carries `env_key`) can open it; it is bound to this config, seed and
    GPU. It does not depend on the work: see docs/graval.md "What it does not prove".
    """
    if len(symmetric_key) != 16:
        raise ValueError(f"the instance symmetric key is 16 bytes, got {len(symmetric_key)}")
    key, aad = _seal_key(env_key, config_id, seed, gpu_uuid)
    nonce = os.urandom(12)
    return (bytes([SEAL_VERSION]) + nonce + AESGCM(key).encrypt(nonce, symmetric_key, aad)).hex()


def open_symmetric_key(ciphertext: str, *, env_key: str, config_id: str, seed: int, gpu_uuid: str) -> bytes:
    """Miner side of seal_symmetric_key."""
    key, aad = _seal_key(env_key, config_id, seed, gpu_uuid)
    try:
        raw = bytes.fromhex(ciphertext)
    except (TypeError, ValueError):
        raise WorkRejected("KEY_SEAL_INVALID", "sealed key must be hex") from None
    if len(raw) != SEALED_BYTES or raw[0] != SEAL_VERSION:
        raise WorkRejected("KEY_SEAL_INVALID", f"sealed key must be {SEALED_BYTES} bytes starting with version "
                                               f"{SEAL_VERSION}")
    try:
        return AESGCM(key).decrypt(raw[1:13], raw[13:], aad)
    except InvalidTag:
        raise WorkRejected("KEY_SEAL_INVALID", "sealed key does not open: it was sealed for another env_key, "
                                               "config, seed or GPU") from None


def response_plaintext(config_id: str, seed: int) -> str:
    return f"secret is {config_id} {seed}"


def make_response(symmetric_key: bytes, config_id: str, seed: int) -> tuple[str, str]:
    """Miner side: (response_hex, iv_hex), AES-CBC with PKCS7 padding under the instance's symmetric key."""
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    data = padder.update(response_plaintext(config_id, seed).encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(symmetric_key), modes.CBC(iv)).encryptor()
    return (enc.update(data) + enc.finalize()).hex(), iv.hex()


def check_response(response: str, iv: str | None, symmetric_key: bytes, config_id: str, seed: int) -> None:
    """Raise WorkRejected unless `response` decrypts to response_plaintext(config_id, seed).

    Without `iv`, the response's first 16 bytes are taken as the IV (iv ‖ ciphertext).
    """
    expected = response_plaintext(config_id, seed).encode()
    if not isinstance(response, str) or len(response) > MAX_RESPONSE_HEX:
        raise WorkRejected("RESPONSE_MALFORMED", f"response must be a hex string of at most {MAX_RESPONSE_HEX} "
                                                 "characters")
    try:
        data = bytes.fromhex(response)
        iv_bytes = bytes.fromhex(iv) if iv is not None else data[:16]
    except (TypeError, ValueError):
        raise WorkRejected("RESPONSE_MALFORMED", "response and iv must be hex") from None
    if iv is None:
        data = data[16:]
    if len(iv_bytes) != 16:
        raise WorkRejected("RESPONSE_MALFORMED", f"iv must be 16 bytes (32 hex), got {len(iv_bytes)} bytes")
    if not data or len(data) % 16:
        raise WorkRejected("RESPONSE_MALFORMED", f"AES-CBC ciphertext must be a positive multiple of 16 bytes, "
                                                 f"got {len(data)}")
    dec = Cipher(algorithms.AES(symmetric_key), modes.CBC(iv_bytes)).decryptor()
    padded = dec.update(data) + dec.finalize()
    try:
        unpadder = padding.PKCS7(128).unpadder()
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        plain = b""  # bad padding reads as a mismatch: one answer for every wrong key, iv or text
    if not hmac.compare_digest(plain, expected):
        raise WorkRejected("RESPONSE_MISMATCH", f"response does not decrypt to {expected.decode()!r} under the "
                                                "instance's symmetric key with this iv")
