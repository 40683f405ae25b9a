"""raylens.index keeps DESIGN.md's layering: only ``ray_*.py`` modules import ray."""

from __future__ import annotations

import ast
from pathlib import Path

import raylens.index

PKG = Path(raylens.index.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_ray_modules_import_ray():
    offenders = [p.name for p in PKG.glob("*.py") if not p.name.startswith("ray_") and "ray" in _imports(p)]
    assert offenders == []
    assert "ray" in _imports(PKG / "ray_build.py")


def test_public_surface():
    assert {"VectorIndex", "SearchHit", "IndexManifest", "IndexCatalog", "BuildOptions"} <= set(raylens.index.__all__)
    assert all(hasattr(raylens.index, n) for n in raylens.index.__all__)
