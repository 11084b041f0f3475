"""Overrides Hydra cannot parse get the exact quoted form to type; the app exits 2 before Hydra runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from safedreamer_sweep.core.overrides import (
    OverrideError,
    check_overrides,
    overrides_in_argv,
    shell_word,
    suggest_fix,
)

ROOT = Path(__file__).resolve().parent.parent
SEEDS_NOTES = "wandb.notes=K=4, H=16 (strong)"  # what broke Hydra's parser in the seeds


def shell_to_argv(word: str) -> str:
    """What the shell hands the program for `word` (bash does the unquoting, not us)."""
    return subprocess.run(["bash", "-c", f"printf '%s' {word}"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("override, value", [
    (SEEDS_NOTES, "K=4, H=16 (strong)"),
    ("+wandb.notes=run (a)", "run (a)"),
    ("trainer.tag=it's (x)", "it's (x)"),
    ("trainer.tag=cost$=25 (strict)", "cost$=25 (strict)"),
    ("trainer.tag=both ' and \" =(1)", "both ' and \" =(1)"),
])
def test_unparseable_value_gets_a_fix_that_the_shell_and_hydra_turn_back_into_the_value(override, value):
    with pytest.raises(OverrideError) as e:
        check_overrides([override])
    err = e.value
    assert err.fix and f"Fix: quote the value: {err.fix}" in str(err)
    assert str(err).startswith(f"cannot parse override {override!r}: ")
    typed = shell_to_argv(err.fix)
    parsed = OverridesParser.create().parse_overrides([typed])[0]
    assert parsed.value() == value
    assert parsed.key_or_group == override.split("=", 1)[0].lstrip("+")


def test_seeds_notes_fix_is_readable():
    assert suggest_fix(SEEDS_NOTES) == "\"wandb.notes='K=4, H=16 (strong)'\""


def test_valid_overrides_pass_and_missing_equals_gets_a_hint():
    check_overrides(["seed=0,1,2", "config=v2_full", "+x=1", "wandb.notes='K=4, H=16 (strong)'", "a=b c"])
    with pytest.raises(OverrideError, match="write it as key=value"):
        check_overrides(["seed"])


def test_overrides_in_argv_skips_hydra_flags():
    assert overrides_in_argv(["-m", "seed=1", "--config-name", "sweep", "a=b c"]) == ["seed=1", "a=b c"]
    assert shell_word("seed=1") == "seed=1"


def test_app_entry_rejects_bad_override_before_touching_the_store(tmp_path):
    store = tmp_path / "store"
    out = subprocess.run([sys.executable, "-m", "safedreamer_sweep", f"store.root={store}", SEEDS_NOTES],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: cannot parse override {SEEDS_NOTES!r}: mismatched input '=' expecting "
                                  "<EOF>. Fix: quote the value: \"wandb.notes='K=4, H=16 (strong)'\"")
    assert not store.exists()


def test_the_quoted_form_works_in_the_app(tmp_path):
    """Typed as suggested, the notes reach the composed config intact (`--cfg job` composes only)."""
    typed = shell_to_argv(suggest_fix("+" + SEEDS_NOTES))
    out = subprocess.run([sys.executable, "-m", "safedreamer_sweep", "--cfg", "job", "hydra/launcher=basic",
                          f"store.root={tmp_path / 'store'}", typed], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "notes: K=4, H=16 (strong)" in out.stdout
