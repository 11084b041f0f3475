"""`sweep.on_complete`: shell commands run once when every cell of the sweep is terminal (e.g.
`shutdown -h now` on a rented box). Never while anything runs, never on a dry run, never twice for
the same sweep (a marker in the sweep manifest records that they ran)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence

from safedreamer_sweep.core.files import read_json
from safedreamer_sweep.core.store import Store


def run_on_complete(commands: Sequence[str], *, store: Store, sweep_id: str, all_terminal: bool,
                    dry_run: bool = False, env: dict | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Run each command in order through the shell; returns [{cmd, returncode, seconds}] (empty when
    nothing ran and why is logged). A failing command is reported, not raised: the sweep's own
    result must not depend on a hook."""
    commands = [str(c) for c in (commands or []) if str(c).strip()]
    if not commands:
        return []
    if dry_run:
        log(f"[hooks] dry run: on_complete not run ({len(commands)} command(s))")
        return []
    if not all_terminal:
        log("[hooks] on_complete not run: some cells are still running or queued")
        return []
    path = store.sweeps_dir / f"{sweep_id}.json"
    doc = read_json(path) or {}
    if doc.get("on_complete_ran_at"):
        log(f"[hooks] on_complete already ran for sweep {sweep_id}")
        return []
    results = []
    for cmd in commands:
        t0 = time.time()
        log(f"[hooks] on_complete: {cmd}")
        p = subprocess.run(cmd, shell=True, env=env, check=False)  # the user's own commands
        results.append({"cmd": cmd, "returncode": p.returncode, "seconds": round(time.time() - t0, 2)})
        if p.returncode != 0:
            log(f"[hooks] on_complete command failed (exit {p.returncode}): {cmd}")
    if doc:
        store.write_sweep_manifest(sweep_id, {**{k: v for k, v in doc.items() if k != "id"},
                                              "on_complete_ran_at": time.time(), "on_complete": results})
    return results
