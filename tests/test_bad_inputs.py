"""The bad-input battery (issue 7, docs/architecture.md, invariant 5): malformed inputs through the REAL command
lines (`python -m safedreamer_sweep ...` for launches, `python -m safedreamer_sweep.commands.cli ...` for
`safedreamer-sweep`), each against a copy of a real store (one real tiny cell, trained and
evaluated by the built-in trainer).

Each input must get
  - a non-zero exit,
  - a message that names the thing that is wrong (asserted on its words),
  - and leave the store byte-identical: every file and directory under the store is checksummed
    before and after. The only exclusion: `report` commands may legitimately (re)write
    `<store>/report/`; nothing else is excluded (not Hydra's files, not lock files).

`safedreamer-sweep` commands must also not dump a Python traceback (the message is the interface);
launches go through Hydra, which prints the exception itself, so there only the words are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, TINY

LOCAL = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.5"]
DRY = ["hydra.launcher.dry_run=true"]


# ----------------------------------------------------------------------------- the store


@pytest.fixture(scope="session")
def base_store(tmp_path_factory) -> Path:
    """A real store: v2_baseline seed 0 trained (1,024 env steps, checkpoints at 512 and 1,024) and
    evaluated ID and OOD by the real launcher, cell task and trainer."""
    store = tmp_path_factory.mktemp("bad_inputs") / "store"
    p = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline", "seed=0",
                        f"store.root={store}", *TINY, *LOCAL], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rd,) = [s.parent for s in (store / "runs").glob("*/seed_*/*/spec.json")]
    assert json.loads((rd / "state.json").read_text())["phase"] == "done"
    assert len(list((rd / "checkpoints").glob("ckpt_*.pkl"))) >= 2
    return store


def run_dir(store: Path) -> Path:
    (rd,) = [s.parent for s in (store / "runs").glob("*/seed_*/*/spec.json")]
    return rd


def snapshot(store: Path, exclude_report: bool) -> dict[str, str]:
    """relative path -> sha256 (files) or 'dir' (directories), for everything under the store."""
    out: dict[str, str] = {}
    if not store.exists():
        return out
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        if exclude_report and (rel == "report" or rel.startswith("report/")):
            continue
        if p.is_dir() and not p.is_symlink():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return ([f"+ {k}" for k in sorted(set(after) - set(before))] + [f"- {k}" for k in sorted(set(before) - set(after))]
            + [f"~ {k}" for k in sorted(set(before) & set(after)) if before[k] != after[k]])


# ----------------------------------------------------------------------------- preparations


def corrupt(name: str) -> Callable[[Path], None]:
    def prep(store: Path) -> None:
        (run_dir(store) / name).write_text("garbage{ not json\n")
    return prep


def corrupt_manifest(store: Path) -> None:
    (store / "sweeps" / "broken.json").write_text("garbage{ not json\n")


def truncate_checkpoints(store: Path) -> None:
    """Every checkpoint truncated, and the cell made unfinished (so the plan has to look at them)."""
    rd = run_dir(store)
    for ck in (rd / "checkpoints").glob("ckpt_*.pkl"):
        with open(ck, "r+b") as f:
            f.truncate(100)
    state = json.loads((rd / "state.json").read_text())
    state.update(phase="interrupted", trained=False)
    (rd / "state.json").write_text(json.dumps(state))
    shutil.rmtree(rd / "eval")


def bad_template(cwd: Path) -> None:
    # `report` looks up report.templates (templates/slides.md.j2) in the current directory first.
    (cwd / "templates").mkdir(parents=True, exist_ok=True)
    (cwd / "templates" / "slides.md.j2").write_text("ID return {{ nosuch_placeholder }}\n")


# ----------------------------------------------------------------------------- the battery


@dataclass
class Case:
    id: str
    argv: list[str]                      # after `python -m`; "{S}" is replaced by the store path
    words: list[str]                     # each must appear (case-insensitive) in stdout+stderr
    prep: Callable[[Path], None] | None = None
    prep_cwd: Callable[[Path], None] | None = None
    report: bool = False                 # the command may (re)write <store>/report
    exit_codes: tuple[int, ...] = ()     # () = any non-zero
    cli: bool = False                    # a safedreamer-sweep command: no traceback allowed
    timeout: float = 300
    note: str = ""
    marks: list = field(default_factory=list)


L = ["safedreamer_sweep", "-m"]
C = ["safedreamer_sweep.commands.cli"]
S = "store.root={S}"

CASES = [
    # --- the sweep command line
    Case("unknown-config", [*L, "config=v2_nosuch", "seed=0", S, *TINY, *LOCAL], ["v2_nosuch", "config"]),
    Case("bad-seed-list", [*L, "config=v2_baseline", "seed=a,b", S, *TINY, *LOCAL], ["seed", "'a'", "integer"]),
    Case("non-integer-seed", [*L, "config=v2_baseline", "seed=1.5", S, *TINY, *LOCAL, *DRY], ["seed", "1.5"]),
    Case("unquoted-equals", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL, "+sweep.notes=K=4"],
         ["sweep.notes", "quote"], exit_codes=(2,)),
    Case("parentheses", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL, "+sweep.notes=strong (K4)"],
         ["sweep.notes", "quote"], exit_codes=(2,)),
    Case("unknown-key", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL, "trainer.nosuch=1"], ["trainer.nosuch"]),
    Case("unknown-launcher-option", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL, "hydra.launcher.nosuch=1"],
         ["nosuch", "launcher"]),
    Case("unknown-launcher", [*L, "config=v2_baseline", "seed=0", S, *TINY, "hydra/launcher=sds_nosuch"],
         ["sds_nosuch"]),
    Case("conflicting-identity", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL, "agent.lr=0.001"],
         ["agent.lr", "new_variant", "refusing"]),
    Case("negative-total-steps", [*L, "config=v2_baseline", "seed=3", S, *TINY, *LOCAL, "trainer.total_steps=-5"],
         ["trainer.total_steps", "-5"]),
    Case("zero-max-parallel", [*L, "config=v2_baseline", "seed=4", S, *TINY, *LOCAL, *DRY, "hydra.launcher.max_parallel=0"],
         ["max_parallel"]),
    Case("zero-ensemble", [*L, "config=v2_full", "seed=4", S, *TINY, *LOCAL, *DRY, "agent.u.ensemble=0"],
         ["agent.u.ensemble=0", ">= 1", "Fix"], note="trained until a NaN loss and blamed the learning rate (issue 14)"),
    Case("negative-mem-gb", [*L, "config=v2_baseline", "seed=4", S, *TINY, *LOCAL, *DRY, "hydra.launcher.mem_gb=-4"],
         ["hydra.launcher.mem_gb", "> 0", "Fix"]),
    Case("unknown-env-id", [*L, "config=v2_baseline", "seed=4", S, *TINY, *LOCAL, *DRY, "eval.ood_env=SafetyPointGoal9-v0"],
         ["eval.ood_env", "SafetyPointGoal9-v0", "Safety-Gymnasium env id", "Fix"],
         note="was found only when the cell started"),
    Case("negative-poll", [*L, "config=v2_baseline", "seed=4", S, *TINY, *LOCAL, *DRY, "hydra.launcher.poll_s=-1"],
         ["poll_s"]),
    Case("store-root-is-a-file", [*L, "config=v2_baseline", "seed=0", "store.root={S}/runs/{SPEC}", *TINY, *LOCAL],
         ["store.root", "not a directory"]),
    Case("launch-over-corrupt-state", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL],
         ["state.json", "corrupt"], prep=corrupt("state.json")),
    Case("unreadable-checkpoint", [*L, "config=v2_baseline", "seed=0", S, *TINY, *LOCAL, *DRY],
         ["ckpt_000000001024.pkl", "unreadable"], prep=truncate_checkpoints, exit_codes=(0, 1, 2),
         note="a truncated checkpoint is not fatal (the cell resumes from an older one or from scratch): "
              "exit 0 is allowed, but the plan must say the checkpoint is unreadable instead of promising a resume"),
    # --- safedreamer-sweep status / report / doctor / confounds
    Case("status-missing-store", [*C, "status", "{S}/nosuch"], ["nosuch", "no such store"], exit_codes=(2,), cli=True),
    Case("report-missing-store", [*C, "report", "{S}/nosuch"], ["nosuch", "no such store"], exit_codes=(2,), cli=True),
    Case("status-not-a-store", [*C, "status", "{S}/runs"], ["not a safedreamer-sweep store"], exit_codes=(2,), cli=True),
    Case("status-corrupt-state", [*C, "status", "{S}"], ["state.json", "corrupt"], prep=corrupt("state.json"), cli=True),
    Case("status-corrupt-progress", [*C, "status", "{S}"], ["progress.json", "corrupt"], prep=corrupt("progress.json"),
         cli=True),
    Case("status-corrupt-spec", [*C, "status", "{S}"], ["spec.json", "corrupt"], prep=corrupt("spec.json"), cli=True),
    Case("status-corrupt-manifest", [*C, "status", "{S}"], ["broken.json", "corrupt"], prep=corrupt_manifest, cli=True),
    Case("report-corrupt-state", [*C, "report", "{S}"], ["state.json", "corrupt"], prep=corrupt("state.json"),
         report=True, cli=True),
    Case("report-corrupt-eval", [*C, "report", "{S}"], ["id.json", "corrupt"], prep=corrupt("eval/id.json"),
         report=True, cli=True),
    Case("template-unknown-placeholder", [*C, "report", "{S}"], ["nosuch_placeholder", "slides.md.j2"],
         prep_cwd=bad_template, exit_codes=(2,), cli=True,
         note="the report says 'nothing was written': checked strictly, <store>/report included"),
    Case("status-cell-malformed", [*C, "status", "{S}", "--cell", "v2_baseline"], ["--cell", "CONFIG:SEED"],
         exit_codes=(2,), cli=True),
    Case("status-cell-unknown", [*C, "status", "{S}", "--cell", "v2_full:7"], ["v2_full:7"], exit_codes=(2,), cli=True),
    Case("status-stall-after-not-a-number", [*C, "status", "{S}", "--stall-after", "abc"], ["--stall-after", "abc"],
         exit_codes=(2,), cli=True),
    Case("unknown-command", [*C, "frobnicate", "{S}"], ["frobnicate"], exit_codes=(2,), cli=True),
    Case("doctor-unquoted-equals", [*C, "doctor", "--store", "{S}", "sweep.notes=K=4"], ["sweep.notes", "quote"],
         exit_codes=(2,), cli=True),
    Case("confounds-unknown-config", [*C, "confounds", "config=v2_baseline,v2_nosuch"], ["v2_nosuch"], cli=True),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_refused_clearly_and_leaves_the_store_byte_identical(case: Case, base_store: Path, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(base_store, store, symlinks=True)
    if case.prep:
        case.prep(store)
    cwd = ROOT
    if case.prep_cwd:
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        case.prep_cwd(cwd)
    spec = run_dir(store).relative_to(store / "runs") / "spec.json"
    argv = [a.replace("{S}", str(store)).replace("{SPEC}", spec.as_posix()) for a in case.argv]
    exclude_report = case.report
    before = snapshot(store, exclude_report)
    p = subprocess.run([sys.executable, "-m", *argv], check=False, cwd=cwd, capture_output=True, text=True, timeout=case.timeout)
    after = snapshot(store, exclude_report)
    out = p.stdout + p.stderr
    shown = f"exit {p.returncode}\n--- stdout\n{p.stdout[-2500:]}\n--- stderr\n{p.stderr[-2500:]}"

    if case.exit_codes:
        assert p.returncode in case.exit_codes, shown
    assert p.returncode != 0 or 0 in case.exit_codes, f"accepted (exit 0):\n{shown}"
    missing = [w for w in case.words if w.lower() not in out.lower()]
    assert not missing, f"message does not name {missing}:\n{shown}"
    if case.cli:
        assert "Traceback (most recent call last)" not in out, f"a traceback instead of a message:\n{shown}"
    diff = changes(before, after)
    assert not diff, "the store changed" + (" (outside <store>/report)" if exclude_report else "") + ":\n" + \
        "\n".join(diff[:30]) + f"\n{shown}"


def test_the_battery_has_at_least_20_distinct_inputs():
    assert len({c.id for c in CASES}) == len(CASES) >= 20


# ----------------------------------------------------------------------------- generated from the schema


def _override(value) -> str:
    """A Hydra override value for `value` (the malformed values are str, int, float, list)."""
    if isinstance(value, str):
        return "''" if value == "" else value
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return repr(value)


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    """The real plan stage (sweep/launch.plan_sweep) over the real conf/ through Hydra's compose API."""
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from safedreamer_sweep.sweep.launch import plan_sweep

    store = tmp_path_factory.mktemp("generated") / "store"
    store.mkdir()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        ctx = SimpleNamespace(config_loader=GlobalHydra.instance().config_loader())

        def plan(job: list[str], params: dict) -> None:
            config = compose(config_name="sweep", overrides=[f"store.root={store}"], return_hydra_config=True)
            plan_sweep("local", params, config, ctx, [["config=v2_baseline", f"store.root={store}", *job]])

        yield plan, store


GENERATED = __import__("safedreamer_sweep.core.schema", fromlist=["malformed_values"]).malformed_values()


@pytest.mark.parametrize(("schema", "key", "bad"), GENERATED, ids=[f"{s}:{k}" for s, k, _ in GENERATED])
def test_a_generated_malformed_value_for_every_key_is_refused_before_anything_is_written(planner, schema, key, bad):
    import dataclasses

    from hydra_plugins.sds_launcher.config import SdsLocalConf
    from safedreamer_sweep.sweep.errors import PlanError

    plan, store = planner
    params = dataclasses.asdict(SdsLocalConf())
    job = ["seed=0"]
    if schema == "launcher":
        params[key] = bad
        name = f"hydra.launcher.{key}"
    else:
        job = [o for o in job if not o.startswith(f"{key}=")] + [f"{key}={_override(bad)}"]
        name = key
    with pytest.raises(PlanError) as refused:
        plan(job, params)
    text = str(refused.value)
    assert name in text and "Fix:" in text and "Traceback" not in text, text
    assert list(store.iterdir()) == [], "the store was touched"


def test_an_unwritable_store_root_is_refused_without_a_traceback(tmp_path):
    store = tmp_path / "ro"
    store.mkdir()
    ro = subprocess.run(["sh", "-c", f"mount --bind {store} {store} && mount -o remount,ro,bind {store}"],
                        capture_output=True, text=True, check=False)
    if ro.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip(f"cannot make a read-only mount here: {ro.stderr.strip()}")
        store.chmod(0o555)
    try:
        p = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "-m", "config=v2_baseline", "seed=0",
                            f"store.root={store}/sub", *TINY, *LOCAL], check=False, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(store)], check=False, capture_output=True)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and f"store.root={store}/sub is not writable" in out and "Fix:" in out, out[-3000:]
    assert "Traceback (most recent call last)" not in out
    assert list(store.iterdir()) == []
