"""`python -m safedreamer_sweep.report STORE [--out DIR] [--config conf/sweep.yaml]`: write the report.

Exit 0 with the output directory printed; exit 2 with a one-paragraph error (what, why, fix) on a
path that is not a store, a bad template or a bad `report:` setting. Nothing is written on error.
"""

from __future__ import annotations

import argparse
import sys

from safedreamer_sweep.core.files import StoreError
from safedreamer_sweep.report import NotAStoreError, TemplateRenderError, build_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m safedreamer_sweep.report", description=__doc__.splitlines()[0])
    ap.add_argument("store", help="the store root (store.root of the sweep)")
    ap.add_argument("--out", default=None, help="output directory (default: report.out, else STORE/report)")
    ap.add_argument("--config", default=None,
                    help="a YAML file with report:/cost:/sweep: blocks (e.g. conf/sweep.yaml); default: built-in")
    args = ap.parse_args(argv)
    cfg = None
    if args.config:
        from omegaconf import DictConfig, OmegaConf

        # Only our blocks: sweep.yaml's other keys interpolate Hydra state that does not exist here.
        raw = OmegaConf.load(args.config)
        if not isinstance(raw, DictConfig):
            print(f"error: {args.config}: not a YAML mapping with report:/cost:/sweep: blocks", file=sys.stderr)
            return 2
        cfg = {k: OmegaConf.to_container(raw[k], resolve=False) for k in ("report", "cost", "sweep") if k in raw}
    try:
        out = build_report(args.store, out=args.out, cfg=cfg)
    except (NotAStoreError, TemplateRenderError, StoreError, ValueError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
