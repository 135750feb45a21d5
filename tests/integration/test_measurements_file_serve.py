"""`gantry serve` with a bad GANTRY_TDX_MEASUREMENTS_FILE: one line naming the file, exit 2, no traceback."""
from __future__ import annotations

import subprocess

import pytest

from .test_cli import GANTRY, _env, _free_port


@pytest.mark.parametrize("shape", ["directory", "wrong-shape"])
def test_a_bad_measurements_file_stops_serve_with_one_line(tmp_path, database_url, redis_url, shape):
    path = tmp_path / "measurements.json"
    if shape == "directory":
        path.mkdir()
        expected = f"gantry: cannot read measurements file {path}: "
    else:
        path.write_text('{"measurements": [{"name": "x", "version": 1, "mrtd": 5, "boot_rtmrs": "ab",'
                        ' "runtime_rtmrs": [], "gpu_count": "8"}]}')
        expected = f"gantry: {path}: entry 0 ('x'): version required, at most 64 characters"
    env = _env(tmp_path / "data", GANTRY_DATABASE_URL=database_url, GANTRY_REDIS_URL=redis_url,
               GANTRY_GRPC_ADDR=f"127.0.0.1:{_free_port()}", GANTRY_TDX_MEASUREMENTS_FILE=str(path))
    proc = subprocess.run([*GANTRY, "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("gantry: ")]
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
