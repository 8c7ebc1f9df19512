"""gen/ must be exactly what `make proto` produces from protos/."""

import filecmp
from pathlib import Path

from notifymesh.protogen import ROOT, generate


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_gen_matches_protos(tmp_path):
    fresh = tmp_path / "gen"
    generate(fresh)
    committed = ROOT / "gen"
    assert _files(fresh) == _files(committed), "gen/ is stale: run `make proto`"
    stale = [str(p) for p in sorted(_files(fresh)) if not filecmp.cmp(fresh / p, committed / p, shallow=False)]
    assert not stale, f"gen/ is stale ({', '.join(stale)}): run `make proto`"
