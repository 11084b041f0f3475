"""Issue 19's any-app scenario, end to end through the sds_local launcher: a 2x2x3 sweep of an app
with its own config groups (`alg=a,b env=x,y seed=0,1,2`), then one of its cells asked alone
(`alg=b env=x seed=2`): it is found by its identity, nothing runs again, and status counts 12 cells."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from safedreamer_sweep.core.store import Store

LOCAL = ["hydra/launcher=sds_local", "hydra.launcher.poll_s=0.3", "hydra.launcher.progress=none",
         "hydra.launcher.max_parallel=2"]


def write_app(root: Path) -> Path:
    """An app that knows nothing of the launcher: config groups alg and env, a seed, and a log of
    every time its task really ran (one line per run)."""
    (root / "conf" / "alg").mkdir(parents=True)
    (root / "conf" / "env").mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text(textwrap.dedent("""\
        defaults:
          - alg: a
          - env: x
          - _self_
        seed: 0
        """))
    for name, lr in (("a", 0.1), ("b", 0.2)):
        (root / "conf" / "alg" / f"{name}.yaml").write_text(f"name: {name}\nlr: {lr}\n")
    for name, size in (("x", 3), ("y", 5)):
        (root / "conf" / "env" / f"{name}.yaml").write_text(f"name: {name}\nsize: {size}\n")
    app = root / "train.py"
    app.write_text(textwrap.dedent(f"""\
        import os

        import hydra

        @hydra.main(version_base="1.3", config_path="conf", config_name="config")
        def main(cfg):
            with open({str(root / "ran.log")!r}, "a") as f:
                f.write(f"{{cfg.alg.name}} {{cfg.env.name}} {{cfg.seed}}\\n")
            if os.path.exists({str(root / "fail.marker")!r}):
                raise RuntimeError("planted failure (fail.marker exists)")
            return cfg.alg.lr * cfg.env.size + cfg.seed

        if __name__ == "__main__":
            main()
        """))
    return app


def run(app: Path, store: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(app), "-m", f"hydra.sweep.dir={store}/multirun/${{now:%H-%M-%S-%f}}", *LOCAL, *args]
    return subprocess.run(cmd, cwd=app.parent, env={**os.environ, "SDS_STORE": str(store)}, capture_output=True,
                          text=True, timeout=600, check=False)


def test_a_cell_of_a_grid_asked_alone_is_not_run_again(tmp_path):
    app, store = write_app(tmp_path), tmp_path / "store"
    grid = run(app, store, "alg=a,b", "env=x,y", "seed=0,1,2")
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    assert len((tmp_path / "ran.log").read_text().splitlines()) == 12
    (stored,) = [rd for rd in Store(store).iter_runs() if rd.read_spec()["config"] == "train,alg=b,env=x"
                 and rd.read_spec()["seed"] == 2]

    alone = run(app, store, "alg=b", "env=x", "seed=2")
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert "plan: 1 cells, 0 to submit | done 1" in alone.stdout, alone.stdout
    assert f"train,alg=b,env=x seed 2 [{stored.path.name}]" in alone.stdout
    assert len((tmp_path / "ran.log").read_text().splitlines()) == 12  # nothing ran again
    assert len(list(Store(store).iter_runs())) == 12
    # the job handed back still has Hydra's job directory in this sweep's dir, naming where it came from
    sweep_dirs = sorted((store / "multirun").iterdir())
    assert len(sweep_dirs) == 2
    job = sweep_dirs[-1] / "0"
    assert all((job / ".hydra" / f).exists() for f in ("config.yaml", "hydra.yaml", "overrides.yaml"))
    assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) == ["alg=b", "env=x", "seed=2"]
    log = (job / "train.log").read_text()
    assert f"handed back from run directory {stored.path}" in log and "nothing ran" in log, log
    # a job the grid ran keeps its own job directory as its cell process left it: not also "handed back"
    ran = sweep_dirs[0] / "0"
    assert (ran / ".hydra" / "config.yaml").exists() and "nothing ran" not in (ran / "train.log").read_text()

    status = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "status", str(store)], capture_output=True,
                            text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})
    assert status.stdout.startswith("DONE 12/12"), status.stdout + status.stderr


def test_a_failed_cell_is_run_again_with_the_flag_its_message_printed(tmp_path):
    """An app without a `sweep` node: the plan's message names hydra.launcher.retry_failed=true (its
    `sweep.retry_failed` does not exist there), and that flag, as printed, runs the cell again."""
    app, store = write_app(tmp_path), tmp_path / "store"
    (tmp_path / "fail.marker").touch()
    failed = run(app, store, "alg=a", "env=y", "seed=1")
    assert failed.returncode != 0 and "planted failure" in (failed.stdout + failed.stderr)
    (tmp_path / "fail.marker").unlink()  # the bug is fixed; the cell's identity is unchanged

    again = run(app, store, "alg=a", "env=y", "seed=1")
    assert again.returncode != 0 and "plan: 1 cells, 0 to submit | failed 1" in again.stdout, again.stdout
    hint = re.search(r"pass (\S+) to run it again", again.stdout)
    assert hint and hint.group(1) == "hydra.launcher.retry_failed=true", again.stdout
    assert "sweep.retry_failed" not in again.stdout

    retried = run(app, store, "alg=a", "env=y", "seed=1", hint.group(1))
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert "retry" in retried.stdout and "1/1 cells done" in retried.stdout
    assert len((tmp_path / "ran.log").read_text().splitlines()) == 2


def test_two_apps_with_one_job_name_and_config_are_two_cells_and_an_edited_script_reruns(tmp_path):
    """One store, two projects that both have `train.py` with the same config: each app's cells are its
    own (the identity names the app: core/app_identity.py). An edit of an app's main script (it
    declares no sds.code, so the script is its code) runs its cells again by default, the old result
    moved to superseded/; hydra.launcher.code_change=accept keeps the finished cells instead."""
    store = tmp_path / "store"
    one, two = write_app(tmp_path / "one"), write_app(tmp_path / "two")
    for app in (one, two):
        p = run(app, store, "alg=a", "env=x", "seed=0")
        assert p.returncode == 0 and "1/1 cells done" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    assert [len((a.parent / "ran.log").read_text().splitlines()) for a in (one, two)] == [1, 1]
    specs = [rd.read_spec() for rd in Store(store).iter_runs()]
    assert len(specs) == 2 and {s["config"] for s in specs} == {"train"}
    assert {s["app"] for s in specs} == {f"path:{one.resolve()}", f"path:{two.resolve()}"}

    # the same app again: done, nothing runs
    again = run(one, store, "alg=a", "env=x", "seed=0")
    assert "done 1" in again.stdout and len((one.parent / "ran.log").read_text().splitlines()) == 1, again.stdout

    # an edited script: the plan says rerun and names the flag that keeps finished cells
    one.write_text(one.read_text().replace("return cfg.alg.lr * cfg.env.size + cfg.seed",
                                           "return 2 * cfg.alg.lr * cfg.env.size + cfg.seed"))
    edited = run(one, store, "alg=a", "env=x", "seed=0")
    assert edited.returncode == 0 and "rerun 1" in edited.stdout, edited.stdout[-3000:] + edited.stderr[-3000:]
    assert "hydra.launcher.code_change=accept" in edited.stdout, edited.stdout
    assert len((one.parent / "ran.log").read_text().splitlines()) == 2
    (rd,) = [r for r in Store(store).iter_runs() if r.read_spec()["app"] == f"path:{one.resolve()}"]
    assert rd.read_result() == 2 * 0.1 * 3 and list((rd.path / "superseded").iterdir())

    # another edit, with the flag: the finished cell is kept and nothing runs
    one.write_text(one.read_text() + "\n# a comment\n")
    kept = run(one, store, "alg=a", "env=x", "seed=0", "hydra.launcher.code_change=accept")
    assert kept.returncode == 0 and "done 1" in kept.stdout, kept.stdout[-3000:] + kept.stderr[-3000:]
    assert len((one.parent / "ran.log").read_text().splitlines()) == 2


def test_an_app_in_git_is_one_app_in_every_clone(tmp_path):
    """Inside git, which app a cell belongs to is the repository's first commit and the script's path in
    it: two clones (two hosts, two paths) are one app; outside git, the absolute path."""
    from safedreamer_sweep.core.app_identity import app_identity

    repo = tmp_path / "repo"
    app = write_app(repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "first"], check=True)
    clone = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    first = subprocess.run(["git", "-C", str(repo), "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert app_identity(str(app)) == app_identity(str(clone / "train.py")) == f"git:{first[:12]}:train.py"
    outside = write_app(tmp_path / "plain")
    assert app_identity(str(outside)) == f"path:{outside}"
