"""Regenerate gen/ from protos/: `make proto` (python -m notifymesh.protogen).

protoc writes absolute imports (`from notifymesh.v1 import ...`) that would
resolve to our own `notifymesh` package; they are rewritten to `gen.notifymesh`.
The output depends on the grpcio-tools version, which pyproject.toml pins.
"""

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc
import importlib.resources

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
_IMPORT = re.compile(r"^(from|import) notifymesh\.", re.MULTILINE)


def generate(out: Path) -> None:
    """Writes the generated package tree (with __init__.py files) into out."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *sources]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for path in sorted(Path(tmp).rglob("*.py*")):
            target = out / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_IMPORT.sub(r"\1 gen.notifymesh.", path.read_text()))
    (out / "__init__.py").write_text('"""Generated from protos/ by `make proto`; do not edit."""\n')
    for directory in [p for p in out.rglob("*") if p.is_dir()]:
        (directory / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gen")
    out = parser.parse_args().out
    generate(out)
    print(f"generated {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
