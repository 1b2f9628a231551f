"""The house rules that keep the repository easy to change, checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {p.stem: p for p in ROOT.glob("*.py")}


def runtime_imports(path: Path) -> set[str]:
    """First-party modules ``path`` imports at run time (not those under ``if TYPE_CHECKING:``)."""
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
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & MODULES.keys()


def test_no_import_cycle_between_the_modules() -> None:
    graph = {name: runtime_imports(path) - {name} for name, path in MODULES.items()}
    assert graph["main"] and graph["control_loop"], "the import scan found nothing: it is broken"

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


def test_no_module_assigns_a_private_attribute_of_another_object() -> None:
    pattern = re.compile(r"\b(?!self\b|cls\b)[A-Za-z_][A-Za-z0-9_]*\._[a-z][A-Za-z0-9_]*\s*=[^=]")
    offenders = [f"{path.name}:{n}: {line.strip()}" for path in MODULES.values()
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_nothing_reads_outside_the_repository() -> None:
    pattern = re.compile(r"\.\./shared|parent\s*/\s*[\"']shared[\"']|[\"']shared[\"']\s*/\s*[\"']data[\"']")
    files = [*MODULES.values(), *(ROOT / "tests").glob("*.py"), ROOT / ".ci" / "run"]
    offenders = [str(p.relative_to(ROOT)) for p in files if p.name != Path(__file__).name
                 and pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_the_benchmark_traces_are_in_the_repository_with_their_licence() -> None:
    traces = ROOT / "data" / "traces"
    assert (traces / "rae_household_1hz.csv").stat().st_size > 100_000
    assert (traces / "cyprus_pv_load_30s.csv").stat().st_size > 10_000
    readme = (traces / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "10.7910/DVN/ZJW4LC" in readme and "10.5281/zenodo.8348862" in readme
