"""Where the wall time of real SafeDreamer cells goes: per cell and attempt, the compile / train /
eval split, env frames per second, and the frames a kill-and-resume trained twice.

    python bench/safedreamer_costs.py STORE

Reads only what a `task=safedreamer` sweep left in STORE (e.g. the store of
tests/test_safedreamer.py, kept with `pytest --basetemp=DIR`): the attempt logs' command headers
(`=== <time> train attempt N$ ...`, `=== <time> eval id attempt N$ ...`), SafeDreamer's
metrics.jsonl per log dir (its first row times the first `agent.train` call: the JIT compilation
of the train step, plus one step), and state.json's `resumes`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

HEADER = re.compile(r"^=== (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (train|eval id|eval ood) attempt (\d+)\$", re.MULTILINE)


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line.replace("NaN", "null")))
        except json.JSONDecodeError:
            continue
    return rows


def phases(run: Path) -> list[tuple[str, float, float]]:
    """(phase, start, end) in epoch seconds, from the attempt logs' headers; a phase ends where the
    next begins, the last one at its eval result's write time."""
    marks = []
    for log in sorted((run / "logs").glob("attempt_*.out")):
        for m in HEADER.finditer(log.read_text(errors="replace")):
            marks.append((m.group(2), dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()))
    marks.sort(key=lambda x: x[1])
    out = []
    for i, (name, t) in enumerate(marks):
        if i + 1 < len(marks):
            end = marks[i + 1][1]
        else:
            kind = name.split()[-1]
            res = run / "eval" / f"{kind}.json"
            end = res.stat().st_mtime if res.exists() else t
        out.append((name, t, end))
    return out


def compile_s(logdir: Path) -> float | None:
    """The first agent.train call's duration (JIT compilation + one step) in a train log dir."""
    m = logdir / "metrics.jsonl"
    if not m.exists():
        return None
    for r in _rows(m):
        if r.get("timer/agent.train_count"):
            return float(r["timer/agent.train_total"]) / float(r["timer/agent.train_count"])
    return None


def main(store: Path) -> int:
    total_wall = 0.0
    for state_path in sorted(store.glob("runs/*/seed_*/*/state.json")):
        run = state_path.parent
        state = json.loads(state_path.read_text())
        spec = json.loads((run / "spec.json").read_text())
        print(f"{spec['config']} seed {spec['seed']}: trained_steps={state.get('trained_steps')} "
              f"attempts={len(state.get('attempts') or [])}")
        train_dirs = sorted((run / "sd").glob("*_*"))
        resumes = state.get("resumes") or []
        k = 0
        for name, t0, t1 in phases(run):
            wall = t1 - t0
            total_wall += wall
            if name == "train":
                c = compile_s(train_dirs[k]) if k < len(train_dirs) else None
                start = resumes[k - 1]["from_step"] if k >= 1 and k - 1 < len(resumes) else 0
                end = resumes[k]["reached"] if k < len(resumes) else int(state.get("trained_steps") or 0)
                frames = max(0, end - start)
                train = wall - (c or 0.0)
                print(f"  train attempt {k + 1}: wall {wall:6.0f} s = compile+first step {c or float('nan'):5.0f} s "
                      f"+ training {train:5.0f} s; {frames} env frames ({start} -> {end}): "
                      f"{frames / train if train > 0 else float('nan'):.1f} frames/s while training")
                k += 1
            else:
                kind = name.split()[-1]
                env_s = sum(float(r.get("timer/env.step_total") or 0) for d in (run / "external_eval" / kind).glob("*/*")
                            if (d / "metrics.jsonl").exists() for r in _rows(d / "metrics.jsonl"))
                print(f"  {name}: wall {wall:6.0f} s, of which env stepping + rendering {env_s:5.0f} s "
                      f"(the rest: start-up and JIT compilation)")
        for r in resumes:
            print(f"  resume: attempt {r['attempt']} from env step {r['from_step']}, the killed attempt had reached "
                  f"{r['reached']}: {r['lost_frames']} env frames trained again; not restored: {r['not_restored']}")
    print(f"sum of phase wall times over cells: {total_wall:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
