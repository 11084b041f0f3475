"""Run a JAX training script with JAX's persistent compilation cache on: `python jit_cache_launch.py
SCRIPT ARGS...` runs SCRIPT as `__main__` after pointing JAX at the cache directory in $SDS_JIT_CACHE
(unset or empty: no cache, the script runs as it would alone).

Standalone on purpose: it runs under the script's own interpreter (SafeDreamer's venv, JAX 0.4.13),
which does not have this package, so it imports nothing but the standard library and JAX. A
SafeDreamer process otherwise spends minutes compiling the same XLA programs that every other cell
of the sweep compiles too (docs/safedreamer.md has the measured saving).

JAX 0.4.13 caches only on GPU/TPU unless XLA's CPU runtime is on (`--xla_cpu_use_xla_runtime=true`,
jax/_src/dispatch.py), and has no config key for the directory (`initialize_cache`); newer JAX has
`jax_compilation_cache_dir`. Both are handled.
"""

from __future__ import annotations

import os
import runpy
import sys


def _enable_cache(path: str) -> None:
    """Point JAX's persistent compilation cache at `path` (created if missing)."""
    os.makedirs(path, exist_ok=True)
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_use_xla_runtime" not in flags:  # before the CPU backend starts
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_use_xla_runtime=true".strip()
    import jax

    try:
        jax.config.update("jax_compilation_cache_dir", path)
    except AttributeError:  # JAX < 0.4.16: no such config key
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.initialize_cache(path)
    try:  # cache every program, not only those that took over a second to compile
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except AttributeError:
        pass


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python jit_cache_launch.py SCRIPT [ARGS...]  (cache directory in $SDS_JIT_CACHE)")
    cache = os.environ.get("SDS_JIT_CACHE", "")
    if cache:
        _enable_cache(cache)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` would
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
