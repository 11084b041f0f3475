"""The shared core: what a cell is (identity), where it lives (store), and checks over specs.

    identity          a cell's identity: the run config, its hash, the cell label, RunSpec
    app_identity      which app a cell belongs to: where its main script is
    code_fingerprint  which code computed a cell: its fingerprint, commit and package versions
    store             the run store: run directories found by identity, sweep manifests, the matrix
    run_dir           one run directory: spec, state, progress, curves, checkpoints, results, fenced writes
    locks             a run directory's two locks, and who holds a busy one (/proc/locks)
    index             the store index: identity hash -> run directory (sqlite, a cache)
    files             atomic file writes, JSON and JSON-lines readers, StoreError
    cell              what a running cell's own code asks: its run directory and a heartbeat
    process           a cell process as its parent sees it: dies with its parent, exit records
    durations         durations and device-hours for people
    overrides         Hydra overrides checked before Hydra parses them, with the quoted fix
    confounds         the configs on the `config` axis differ only in the declared ablation knobs
    schema            the declared type and range of every config key, checked per cell
    launcher_options  every hydra.launcher option: type, default, range, meaning

Importing this package imports none of them (each is imported by name where it is needed).
"""

__all__ = [
    "app_identity",
    "cell",
    "code_fingerprint",
    "confounds",
    "durations",
    "files",
    "identity",
    "index",
    "launcher_options",
    "locks",
    "overrides",
    "process",
    "run_dir",
    "schema",
    "store",
]
