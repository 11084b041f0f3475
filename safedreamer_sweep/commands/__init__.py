"""The `safedreamer-sweep` command: status, watch, doctor, report, confounds.

    cli.py      the argument parser and one function per subcommand (the console script's `main`)
    status/     `status` and `watch`: where every cell stands, with evidence (a package, see its __init__)
    doctor.py   `doctor`: preflight checks before a sweep, saved into the store as a manifest
"""

__all__ = ["cli", "doctor", "status"]
