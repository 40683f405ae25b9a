"""DESIGN.md's layering, checked on the source: plain modules never import ray; nothing imports services."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLAIN_DIRS = ("sdk/raylens", "domains/raylens_domains")
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
    offenders = [
        str(p.relative_to(ROOT))
        for p in _py_files(*PLAIN_DIRS)
        if not p.name.startswith("ray_")
        and p.name not in RAY_ENTRY_POINTS
        and any(n == "ray" or n.startswith("ray.") for n in _imports(p))
    ]
    assert not offenders, f"only ray_*.py modules may import ray: {offenders}"


def test_nothing_imports_services_and_domains_do_not_import_each_other():
    for p in _py_files("sdk", "domains", "benchmarks"):
        bad = [n for n in _imports(p) if n.startswith("raylens_services")]
        assert not bad, f"{p} imports services: {bad}"
    for p in _py_files("domains/raylens_domains"):
        own = p.relative_to(ROOT / "domains" / "raylens_domains").parts[0]
        other = [n for n in _imports(p) if n.startswith("raylens_domains.") and n.split(".")[1] != own]
        assert not other, f"{p} imports another domain: {other}"


def test_sdk_core_imports_without_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import raylens, raylens.models, raylens.data.images, raylens.data.decode, raylens.train, raylens.index,"
        " raylens.search, raylens_domains.natural\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_sdk_never_imports_a_domain_pack_or_the_benchmarks():
    """Domain packs plug in through entry points; the sdk names none of them."""
    for p in _py_files("sdk"):
        bad = [n for n in _imports(p) if n.startswith(("raylens_domains", "raylens_benchmarks"))]
        assert not bad, f"{p.relative_to(ROOT)} imports {bad}"


def test_a_files_path_is_its_import_path():
    """Every package lives at <source root>/<import path>, and is found by setuptools, not listed."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "package-dir" not in cfg and "find" in cfg.get("packages", {}), "packages are discovered, not listed"
    roots = cfg["packages"]["find"]["where"]
    for root in roots:
        tops = [d.name for d in (ROOT / root).iterdir() if (d / "__init__.py").is_file()]
        assert tops and all(t.startswith("raylens") for t in tops), f"{root}/ holds {tops}"
    import raylens
    import raylens_benchmarks
    import raylens_domains
    import raylens_services

    for mod, root in (
        (raylens, "sdk"),
        (raylens_domains, "domains"),
        (raylens_services, "services"),
        (raylens_benchmarks, "benchmarks"),
    ):
        assert Path(mod.__file__).resolve() == ROOT / root / mod.__name__ / "__init__.py"
