"""Generates every language's code from proto/buf.gen.yaml, or checks that the committed code is fresh.

Also the ORCA descriptor set the server loads its load-report messages from (transport/orca.py): the vendored
xds.service.orca.v3 protos and their imports, built by `buf build` (see proto/third_party/README.md).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
BUF = Path(sys.executable).parent / "buf"
# The folders buf.gen.yaml writes, relative to the repository root; each holds only generated files, except KEEP.
ORCA_DESCRIPTORS = Path("server/rillet/server/transport/xds/orca.binpb")
GENERATED = (
    Path("client_sdk/rillet/v1"),
    Path("client_sdk/go/rillet/v1"),
    Path("client_sdk/ts/src/gen"),
    ORCA_DESCRIPTORS.parent,
)
# Hand-written files that live beside the generated Python ones.
KEEP = {"__init__.py", "py.typed", "GENERATED.md"}


def generate(base: Path) -> None:
    """Run `buf generate` with its outputs under `base` instead of the repository root."""
    # buf.gen.yaml's outputs are relative to proto/ ("../client_sdk/..."): `-o base/proto` puts them under base.
    result = subprocess.run([str(BUF), "generate", "-o", str(base / "proto")], cwd=PROTO_DIR, capture_output=True)
    if result.returncode != 0:
        sys.stderr.buffer.write(result.stderr)
        sys.exit("buf generate failed: `make proto-tools` installs the pinned plugins it runs")
    out = base / ORCA_DESCRIPTORS
    out.parent.mkdir(parents=True, exist_ok=True)
    orca = "third_party/xds/service/orca/v3/orca.proto"
    result = subprocess.run(
        [str(BUF), "build", "--path", orca, "--exclude-source-info", "-o", str(out)], cwd=PROTO_DIR, capture_output=True
    )
    if result.returncode != 0:
        sys.stderr.buffer.write(result.stderr)
        sys.exit("buf build of the ORCA descriptors failed")


def generated_files(root: Path) -> dict[Path, Path]:
    """Every generated file under `root`, keyed by its path relative to `root`."""
    files: dict[Path, Path] = {}
    for folder in GENERATED:
        if (root / folder).exists():
            for path in (root / folder).rglob("*"):
                if path.is_file() and path.name not in KEEP and "__pycache__" not in path.parts:
                    files[path.relative_to(root)] = path
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs from fresh code")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = generated_files(Path(tmp)), generated_files(ROOT)
        stale = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if name not in fresh or name not in committed or not filecmp.cmp(fresh[name], committed[name], False)
        )
        if opts.check:
            if stale:
                sys.exit(f"generated code is stale ({', '.join(map(str, stale))}): run `make proto` and commit it")
            print(f"generated code is fresh ({len(fresh)} files)")
            return
        for name in stale:
            if name in fresh:
                (ROOT / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fresh[name], ROOT / name)
            else:
                (ROOT / name).unlink()
        print(f"{len(stale)} of {len(fresh)} generated files updated")


if __name__ == "__main__":
    main()
