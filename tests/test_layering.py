"""Imports point down the data flow: config <- data <- models <- inference <- evaluation <- methods
<- engine <- api <- cli (SPEC 5). Read from the source, function-level imports included."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "co2s"

#: layers from the bottom; the shared helpers sit below everything, the demo beside the cli
LAYERS = [
    {"errors", "progress", "atomic", "version"},
    {"config"},
    {"data"},
    {"models"},
    {"inference"},
    {"evaluation"},
    {"methods"},
    {"engine"},
    {"api"},
    {"cli", "demo"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _concern(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "co2s" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("co2s", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "co2s":  # "from co2s import api" names a submodule
                found += [(node.lineno, f"co2s.{a.name}") for a in node.names]
    return found


def test_no_import_runs_up_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.as_posix() == "__init__.py":
            continue  # the package facade re-exports the api lazily
        own = rel.parts[0].removesuffix(".py")
        assert own in RANK, f"{rel}: no layer assigned to co2s.{own}; add it to LAYERS"
        for line, module in _imports(path):
            target = _concern(module)
            if target is None or target == "__version__":
                continue
            assert target in RANK, f"{rel}:{line} imports co2s.{target}, which has no layer"
            if RANK[target] > RANK[own]:
                upward.append(f"{rel}:{line}: {own} imports {module}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_import_and_help_are_fast():
    """`import co2s` and `co2s --help` must not load torch and friends."""
    code = ("import sys, co2s, co2s.cli.main as m; "
            "heavy = [x for x in ('torch', 'transformers', 'rasterio', 'lightning_fabric') if x in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported eagerly: {out.stdout.strip()}"
