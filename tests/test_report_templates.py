"""Templated documents: numbers change, structure does not; unknown placeholders are loud errors
that name the placeholder and the template and write nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from safedreamer_sweep.report import TemplateRenderError, build_report, compute_report
from safedreamer_sweep.report.build import template_context
from safedreamer_sweep.report.render.templates import render_all
from safedreamer_sweep.report.synthetic import write_store

SEEDS = [0, 1, 2, 3, 4]


def store(root):
    # v2_full OOD returns per seed: 20, 21, 22, 23, 24 (mean 22); baseline 10..14 (mean 12).
    def make(base):
        return lambda s: {"id_returns": [base + s + 3], "id_costs": [5.0], "ood_returns": [base + s], "ood_costs": [7.0]}
    return write_store(root, {"v2_baseline": make(10), "v2_full": make(20)}, SEEDS)


def test_placeholders_render_the_current_numbers(tmp_path):
    s = store(tmp_path / "store")
    tpl = tmp_path / "notes.md.j2"
    tpl.write_text("# Notes\n\nOOD return of the full model: {{ main['v2_full'].ood_return }} "
                   "(IQM {{ '%.1f' | format(main['v2_full'].ood_return.iqm) }}, n={{ main['v2_full'].ood_return.n }}, "
                   "CI {{ main['v2_full'].ood_return.ci }}).\n"
                   "Gain: {{ ablation['v2_full'].ood_return.diff }}; P = {{ ablation['v2_full'].ood_return.prob_improvement }}.\n"
                   "Coverage {{ coverage.done }}/{{ coverage.total }}. Decision: {{ decision.headline }}.\n")
    out = build_report(s.root, cfg={"report": {"templates": [str(tpl)]}})
    text = (out / "notes.md").read_text()
    assert text.startswith("# Notes\n\nOOD return of the full model: 22.00 ± 1.58 (IQM 22.0, n=5, CI [")
    assert "Gain: 10.0; P = 1.0." in text
    assert "Coverage 30/30." in text
    assert "Decision: recommended: v2_full." in text
    assert not (out / "slides.md").exists()  # only the templates asked for


def test_shipped_example_template_renders_by_default(tmp_path):
    s = store(tmp_path / "store")
    out = build_report(s.root)
    slides = (out / "slides.md").read_text()
    assert "| v2_full | 25.00 ± 1.58 | 5.00 ± 0.00 | 22.00 ± 1.58 | 7.00 ± 0.00 | 5 |" in slides
    assert "**recommended: v2_full**" in slides


def test_unknown_placeholder_is_an_error_naming_it_and_nothing_is_written(tmp_path):
    s = store(tmp_path / "store")
    good = tmp_path / "good.md.j2"
    good.write_text("{{ main['v2_full'].id_return }}\n")
    bad = tmp_path / "bad.md.j2"
    bad.write_text("line one\n{{ main['v2_full'].ood_retrun }}\n")
    with pytest.raises(TemplateRenderError) as e:
        build_report(s.root, cfg={"report": {"templates": [str(good), str(bad)]}})
    msg = str(e.value)
    assert "ood_retrun" in msg and str(bad) in msg and "line 2" in msg and "nothing was written" in msg
    assert not (s.root / "report").exists()
    # An unknown config is named too.
    r = compute_report(s.root)
    bad.write_text("{{ main['v2_fulll'].ood_return }}")
    with pytest.raises(TemplateRenderError, match="v2_fulll"):
        render_all([str(bad)], template_context(r))
    with pytest.raises(TemplateRenderError, match="not found"):
        render_all([str(tmp_path / "missing.md.j2")], template_context(r))


def test_cli_exits_non_zero_on_a_bad_template_and_keeps_the_old_report(tmp_path):
    s = store(tmp_path / "store")
    out = build_report(s.root)
    before = (out / "decision.md").read_bytes()
    bad = tmp_path / "bad.md.j2"
    bad.write_text("{{ nope }}")
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"report:\n  templates: [{bad}]\n")
    p = subprocess.run([sys.executable, "-m", "safedreamer_sweep.report", str(s.root), "--config", str(conf)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2
    assert "'nope' is undefined" in p.stderr and str(bad) in p.stderr
    assert (out / "decision.md").read_bytes() == before
    p = subprocess.run([sys.executable, "-m", "safedreamer_sweep.report", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2 and "no such directory" in p.stderr
