"""DESIGN.md's layering, checked on the source: plain modules never import ray; nothing imports services."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLAIN_DIRS = ("sdk", "domains")
# Entry points that start or connect to Ray on purpose (imports stay inside their functions).
RAY_ENTRY_POINTS = {"cli.py", "runtime.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _py_files(*dirs):
    for d in dirs:
        yield from (p for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def test_only_ray_modules_import_ray():
    offenders = [str(p.relative_to(ROOT)) for p in _py_files(*PLAIN_DIRS)
                 if not p.name.startswith("ray_") and p.name not in RAY_ENTRY_POINTS
                 and any(n == "ray" or n.startswith("ray.") for n in _imports(p))]
    assert not offenders, f"only ray_*.py modules may import ray: {offenders}"


def test_nothing_imports_services_and_domains_do_not_import_each_other():
    for p in _py_files("sdk", "domains", "benchmarks"):
        bad = [n for n in _imports(p) if n.startswith("raylens_services")]
        assert not bad, f"{p} imports services: {bad}"
    for p in _py_files("domains"):
        own = p.relative_to(ROOT / "domains").parts[0]
        other = [n for n in _imports(p) if n.startswith("raylens_domains.") and n.split(".")[1] != own]
        assert not other, f"{p} imports another domain: {other}"


def test_sdk_core_imports_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import raylens, raylens.models, raylens.data.images, raylens.data.decode, raylens.train, raylens.index,"
            " raylens.search, raylens_domains.natural\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_package_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"pyproject packages differ from the tree: missing {found - listed}, extra {listed - found}"
