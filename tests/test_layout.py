"""The layout is the contract of docs/architecture.md: one sub-package per stage, imports in one
direction, no import circles (counting imports inside functions too), and every file a comment
or doc points to exists."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "safedreamer_sweep"
# A stage may import its own and earlier stages only (commands -> report -> sweep -> tasks -> trainer -> core).
ORDER = ["core", "trainer", "tasks", "sweep", "report", "commands"]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for node in ast.walk(ast.parse(p.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n in modules and n != m and not m.startswith(n + "."):
                    # a package's __init__ is not a dependency edge of its own modules
                    if modules[n].name == "__init__.py" and not n.endswith(("report",)):
                        continue
                    graph[m].add(n)
    return graph


def test_no_import_circles() -> None:
    graph = imports()
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


def test_stages_import_only_earlier_stages() -> None:
    bad = []
    for m, deps in imports().items():
        parts = m.split(".")
        if len(parts) < 3 or parts[1] not in ORDER:
            continue
        for d in deps:
            dp = d.split(".")
            if len(dp) >= 2 and dp[1] in ORDER and ORDER.index(dp[1]) > ORDER.index(parts[1]):
                bad.append(f"{m} imports {d}")
    assert not bad, "a stage imports a later stage:\n" + "\n".join(sorted(bad))


def test_every_referenced_file_exists() -> None:
    pattern = re.compile(r"\b((?:docs|safedreamer_sweep|conf|hydra_plugins|scripts|bench|templates)/[\w./-]+\.(?:py|md|yaml|sh|j2))\b")
    missing = []
    for p in [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *PKG.rglob("*.py"), *(ROOT / "conf").rglob("*.yaml"),
              *(ROOT / "hydra_plugins").rglob("*.py")]:
        for ref in pattern.findall(p.read_text()):
            if not (ROOT / ref).exists() and "my_project" not in ref and "mytrainer" not in ref:
                missing.append(f"{p.relative_to(ROOT)}: {ref}")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)
