"""Every package and public module says what it exports (``__all__``), and every exported name exists.

Importing every module here is cheap inside a full run (doctest collection has imported them all).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

ROOTS = {
    "raylens": Path("sdk/raylens"),
    "raylens_domains": Path("domains/raylens_domains"),
    "raylens_services": Path("services/raylens_services"),
}
REPO = Path(__file__).resolve().parents[2]


def _public_modules(root: str) -> list[str]:
    package = importlib.import_module(root)
    names = [root] + [m.name for m in pkgutil.walk_packages(package.__path__, root + ".")]
    return [n for n in names if not any(part.startswith("_") for part in n.split("."))]


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_every_public_module_lists_its_public_names_in_all(root):
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    problems = []
    for name in _public_modules(root):
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            problems.append(f"{name}: no __all__ (list its public names)")
            continue
        if not isinstance(exported, list | tuple) or not all(isinstance(n, str) for n in exported):
            problems.append(f"{name}: __all__ must be a list of names, got {exported!r}")
            continue
        missing = [n for n in exported if not hasattr(module, n)]
        private = [n for n in exported if n.startswith("_") and not n.startswith("__")]
        twice = sorted({n for n in exported if list(exported).count(n) > 1})
        for what, names in (("names that do not exist", missing), ("private names", private), ("repeats", twice)):
            if names:
                problems.append(f"{name}: __all__ has {what}: {names}")
    assert not problems, "\n".join(problems)
    assert ray_was_up or not ("ray" in sys.modules and sys.modules["ray"].is_initialized()), "an import started Ray"


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_every_source_folder_is_a_package(root):
    folders = {p.parent for p in (REPO / ROOTS[root]).rglob("*.py") if "__pycache__" not in p.parts}
    assert folders, f"no sources under {ROOTS[root]}"
    loose = sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file())
    assert not loose, f"folders without __init__.py (their modules are missed by the __all__ check): {loose}"
