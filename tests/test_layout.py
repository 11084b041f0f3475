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
# A stage may import its own and earlier stages only (commands -> report -> search -> sweep -> tasks -> trainer -> core).
ORDER = ["core", "trainer", "tasks", "sweep", "search", "report", "commands"]


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


# ----------------------------------------------------------------------------- rooms of one job (issue 28)

ARCHITECTURE = ROOT / "docs" / "architecture.md"
MODULE_REF = re.compile(r"\b((?:safedreamer_sweep|hydra_plugins)/[\w/]+\.py)\b")
# The longest a function may be (lines from `def` to its last line). Above it a function holds more than one
# step; the exceptions are linear markup or a loop that reads better whole, each with its reason.
MAX_FUNCTION_LINES = 60
LONG_BY_DESIGN: dict[str, str] = {
    "safedreamer_sweep/trainer/ppo_lag.py:train": "the training loop, read top to bottom in its own `# ---` sections "
    "as CleanRL keeps its loop; and its bytes are the built-in trainer's code fingerprint (FROZEN_FOR_FINGERPRINT)",
}


def product_modules() -> list[Path]:
    return sorted(p for base in (PKG, ROOT / "hydra_plugins") for p in base.rglob("*.py") if p.name != "__init__.py")


def test_architecture_names_every_module_and_only_modules_that_exist() -> None:
    named = set(MODULE_REF.findall(ARCHITECTURE.read_text()))
    actual = {str(p.relative_to(ROOT)) for p in product_modules()}
    unnamed, gone = sorted(actual - named), sorted(named - actual - {n for n in named if n.endswith("__init__.py")})
    assert not unnamed and not gone, (
        "docs/architecture.md is out of step with the code (its module map, 'Where each stage lives', names each "
        f"module by its path):\n  modules it does not name: {unnamed}\n  modules it names that do not exist: {gone}")


def test_no_function_over_the_limit() -> None:
    long = []
    for p in product_modules():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{p.relative_to(ROOT)}:{node.name}"
                if n > MAX_FUNCTION_LINES and where not in LONG_BY_DESIGN:
                    long.append(f"{where} ({n} lines, line {node.lineno})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split at a natural seam, or add to LONG_BY_DESIGN " \
                     f"with the reason):\n" + "\n".join(sorted(long))


# The built-in trainer's files are hashed, bytes and all, into the code fingerprint every stored built-in cell
# records (core/code_fingerprint.py): an edit there that changes no number still makes each of those cells plan
# `code-changed` after an upgrade. Its package is left as it is until its numerics change for a reason of their own.
FROZEN_FOR_FINGERPRINT = PKG / "trainer"


def test_every_subpackage_declares_what_it_offers() -> None:
    bad = []
    for init in sorted(PKG.rglob("__init__.py")):
        if init.parent == FROZEN_FOR_FINGERPRINT:
            continue
        tree = ast.parse(init.read_text())
        offered = None
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                offered = ast.literal_eval(node.value)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        where = init.parent.relative_to(ROOT)
        if not ast.get_docstring(tree):
            bad.append(f"{where}: no docstring saying what the package holds")
        if offered is None:
            bad.append(f"{where}: no __all__")
            continue
        for name in offered:
            if name not in defined and not (init.parent / f"{name}.py").exists() and not (init.parent / name).is_dir():
                bad.append(f"{where}: __all__ names {name!r}, which is neither a module of it nor defined in it")
    assert not bad, "\n".join(bad)
