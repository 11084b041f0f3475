"""`safedreamer-sweep`: the commands a researcher runs around a sweep.

    safedreamer-sweep status STORE [--json]      where every cell stands, with evidence (exit 0 = all done)
    safedreamer-sweep watch STORE                live status that also supervises detached sweeps
    safedreamer-sweep doctor [--store DIR] [--launcher sds_local|sds_slurm] [overrides...]
    safedreamer-sweep report STORE [--out DIR]   tables, figures and the decision report
    safedreamer-sweep confounds [overrides...]   do the configs differ only in the ablation knobs?
    safedreamer-sweep migrate STORE [--app-script PATH]   bring an older store forward (sweeps do it themselves)

The sweep itself is launched through Hydra: `python -m safedreamer_sweep -m config=... seed=...`.
Exit codes: 0 success / all done, 1 not done or a check failed, 2 bad input (missing store, bad
arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _console(width: int | None = None):
    from rich.console import Console

    c = Console()
    # Piped or captured output: rich would wrap at 80 columns and fold the evidence table.
    if width or not c.is_terminal:
        c = Console(width=width or 200)
    return c


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- status / watch


def _cmd_status(args: argparse.Namespace) -> int:
    from safedreamer_sweep.commands import status
    from safedreamer_sweep.core.files import StoreError

    try:
        doc = status.collect(args.store, stall_after=args.stall_after, per_gpu_hour=args.per_gpu_hour,
                             currency=args.currency)
    except (status.StatusError, StoreError) as e:
        return _err(str(e))
    if args.cell:
        config, _, seed = args.cell.rpartition(":")
        try:
            hist = status.cell_history(doc, config, int(seed))
        except (KeyError, ValueError) as e:
            return _err(f"--cell {args.cell!r}: {e.args[0] if isinstance(e, KeyError) else 'expected CONFIG:SEED'}")
        if args.json:
            json.dump(hist, sys.stdout, indent=2, sort_keys=True, default=str)
            sys.stdout.write("\n")
        else:
            _console(args.width).print(status.cell_view(hist))
        return 0 if hist["cell"]["phase"] in ("done", "pruned") else 1  # pruned: stopped on purpose, as `finished`
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        _console(args.width).print(status.status_view(doc))
    return status.exit_code(doc)


def _cmd_watch(args: argparse.Namespace) -> int:
    """Reattach: supervise the store's detached sweeps (sweep/watch.py) while a rich Live view
    redraws the status; keeps drawing until no cell runs (another process may be supervising)."""
    from rich.live import Live

    from safedreamer_sweep.commands import status

    def view():
        doc = status.collect(args.store, stall_after=args.stall_after)
        return doc, status.status_view(doc)

    try:
        doc, renderable = view()
    except status.StatusError as e:
        return _err(str(e))
    console = _console(args.width)
    code = None
    with Live(renderable, console=console, refresh_per_second=1, transient=False) as live:
        def on_tick(*_a, **_k) -> None:
            nonlocal doc
            doc, r = view()
            live.update(r)

        try:
            from safedreamer_sweep.sweep import watch
        except ImportError:
            watch = None  # type: ignore[assignment]
            console.log("sweep/watch.py is not available: showing status only")
        try:
            if watch is not None:
                code = watch.watch(args.store, on_tick=on_tick, poll_s=args.poll)
            on_tick()
            # Cells still moving under a foreground sweep in another terminal: keep showing them.
            while any(c["phase"] in ("running", "stalled") or c.get("last_outcome") == "submitted"
                      for c in doc["cells"]):
                time.sleep(args.poll)
                on_tick()
        except KeyboardInterrupt:
            console.print("[dim]watch stopped (the cells keep running; `safedreamer-sweep watch` reattaches)[/dim]")
    return status.exit_code(doc) if code is None else (0 if code == 0 and status.exit_code(doc) == 0 else 1)


# ----------------------------------------------------------------------------- doctor


def _cmd_doctor(args: argparse.Namespace) -> int:
    from safedreamer_sweep.commands import doctor
    from safedreamer_sweep.core.overrides import OverrideError, check_overrides

    try:
        check_overrides(args.overrides)
    except OverrideError as e:
        return _err(str(e))
    doc = doctor.run_doctor(args.store, launcher=args.launcher, overrides=args.overrides)
    console = _console(args.width)
    console.print(doctor.doctor_view(doc))
    try:
        paths = doctor.save_manifest(doc)
        console.print(f"manifest: {paths[0]} (and {paths[1].name})")
    except OSError as e:
        console.print(f"[bold red]manifest not saved: {doc['store']} is not writable ({e})[/bold red]")
        if args.json:
            print(json.dumps(doc, indent=2, default=str))
        return 1
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    return 0 if doc["ok"] else 1


# ----------------------------------------------------------------------------- report / confounds


def _cmd_report(args: argparse.Namespace) -> int:
    root = Path(args.store).expanduser()
    if not root.is_dir():
        return _err(f"{root}: no such store directory. Fix: pass the store.root of your sweep.")
    from safedreamer_sweep.core.files import StoreError
    from safedreamer_sweep.report import (
        NotAStoreError,
        TemplateRenderError,
    )
    from safedreamer_sweep.report.build import (
        build_app_report,
        cell_kinds,
        compute_report,
        render_artifacts,
        write_artifacts,
    )

    try:
        kinds = cell_kinds(root)
        if kinds == {"return"}:  # an app's sweep: its results table and page
            app_out = build_app_report(root, args.out)
            print(f"report: {app_out / 'report.html'}" if app_out else f"report: {root}: no cell of an app yet")
            return 0
        r = compute_report(root)
        out = write_artifacts(r, render_artifacts(r), args.out)
        if "return" in kinds:
            build_app_report(root, out, page=False)
    except (NotAStoreError, TemplateRenderError, StoreError, NotADirectoryError, ValueError) as e:
        return _err(str(e))
    print(f"report: {out / 'report.html'} (and decision.md, tables and figures in {out})")
    if r.frames.corrupt:
        # The report is written (it leads with these holes), but the store needs attention.
        for line in r.frames.corrupt:
            print(f"error: corrupt store file: {line}", file=sys.stderr)
        return 1
    return 0


def _cmd_confounds(args: argparse.Namespace) -> int:
    from safedreamer_sweep.core.confounds import (
        find_confounds,
        format_confounds,
        specs_for_overrides,
    )
    from safedreamer_sweep.core.overrides import OverrideError, check_overrides

    try:
        check_overrides(args.overrides)
    except OverrideError as e:
        return _err(str(e))
    conf_dir = str(Path(args.conf_dir).resolve()) if args.conf_dir else str(Path(__file__).resolve().parents[2] / "conf")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        specs = specs_for_overrides(conf_dir, args.overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        return _err(f"{e}\nFix: check the config names in conf/config/ and the override spelling.")
    knobs = args.knobs if args.knobs is not None else _ablation_knobs(conf_dir, args.overrides)
    configs = list(dict.fromkeys(s.config for s in specs))
    found = find_confounds(specs, knobs)
    if not found:
        print(f"no confounds: {', '.join(configs)} differ only in the ablation knobs ({', '.join(knobs) or 'none'})")
        return 0
    print(f"CONFOUNDED: {len(found)} key(s) differ between {', '.join(configs)} and are not ablation knobs "
          f"({', '.join(knobs) or 'none declared'}):\n{format_confounds(found)}\n"
          f"Fix: add each key to sweep.ablation_knobs or make the configs agree on it.")
    return 1


def _ablation_knobs(conf_dir: str, overrides: Sequence[str]) -> list[str]:
    from hydra import compose, initialize_config_dir

    fixed = [o for o in overrides if "," not in o.split("=", 1)[-1]] + ["hydra/launcher=basic"]
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=fixed)
    return [str(k) for k in (cfg.get("sweep", {}).get("ablation_knobs") or [])]


# ----------------------------------------------------------------------------- entry


def _default_store() -> str:
    """Where conf/sweep.yaml puts the store by default: $SDS_STORE, else ./experiments."""
    return os.environ.get("SDS_STORE") or "experiments"


# The subcommands; `python -m safedreamer_sweep WORD ...` hands these words to this CLI (__main__.py).
def _cmd_migrate(args: argparse.Namespace) -> int:
    from safedreamer_sweep.commands.status.evidence import stall_after_from
    from safedreamer_sweep.core.app_identity import app_identity
    from safedreamer_sweep.core.files import StoreError
    from safedreamer_sweep.core.migrations import migrate
    from safedreamer_sweep.core.store import Store
    from safedreamer_sweep.core.store_format import read_format
    from safedreamer_sweep.sweep.claim import live_holder

    root = Path(args.store).expanduser().resolve()
    script = Path(args.app_script).expanduser().resolve() if args.app_script else None
    if script is not None and not script.is_file():
        return _err(f"--app-script {args.app_script}: no such file. Fix: name the app's main script (python SCRIPT -m ...)")
    try:
        if not root.is_dir() or read_format(root) is None:
            return _err(f"{root}: no store there (no runs/, sweeps/ or store.json). Fix: name the store.root of a sweep")
        stall_after = stall_after_from(Store(root))  # what `status` calls stalled here
        done = migrate(root, held=lambda rd: live_holder(rd, stall_after=stall_after), app=app_identity(str(script)) if script else None,
                       app_label=script.stem if script else None)
    except StoreError as e:
        return _err(str(e))
    print(f"{root}: " + (done.line() if done is not None else "store format is this version's; nothing to migrate"))
    return 0


COMMANDS = ("status", "watch", "doctor", "report", "confounds", "migrate")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safedreamer-sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("status", help="where every cell stands, with evidence (exit 0 when all done)")
    s.add_argument("store", nargs="?", default=_default_store(), help="the sweep's store.root (default: $SDS_STORE, else ./experiments)")
    s.add_argument("--cell", metavar="CONFIG:SEED", default=None,
                   help="one cell in depth: every attempt, its cause and evidence, hours, traceback tail, logs")
    s.add_argument("--json", action="store_true", help="the stable JSON document (docs/status-json.md)")
    s.add_argument("--stall-after", type=float, default=None,
                   help="seconds without env-step progress before a live cell is `stalled` "
                        "(default: the sweep manifest's launcher.stall_after, else 600)")
    s.add_argument("--per-gpu-hour", type=float, default=None, help="price one GPU-hour (cost.per_gpu_hour)")
    s.add_argument("--currency", default=None, help="currency of --per-gpu-hour (cost.currency)")
    s.add_argument("--width", type=int, default=None, help="console width (default: terminal, else 200)")
    s.set_defaults(func=_cmd_status)

    w = sub.add_parser("watch", help="live status that also supervises detached sweeps")
    w.add_argument("store", nargs="?", default=_default_store())
    w.add_argument("--poll", type=float, default=5.0, help="seconds between polls")
    w.add_argument("--stall-after", type=float, default=None)
    w.add_argument("--width", type=int, default=None)
    w.set_defaults(func=_cmd_watch)

    d = sub.add_parser("doctor", help="preflight checks, saved into the store as a manifest")
    d.add_argument("--store", default=None, help="store root (default: store.root of the config)")
    d.add_argument("--launcher", choices=("sds_local", "sds_slurm"), default=None,
                   help="which launcher to check for (default: the config's hydra/launcher)")
    d.add_argument("--json", action="store_true", help="also print the manifest as JSON")
    d.add_argument("--width", type=int, default=None)
    d.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep, e.g. store.root=/data/exp")
    d.set_defaults(func=_cmd_doctor)

    r = sub.add_parser("report", help="build tables, figures and the decision report from the store")
    r.add_argument("store")
    r.add_argument("--out", default=None, help="output directory (default: <store>/report)")
    r.set_defaults(func=_cmd_report)

    c = sub.add_parser("confounds", help="check that the configs differ only in the ablation knobs")
    c.add_argument("overrides", nargs="*", help="the sweep's overrides, e.g. config=v2_baseline,v2_full")
    c.add_argument("--knobs", nargs="*", default=None, help="ablation knobs (default: sweep.ablation_knobs)")
    c.add_argument("--conf-dir", default=None, help="config directory (default: the package's conf/)")
    c.set_defaults(func=_cmd_confounds)
    m = sub.add_parser("migrate", help="bring a store written by an older version forward (sweeps do it on their own)")
    m.add_argument("store")
    m.add_argument("--app-script", default=None, metavar="PATH",
                   help="the main script of an app whose cells the store holds from before apps were told apart "
                        "(its job name is the script's stem); without it they migrate when that app's sweep runs")
    m.set_defaults(func=_cmd_migrate)
    assert tuple(sub.choices) == COMMANDS, f"COMMANDS {COMMANDS} != the subcommands {tuple(sub.choices)}"
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (and exits with it when run as a script)."""
    args = _build_parser().parse_args(argv)
    code = int(args.func(args) or 0)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
