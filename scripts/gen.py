"""Regenerate every generated file from proto/ (Python, .pyi, Go) and lint the protos.

One command, used by developers and by CI (which fails on any diff afterwards):

    python scripts/gen.py          # generate + buf lint
    python scripts/gen.py --check  # generate, lint, and fail if the tree changed

google/api and google/rpc protos are read from the installed googleapis-common-protos
package at build time (never vendored); they are staged under .build/ for buf.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from google.api import annotations_pb2  # googleapis-common-protos
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
PY_OUT = ROOT / "clients" / "python"
GO_OUT = ROOT / "clients" / "go" / "gen"
BUILD = ROOT / ".build"
GO_BIN = BUILD / "bin"
GO_MODULE = "github.com/gantry-network/gantry/clients/go"
GO_PLUGINS = {
    "protoc-gen-go": "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11",
    "protoc-gen-go-grpc": "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0",
}
GOOGLE_ROOT = Path(annotations_pb2.__file__).resolve().parent.parent.parent  # site-packages
WKT_ROOT = Path(grpc_tools.__file__).resolve().parent / "_proto"


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))


def stage_third_party() -> Path:
    """Copy the google/api + google/rpc protos we import into .build/ so buf can resolve them."""
    dest = BUILD / "third_party"
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("google/api", "google/rpc"):
        (dest / sub).mkdir(parents=True)
        for f in (GOOGLE_ROOT / sub).glob("*.proto"):
            shutil.copy(f, dest / sub / f.name)
    return dest


def go_plugins() -> dict[str, Path]:
    GO_BIN.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(GO_BIN))
    paths = {}
    for name, pkg in GO_PLUGINS.items():
        exe = GO_BIN / name
        stamp = GO_BIN / f"{name}.version"
        if not exe.exists() or not stamp.exists() or stamp.read_text() != pkg:
            run(["go", "install", pkg], env=env)
            stamp.write_text(pkg)
        paths[name] = exe
    return paths


def clean_generated() -> None:
    gen_py = PY_OUT / "gantry"
    shutil.rmtree(gen_py, ignore_errors=True)
    shutil.rmtree(GO_OUT, ignore_errors=True)
    GO_OUT.mkdir(parents=True)


def add_init_files() -> None:
    """protoc emits modules only; make every generated folder a regular package."""
    for d in [PY_OUT / "gantry", *(p for p in (PY_OUT / "gantry").rglob("*") if p.is_dir())]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text("")


def generate() -> None:
    files = proto_files()
    if not files:
        sys.exit("no .proto files under proto/")
    plugins = go_plugins()
    clean_generated()
    includes = [f"-I{PROTO}", f"-I{GOOGLE_ROOT}", f"-I{WKT_ROOT}"]
    venv_bin = Path(sys.executable).parent
    run([
        sys.executable, "-m", "grpc_tools.protoc", *includes,
        f"--python_out={PY_OUT}", f"--grpc_python_out={PY_OUT}",
        f"--plugin=protoc-gen-mypy={venv_bin / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={venv_bin / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={PY_OUT}", f"--mypy_grpc_out={PY_OUT}",
        f"--plugin=protoc-gen-go={plugins['protoc-gen-go']}",
        f"--plugin=protoc-gen-go-grpc={plugins['protoc-gen-go-grpc']}",
        f"--go_out={GO_OUT}", f"--go_opt=module={GO_MODULE}/gen",
        f"--go-grpc_out={GO_OUT}", f"--go-grpc_opt=module={GO_MODULE}/gen",
        *files,
    ], cwd=ROOT)
    add_init_files()


def lint() -> None:
    stage_third_party()
    buf = Path(sys.executable).parent / "buf"
    run([str(buf), "lint"], cwd=ROOT)
    run([str(buf), "build", "-o", str(BUILD / "image.binpb")], cwd=ROOT)


def check_clean() -> None:
    paths = ["clients/python/gantry", "clients/go/gen"]
    run(["git", "add", "--intent-to-add", *paths], cwd=ROOT)
    diff = subprocess.run(["git", "diff", "--stat", "--exit-code", "--", *paths], cwd=ROOT)
    if diff.returncode:
        sys.exit("generated code is stale: run `python scripts/gen.py` and commit the result")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if regeneration changes the tree")
    args = ap.parse_args()
    generate()
    lint()
    if args.check:
        check_clean()


if __name__ == "__main__":
    main()
