"""`python -m safedreamer_sweep [-m] config=... seed=...`: the Hydra app.

With -m, the sds launcher plans the matrix against the store, skips finished cells, and runs the
rest; without -m, one cell runs in this process.
"""

import hydra
from omegaconf import DictConfig

from safedreamer_sweep.tasks.run import run_cell


@hydra.main(version_base="1.3", config_path="../conf", config_name="sweep")
def main(cfg: DictConfig):
    return run_cell(cfg)


if __name__ == "__main__":
    # Reject unparseable overrides (e.g. a value with `=` or parentheses) with the quoted form to
    # type, before Hydra runs and before anything touches the store.
    from safedreamer_sweep.core.overrides import exit_on_bad_overrides

    exit_on_bad_overrides()
    main()
