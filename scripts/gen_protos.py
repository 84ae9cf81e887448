"""Generates the Python stubs of the rillet.v1 contract, or checks that the committed ones are fresh."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
THIRD_PARTY = PROTO_DIR / "third_party"
OUT_DIR = ROOT / "client_sdk"
PACKAGE = Path("rillet") / "v1"
# Hand-written files that live beside the generated ones.
BIN = Path(sys.executable).parent
KEEP = {"__init__.py", "py.typed", "GENERATED.md"}


def stage_imports() -> None:
    """Copy the google/* protos the contract imports from installed wheels (buf cannot reach its registry)."""
    import grpc_tools
    from google.rpc import status_pb2

    wkt = Path(grpc_tools.__file__).parent / "_proto" / "google" / "protobuf"
    rpc = Path(status_pb2.__file__).parent  # google.rpc is a namespace package: ask a module where it lives
    for src, dst in ((wkt, "google/protobuf"), (rpc, "google/rpc")):
        target = THIRD_PARTY / dst
        target.mkdir(parents=True, exist_ok=True)
        protos = list(src.glob("*.proto"))
        if not protos:
            sys.exit(f"no .proto files in {src}")
        for proto in protos:
            shutil.copy2(proto, target / proto.name)


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE).glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{THIRD_PARTY}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def generated_files(root: Path) -> dict[str, Path]:
    pkg = root / PACKAGE
    return {p.name: p for p in pkg.iterdir() if p.is_file() and p.name not in KEEP} if pkg.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ from fresh ones")
    parser.add_argument("--stage-only", action="store_true", help="only stage the imported google/* protos")
    opts = parser.parse_args()
    stage_imports()
    if opts.stage_only:
        return
    if not opts.check:
        for stale in generated_files(OUT_DIR).values():
            stale.unlink()
        generate(OUT_DIR)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = generated_files(Path(tmp)), generated_files(OUT_DIR)
        stale_names = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if name not in fresh
            or name not in committed
            or not filecmp.cmp(fresh[name], committed[name], shallow=False)
        )
    if stale_names:
        sys.exit(f"generated code is stale ({', '.join(stale_names)}): run `make proto` and commit the result")
    print(f"generated code is fresh ({len(fresh)} files)")


if __name__ == "__main__":
    main()
