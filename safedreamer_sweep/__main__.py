"""`python -m safedreamer_sweep [-m] config=... seed=...`: the Hydra app.

With -m, the sds launcher plans the matrix against the store, skips finished cells, and runs the
rest; without -m, one cell runs in this process. `python -m safedreamer_sweep status STORE` (or
watch, doctor, report, confounds) is the console script `safedreamer-sweep`.
"""

import hydra
from omegaconf import DictConfig

from safedreamer_sweep.tasks.run import run_cell


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig):
    return run_cell(cfg)


if __name__ == "__main__":
    import sys

    from safedreamer_sweep.commands.cli import COMMANDS

    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        # `python -m safedreamer_sweep status STORE` is the console script `safedreamer-sweep status
        # STORE` (a bare word is never a Hydra override, so nothing is shadowed).
        from safedreamer_sweep.commands.cli import main as cli_main

        sys.exit(cli_main(sys.argv[1:]))
    # Reject unparseable overrides (e.g. a value with `=` or parentheses) with the quoted form to
    # type, before Hydra runs and before anything touches the store.
    from safedreamer_sweep.core.overrides import exit_on_bad_overrides

    exit_on_bad_overrides()
    main()
