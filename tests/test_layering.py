"""Imports point down the data flow: config <- data <- models <- inference <- evaluation <- methods
<- engine <- api <- cli (SPEC 5). Read from the source, function-level imports included."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "co2s"

#: layers from the bottom; the shared helpers sit below everything, the demo beside the cli
LAYERS = [
    {"errors", "progress", "atomic", "version", "run_folder", "warnings_once"},
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


def _module_graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (function level included)."""
    def name(path: Path) -> str:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # "from pkg import submodule"
        # importing a sibling loads its package first: that is Python, not a cycle of ours
        ancestors = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
        graph[module] = {m for m in found if m in modules and m != module and m not in ancestors}
    return graph


def test_the_package_has_no_import_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycles.append(" -> ".join(path[path.index(other):] + [module, other]) if other in path
                              else f"{module} -> {other}")
            elif other not in state:
                visit(other, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_nothing_inside_the_package_imports_the_facade():
    """``co2s/__init__`` re-exports the api for users; modules of the package import what they
    need from where it lives (the version from ``co2s.version``), never through the facade."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "co2s" for a in node.names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: import co2s")
            elif isinstance(node, ast.ImportFrom) and node.module == "co2s" and not node.level:
                facade = [a.name for a in node.names if not (PACKAGE / a.name).is_dir()
                          and not (PACKAGE / f"{a.name}.py").is_file()]
                if facade:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: from co2s import {facade}")
    assert not offenders, "\n".join(offenders)
