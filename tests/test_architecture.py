"""The house rules that keep the repository easy to change, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("control", "meters", "integrations", "planning", "web", "simulator", "benchmark")
# The product: what ``main.py`` runs on a user's machine. The simulator and the benchmark sit above it.
PRODUCT_PACKAGES = ("control", "meters", "integrations", "planning", "web")


def _dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


MODULES = {_dotted(p): p for p in [*ROOT.glob("*.py"), *(f for pkg in PACKAGES for f in (ROOT / pkg).glob("*.py"))]}


def runtime_imports(path: Path) -> set[str]:
    """First-party modules ``path`` imports at run time (not those under ``if TYPE_CHECKING:``), dotted."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # ``from pkg import module``
    return {name for name in found if name in MODULES}


def _layer(module: str) -> str:
    top = module.split(".")[0]
    return top if top in ("simulator", "benchmark", "tests") else "product"


def test_every_package_is_scanned() -> None:
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").is_file(), f"{pkg}/ is a package"
        assert any(name.startswith(f"{pkg}.") for name in MODULES), f"the scan finds the modules of {pkg}/"
    stray = [p.name for p in ROOT.glob("*.py")
             if p.stem not in {"main", "shelly_client", "ecotracker_client", "battery_client", "zero_feed_control",
                               "web_server", "config_loader", "install"}]
    assert not stray, f"only the design card's modules live at the top level; move these into a package: {stray}"


def test_no_import_cycle_between_the_modules() -> None:
    graph = {name: runtime_imports(path) - {name} - {name.rsplit(".", 1)[0]} for name, path in MODULES.items()}
    assert graph["main"] and graph["control.control_loop"], "the import scan found nothing: it is broken"

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for name in graph if (c := cycle_from(name))]
    assert not cycles, cycles[0]


def test_the_product_never_imports_the_simulator_or_the_benchmark() -> None:
    """Upward imports are allowed only inside functions that the demo needs (``main.py --demo``)."""
    offenders = []
    for name, path in MODULES.items():
        if _layer(name) != "product":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: the demo's lazy imports live inside its functions
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name} imports {t}" for t in targets if t.split(".")[0] in ("simulator", "benchmark")]
    assert not offenders, offenders


def test_no_module_reaches_into_another_modules_private_names() -> None:
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                offenders += [f"{name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_no_module_assigns_a_private_attribute_of_another_object() -> None:
    pattern = re.compile(r"\b(?!self\b|cls\b)[A-Za-z_][A-Za-z0-9_]*\._[a-z][A-Za-z0-9_]*\s*=[^=]")
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in MODULES.values()
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_nothing_reads_outside_the_repository() -> None:
    pattern = re.compile(r"\.\./shared|parent\s*/\s*[\"']shared[\"']|[\"']shared[\"']\s*/\s*[\"']data[\"']")
    files = [*MODULES.values(), *(ROOT / "tests").glob("*.py"), ROOT / ".ci" / "run"]
    assert len(files) > 60, "the scan finds every module"
    offenders = [str(p.relative_to(ROOT)) for p in files if p.name != Path(__file__).name
                 and pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_the_benchmark_traces_are_in_the_repository_with_their_licence() -> None:
    traces = ROOT / "data" / "traces"
    assert (traces / "rae_household_1hz.csv").stat().st_size > 100_000
    assert (traces / "cyprus_pv_load_30s.csv").stat().st_size > 10_000
    readme = (traces / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "10.7910/DVN/ZJW4LC" in readme and "10.5281/zenodo.8348862" in readme
