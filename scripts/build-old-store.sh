#!/usr/bin/env bash
# Build a small store with the REAL code of an earlier commit, and commit it as test data (issue 29).
#
#   bash scripts/build-old-store.sh COMMIT [KINDS]
#
# A future format change adds its store with one line: bash scripts/build-old-store.sh <commit>
# (then `git add tests/data/old_stores/<short-commit>/` and name it in tests/data/old_stores/README.md).
#
# KINDS: comma-separated subset of builtin,builtin-failed,external,external-failed,app,app-failed
#   (default: every kind the commit can run; `app*` needs examples/any_app, `external*` needs
#   conf/task/external.yaml and tests/fake_safedreamer.py at that commit).
# Environment:
#   SDS_APP_SWEEP   the any-app sweep's swept overrides (default "lr=0.01,0.1 seed=0,1", the issue's;
#                   every app command also has steps=60 step_sleep=0, as the issue's cells had)
#   SDS_PROJECT_VENV  the project's virtualenv whose site-packages the old code runs with
#                   (default: <repo>/.venv, else the main worktree's .venv)
#   SDS_OLD_STORE_TIMEOUT  seconds per command (default 900)
#   SDS_OLD_STORE_MAX_KB   tar.gz budget; above it, large files other than the newest checkpoint of
#                   one done built-in cell are replaced by stand-ins of the same name (default 300)
#
# What it does:
#   1. a detached checkout of COMMIT (a clone of the repo this script lives in) -> /tmp/sds-old-stores/<short>/code
#   2. a side interpreter /tmp/sds-old-stores/<short>/venv whose only .pth lists that code dir and the
#      project venv's site-packages. Paths from a .pth are appended to sys.path but their own .pth
#      files are not run, so neither the main worktree's editable install nor today's hydra_plugins
#      leak in (the script checks which safedreamer_sweep / sds_launcher it imports). SDS_CODE_VERSION=
#      COMMIT, so spec.json's code_version names the commit (the code dir is not a git checkout).
#   3. runs each kind's command line (cwd = the code dir, SDS_STORE=<the store>) against the store at
#      the FIXED path /tmp/sds-old-stores/<short>/store: every absolute path written inside the store
#      (pickles, manifests, attempt records) is then valid again when the test restores it there.
#   4. copies the store, strips what is large and proves nothing (the JAX cache cache/, logs cut to
#      their last 50 lines, Hydra's multirun dirs stay outside the store), packs it as
#      tests/data/old_stores/<short>/store.tar.gz (paths relative to /tmp/sds-old-stores/<short>/:
#      restore with `mkdir -p /tmp/sds-old-stores/<short> && tar -xzf store.tar.gz -C $_`), and writes
#      cells.json: per cell its kind, label, seed, hash, phase, cause, attempts and the exact command
#      line (argv, env, cwd) that made it; the commit, the build date, the runs/ listing.
# Never touches the main worktree or its venv's files; needs no network. Rebuilding a commit
# replaces /tmp/sds-old-stores/<short>/ and tests/data/old_stores/<short>/.
set -euo pipefail

COMMIT=${1:?usage: bash scripts/build-old-store.sh COMMIT [KINDS]}
KINDS=${2:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FULL=$(git -C "$REPO" rev-parse --verify "$COMMIT^{commit}")
SHORT=${FULL:0:7}
BASE=/tmp/sds-old-stores/$SHORT
CODE=$BASE/code
VENV=$BASE/venv
OUT=$REPO/tests/data/old_stores/$SHORT

PROJECT_VENV=${SDS_PROJECT_VENV:-}
if [ -z "$PROJECT_VENV" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then
        PROJECT_VENV=$REPO/.venv
    else  # a linked worktree: the main worktree's venv
        PROJECT_VENV=$(cd "$(git -C "$REPO" rev-parse --git-common-dir)/.." && pwd)/.venv
    fi
fi
[ -x "$PROJECT_VENV/bin/python" ] || { echo "no project venv at $PROJECT_VENV (set SDS_PROJECT_VENV)" >&2; exit 2; }
SITE=$("$PROJECT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

rm -rf "$BASE"
mkdir -p "$CODE"
# a checkout (not an archive): an app's identity since 5ebb97c is its script's place in a git repository,
# so the cells of examples/any_app get the identity today's checkout gives them
git clone -q --no-checkout "$REPO" "$CODE" && git -C "$CODE" checkout -q --detach "$FULL"
"$PROJECT_VENV/bin/python" -m venv --without-pip "$VENV"
VSITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$CODE" "$SITE" > "$VSITE/sds-old.pth"

# the side interpreter must import the old commit's code, and nothing of today's (cwd: not a checkout)
cd "$BASE"
"$VENV/bin/python" - "$CODE" <<'PY'
import sys, importlib.util
code = sys.argv[1]
for mod in ("safedreamer_sweep", "hydra_plugins.sds_launcher"):
    spec = importlib.util.find_spec(mod)
    where = spec.origin or list(spec.submodule_search_locations)[0]
    assert where.startswith(code + "/"), f"{mod} comes from {where}, not {code}"
    print(f"{mod}: {where}")
PY

mkdir -p "$OUT"
export SDS_CODE_VERSION=$SHORT
exec "$VENV/bin/python" - "$REPO" "$FULL" "$BASE" "$OUT" "$KINDS" <<'PY'
"""Runs the cells of one old commit, then packs the store and writes cells.json (stdlib only)."""
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml  # the project venv's PyYAML (omegaconf's dependency)

REPO, FULL, BASE, OUT, KINDS = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
SHORT = FULL[:7]
CODE, STORE = BASE / "code", BASE / "store"
TIMEOUT = float(os.environ.get("SDS_OLD_STORE_TIMEOUT", "900"))
MAX_KB = float(os.environ.get("SDS_OLD_STORE_MAX_KB", "300"))
APP_SWEEP = os.environ.get("SDS_APP_SWEEP", "lr=0.01,0.1 seed=0,1").split()
LOG_LINES = 50

# the built-in cell budget of tests/conftest.py (TINY): a real cell trains and evaluates in seconds
TINY = ["trainer.total_steps=1024", "trainer.num_envs=1", "trainer.rollout_steps=512",
        "trainer.checkpoint_every_steps=512", "trainer.log_every_steps=512",
        "trainer.eval_every_steps=1024", "eval.episodes=1"]


def text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def launcher_opts() -> list[str]:
    opts = ["hydra.launcher.poll_s=0.5"]
    options = text(CODE / "safedreamer_sweep/core/launcher_options.py") + text(
        CODE / "hydra_plugins/sds_launcher/config.py")
    if "progress:" in options:  # 8a77989 on: no live view (the build's stdout is a file)
        opts.append("hydra.launcher.progress=none")
    return opts


def dotted(doc: dict, key: str):
    for part in key.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return KeyError
        doc = doc[part]
    return doc


def builtin_pins() -> tuple[list[str], list[str]]:
    """Identity keys whose built-in default differs between COMMIT and the repo this script is in
    (today): pinned to today's value on the command line, so that the same command line names the
    same cell under both versions. Only keys the old code honours or that describe what it did."""
    pins, notes = [], []
    for file, key, override in (("conf/agent/ppo_lag.yaml", "lagrangian.lr", "agent.lagrangian.lr"),
                                ("conf/eval/id_ood.yaml", "episodes", "eval.episodes"),
                                ("conf/sweep.yaml", "trainer.platform", "trainer.platform")):
        if any(o.startswith(override + "=") for o in TINY):
            continue
        old = dotted(yaml.safe_load(text(CODE / file)) or {}, key)
        new = dotted(yaml.safe_load(text(REPO / file)) or {}, key)
        if new is KeyError or old == new:
            continue
        if old is KeyError:  # the key did not exist yet: force-add it (accepted by today's Hydra too)
            pins.append(f"++{override}={new}")
            notes.append(f"{override} did not exist at {SHORT}; `++{override}={new}` adds today's "
                         f"default to the run_config (the old code ignores it; {new} is what ran here)")
        else:
            pins.append(f"{override}={new}")
            notes.append(f"{override}: default {old} at {SHORT}, {new} today; pinned to {new}")
    return pins, notes


PINS, PIN_NOTES = builtin_pins()
LAUNCH = launcher_opts()
SDS = ["python", "-m", "safedreamer_sweep", "-m"]
# steps=60 step_sleep=0: the issue's cells (app,lr=0.01 seed 0 is 15f33050 at 3619e38); step_sleep is
# not part of a cell's identity
APP = ["python", "examples/any_app/app.py", "-m", "hydra/launcher=sds_local", "steps=60", "step_sleep=0"]
RECIPES = {
    "builtin": ([*SDS, "config=v2_baseline", "seed=0", *TINY, *PINS, *LAUNCH], {}),
    "builtin-failed": ([*SDS, "config=v2_u_only", "seed=0", *TINY, *PINS, *LAUNCH,
                        "hydra.launcher.max_attempts=1"], {"SDS_INJECT_FAULT": "node_fault:1"}),
    "external": ([*SDS, "task=external", "config=v2_baseline", "seed=1", "trainer.total_steps=400",
                  "task.probe_every_s=0.5", *LAUNCH], {}),
    "external-failed": ([*SDS, "task=external", "config=v2_baseline", "seed=2", "trainer.total_steps=400",
                         "task.probe_every_s=0.5", "task.vars.fail_at_step=100", *LAUNCH], {}),
    "app": ([*APP, *APP_SWEEP, *LAUNCH], {}),
    "app-failed": ([*APP, "lr=0.5", "seed=2", "fail_at=10", *LAUNCH], {}),  # seed 2: a label+seed of its own
}
has_external = (CODE / "conf/task/external.yaml").is_file() and (CODE / "tests/fake_safedreamer.py").is_file()
has_app = (CODE / "examples/any_app/app.py").is_file()
available = [k for k in RECIPES if (has_external or not k.startswith("external")) and (has_app or not k.startswith("app"))]
kinds = [k.strip() for k in KINDS.split(",") if k.strip()] or available
for k in kinds:
    if k not in available:
        sys.exit(f"kind {k!r} cannot run at {SHORT} (it can run: {', '.join(available)})")

LOGDIR = BASE / "build-logs"
LOGDIR.mkdir(parents=True, exist_ok=True)


def spec_paths() -> set[Path]:
    return set((STORE / "runs").glob("**/spec.json")) if (STORE / "runs").is_dir() else set()


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def config_hash(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]


def root_app_identity(script: str) -> str:
    """Today's app identity (5ebb97c on) of a script run from a git checkout of this repository:
    git:<first root commit, 12 hex>:<path relative to the repo top>."""
    roots = subprocess.run(["git", "-C", str(REPO), "rev-list", "--max-parents=0", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.split()
    return f"git:{min(roots)[:12]}:{script}"


def identity_keys(conf: Path) -> set[str]:
    doc = yaml.safe_load(text(conf)) or {}
    excluded = {k.split(".", 1)[1] for k in
                __import__("re").findall(r'"(task\.[a-z_]+)"', text(REPO / "safedreamer_sweep/core/identity.py"))}
    return {k for k in doc if k not in excluded}


def cell_notes(kind: str, spec: dict) -> list[str]:
    """What a reader of today's code will meet in this cell (facts, not a verdict)."""
    notes = []
    rc = spec.get("run_config")
    notes.append("spec.hash == config_hash(spec.run_config): "
                 + str(rc is not None and spec.get("hash") == config_hash(rc)))
    if "code" not in spec:
        notes.append("spec.json has no `code` (written before c600382: no code fingerprint)")
    if "done_when" not in spec:
        notes.append("spec.json has no `done_when` (written before da1b555: read as \"eval\")")
    if kind.startswith("app") and "app" not in spec and rc is not None:
        app = root_app_identity("examples/any_app/app.py")
        notes.append(f"spec.json has no `app` (before 5ebb97c). Today's code, run from a git checkout of "
                     f"this repo, resolves app={app} and hash "
                     f"{config_hash({'app': app, 'run_config': rc})} = config_hash({{app, run_config}}); "
                     f"before a migration it plans this cell as conflict (differing keys: none)")
    if kind.startswith("external"):
        added = identity_keys(REPO / "conf/task/external.yaml") - identity_keys(CODE / "conf/task/external.yaml")
        if added:
            notes.append("today's conf/task/external.yaml has identity keys this commit's has not: "
                         f"task.{', task.'.join(sorted(added))}; the same command line resolves to "
                         "another run_config today (a config difference, planned as conflict, not a format change)")
        if rc is not None and any(k in (rc.get("task") or {}) for k in ("probe_every_s", "stop_grace_s")):
            notes.append("its hash covers task.probe_every_s/stop_grace_s/stderr_tail_lines (excluded from "
                         "identity since ac4c02c): today's hash definition gives another hash for this run_config")
    return notes


cells, commands = [], []
t_all = time.time()
for kind in kinds:
    argv, extra_env = RECIPES[kind]
    env = {"SDS_STORE": str(STORE), **extra_env}
    before = spec_paths()
    t0 = time.time()
    print(f"[{SHORT}] {kind}: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(argv)}", flush=True)
    with open(LOGDIR / f"{kind}.out", "w") as out:
        try:
            rc = subprocess.run([sys.executable, *argv[1:]], cwd=CODE, env={**os.environ, **env},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    secs = round(time.time() - t0, 1)
    new = sorted(spec_paths() - before)
    print(f"[{SHORT}] {kind}: exit {rc} in {secs}s, {len(new)} new run dir(s); log {LOGDIR / (kind + '.out')}", flush=True)
    commands.append({"kind": kind, "argv": argv, "env": env, "cwd": "<the commit's tree>", "exit": rc,
                     "seconds": secs, "run_dirs": [str(p.parent.relative_to(STORE)) for p in new]})
    for sp in new:
        spec, state = read(sp), read(sp.parent / "state.json")
        attempts = state.get("attempts") or []
        last = attempts[-1] if attempts else {}
        cell = {"kind": kind.split("-")[0], "label": spec.get("config"), "seed": spec.get("seed"),
                "hash": spec.get("hash"), "phase": state.get("phase"),
                "cause": last.get("cause") or last.get("cell_cause"), "attempts": len(attempts),
                "run_dir": str(sp.parent.relative_to(STORE)),
                "command": {"argv": argv, "env": env, "cwd": "the repository root"}}
        if kind.startswith("app"):
            cell["app_script"] = "examples/any_app/app.py"
        cell["notes"] = cell_notes(kind, spec)
        cells.append(cell)

# ---- pack: a stripped copy of the store -------------------------------------------------------
PACK = BASE / "pack"
shutil.rmtree(PACK, ignore_errors=True)
shutil.copytree(STORE, PACK / "store", symlinks=True)
S = PACK / "store"
stripped = []
for name in ("cache", "multirun"):
    if (S / name).exists():
        shutil.rmtree(S / name)
        stripped.append(f"{name}/ (removed)")
for p in sorted(S.rglob("*")):
    if p.is_file() and not p.is_symlink() and (p.suffix in (".out", ".err", ".log") or p.parent.name == "logs"):
        lines = p.read_bytes().splitlines(keepends=True)
        if len(lines) > LOG_LINES:
            st = p.stat()
            p.write_bytes(b"".join(lines[-LOG_LINES:]))
            os.utime(p, (st.st_atime, st.st_mtime))
            stripped.append(f"{p.relative_to(S)}: last {LOG_LINES} of {len(lines)} lines")


def pack() -> int:
    tgz = OUT / "store.tar.gz"
    with open(tgz, "wb") as raw:
        import gzip
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                def norm(ti):
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = ""
                    return ti
                tar.add(S, arcname="store", filter=norm)
    return tgz.stat().st_size


size = pack()
stand_ins, keep = [], None
if size > MAX_KB * 1024:
    # keep the newest checkpoint of one done built-in cell real, and the external script's checkpoints
    # (checkpoint.ckpt, ~8 KB: a resume reads its step); every other file that is still over 4 KB
    # gzipped (other checkpoints, the fake script's replay chunks, submitit's pickled jobs, the report's
    # figures) becomes a stand-in of the same name (a JSON line saying what it replaced)
    for c in cells:
        if c["kind"] == "builtin" and c["phase"] == "done":
            ck = sorted((S / c["run_dir"] / "checkpoints").glob("ckpt_*.pkl"))
            if ck:
                keep = ck[-1]
                break
    import gzip as _gz
    for p in sorted(S.rglob("*")):
        if p.is_file() and not p.is_symlink() and p != keep and p.name != "checkpoint.ckpt" \
                and p.stat().st_size > 4096 and len(_gz.compress(p.read_bytes())) > 4096:
            data = p.read_bytes()
            st = p.stat()
            p.write_text(json.dumps({"stand_in": True, "bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest(),
                                     "why": "issue 29 test data: a stand-in of the same name"}) + "\n")
            os.utime(p, (st.st_atime, st.st_mtime))
            stand_ins.append({"path": str(p.relative_to(S)), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    size = pack()

listing = sorted(str(p.relative_to(S)) + ("/" if p.is_dir() else "") for p in (S / "runs").rglob("*"))
subject = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%cI%x00%s", FULL],
                         capture_output=True, text=True, check=True).stdout.strip().split("\0")
doc = {
    "commit": FULL, "short": SHORT, "commit_date": subject[0], "commit_subject": subject[1],
    "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    "built_with": f"bash scripts/build-old-store.sh {SHORT}" + (f" {KINDS}" if KINDS else "")
                  + (f"  (SDS_APP_SWEEP='{' '.join(APP_SWEEP)}')" if os.environ.get("SDS_APP_SWEEP") else ""),
    "build_env": {"SDS_CODE_VERSION": SHORT, "python": "a side venv: the commit's tree + the project venv's site-packages"},
    "restore": {"root": str(BASE), "store": str(STORE),
                "how": f"mkdir -p {BASE} && tar -xzf store.tar.gz -C {BASE}"},
    "code_dir_at_build": str(CODE),
    "notes": [
        "command.argv[0] 'python' is the interpreter; cwd is the repository root (the commit's tree at build time: "
        f"{CODE}, which is not shipped: absolute paths in the store that point into it, e.g. a sweep manifest's "
        "app_command/cwd or an attempt's hydra.output_dir, dangle after a restore)",
        "env SDS_STORE is the fixed store path; restore the tar there so paths inside the store hold",
        *PIN_NOTES,
    ],
    "cells": cells,
    "commands": commands,
    "stripped": stripped,
    "stand_ins": stand_ins,
    "real_checkpoint_kept": str(keep.relative_to(S)) if keep else "all files are real (no stand-ins)",
    "tar_gz_bytes": size,
    "build_seconds": round(time.time() - t_all, 1),
    "runs_listing": listing,
}
(OUT / "cells.json").write_text(json.dumps(doc, indent=1) + "\n")
print(f"[{SHORT}] {len(cells)} cells, store.tar.gz {size / 1024:.0f} KB -> {OUT}", flush=True)
for c in cells:
    print(f"  {c['kind']:9} {c['label']} seed {c['seed']} [{c['hash']}] {c['phase']} {c['cause'] or ''} ({c['attempts']} attempts)")
PY
