"""report.html in a real headless browser (Debian's chromium over the DevTools protocol,
tests/browser.py): the page loads from file:// with no console error and no request beyond
itself, every figure decodes, the coverage matrix shows a planted hole on the first screen, and a
screenshot at laptop width is saved as a test artefact ($SDS_TEST_ARTIFACTS, else test-artifacts/).

Stores are written through the store API (report/synthetic.py; an app's cells as the callback
records them), not by training. Without chromium the tests skip, unless SDS_REQUIRE_BROWSER=1
(CI), where a missing browser is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import Browser, chromium_path

from safedreamer_sweep.core.store import Store
from safedreamer_sweep.report import build_report
from safedreamer_sweep.report.build import build_app_report
from safedreamer_sweep.report.synthetic import write_store

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SDS_TEST_ARTIFACTS") or ROOT / "test-artifacts")
LAPTOP = (1366, 768)
LOG_LINE = "step 4096: loss nan, stopping (planted log line)"

if chromium_path() is None:
    if os.environ.get("SDS_REQUIRE_BROWSER") == "1":
        raise RuntimeError("SDS_REQUIRE_BROWSER=1 but chromium is not installed. Fix: apt-get install -y chromium "
                           "(scripts/test.sh does it when run as root).")
    pytest.skip("chromium is not installed (apt-get install -y chromium; scripts/test.sh does it as root)",
                allow_module_level=True)


def _cell(ret: float, cost: float):
    def make(seed: int) -> dict:
        r = ret + seed
        return {"id_returns": [r - 0.5, r + 0.5], "id_costs": [cost, cost], "ood_returns": [r - 3, r - 3],
                "ood_costs": [cost + 2, cost + 2]}
    return make


def _cert_only(seed: int) -> dict | None:
    if seed == 1:
        return None  # the planted hole: asked for by the manifest, never run
    kw = _cell(10, 10)(seed)
    if seed == 2:
        kw.update(phase="failed", evals=(), trained=False)  # a failure with a cause and evidence
    return kw


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html") / "store"
    store = write_store(root, {"v2_baseline": _cell(10, 15), "v2_full": _cell(30, 5), "v2_u_only": _cell(12, 40),
                               "v2_cert_only": _cert_only}, [0, 1, 2, 3, 4])
    (failed,) = [rd for rd in store.iter_runs() if rd.read_state().get("phase") == "failed"]
    failed.logs_dir.mkdir(parents=True, exist_ok=True)
    (failed.logs_dir / "attempt_1.log").write_text("".join(f"line {i}\n" for i in range(200)) + LOG_LINE + "\n")
    return build_report(store.root)


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


def _only_itself(page_file: Path, requests: list[str]) -> list[str]:
    """The requests other than the page itself (data: URIs are inside the file, not requests out)."""
    return [u for u in requests if u != page_file.resolve().as_uri() and not u.startswith("data:")]


def test_the_page_loads_alone_and_every_figure_renders(report_dir, browser):
    page_file = report_dir / "report.html"
    page = browser.open(page_file, *LAPTOP)
    assert _only_itself(page_file, page.requests) == [], page.requests
    assert page.requests[:1] == [page_file.resolve().as_uri()]
    errors = [m for m in page.console if m["level"] in ("error", "warning")]
    assert errors == [], errors
    images = page.evaluate("Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight,"
                           " i.getBoundingClientRect().width])")
    assert {i[0] for i in images} == {"fig-learning_curves", "fig-per_seed", "fig-id_ood"}, images
    for name, complete, w, h, shown_w in images:
        assert complete and w > 400 and h > 200 and shown_w > 300, (name, w, h, shown_w)  # decoded and laid out
    shot = page.screenshot(ARTIFACTS / "report_html_1366x768.png")
    page.screenshot(ARTIFACTS / "report_html_full.png", full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshots: {shot} and {ARTIFACTS / 'report_html_full.png'}")


def test_the_first_screen_shows_the_decision_and_the_planted_hole(report_dir, browser):
    page = browser.open(report_dir / "report.html", *LAPTOP)
    lead = page.evaluate("document.querySelector('#decision .big').textContent")
    assert lead == "Decision: inconclusive"
    hole = page.evaluate("""(() => {
        const a = document.querySelector('#coverage-matrix a[href="#cell-v2_cert_only-1"]');
        const td = a.closest('td'), r = td.getBoundingClientRect();
        return {cls: td.className, title: td.title, bottom: r.bottom, width: r.width,
                outline: getComputedStyle(td).outlineColor,
                parts: Array.from(a.querySelectorAll('.part')).map(p => [p.dataset.part, p.dataset.status])};
    })()""")
    assert hole["cls"] == "hole" and hole["outline"] == "rgb(183, 28, 28)"
    assert hole["parts"] == [["train", "missing"], ["id", "missing"], ["ood", "missing"]]
    assert 0 < hole["bottom"] <= LAPTOP[1] and hole["width"] > 0  # on the first screen, no scrolling
    failed = page.evaluate("document.querySelector('#coverage-matrix a[href=\"#cell-v2_cert_only-2\"]').closest('td').title")
    assert "failed" in failed and "RuntimeError: synthetic failure" in failed  # the cause on hover
    complete = page.evaluate("document.querySelectorAll('#coverage-matrix td.full').length")
    assert complete == 18  # 4 configs x 5 seeds, less the two holes
    # The holes table names each part's cause; the failed cell's drill-down is open, with its log tail.
    drill = page.evaluate("""(() => { const d = document.getElementById('cell-v2_cert_only-2');
        return {open: d.open, text: d.innerText}; })()""")
    assert drill["open"] and LOG_LINE in drill["text"] and "RuntimeError: synthetic failure" in drill["text"]
    assert "line 150" not in drill["text"]  # a tail, not the whole log
    assert not page.evaluate("document.getElementById('cell-v2_full-0').open")  # complete cells stay closed


def test_the_page_has_every_section_and_tables_with_one_note(report_dir):
    html = (report_dir / "report.html").read_text()
    order = [html.index(f'id="{s}"') for s in ("decision", "coverage", "verdicts", "warnings", "main-results",
                                               "ablation", "figures", "flips", "cost", "cells")]
    assert order == sorted(order)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # One note per table, not a caveat per cell: v2_cert_only's 3 seeds get intervals, so no note here.
    assert html.count("Cells without brackets have no interval") == 0
    assert "12.3 [7.16, 17.5]" in html  # number [interval] in the cell, n in its own column


def _app_store(root: Path) -> Store:
    """An app's sweep as the callback records it: three labels x two seeds returning a dict, one failing."""
    store = Store(root)
    for i, lr in enumerate((0.01, 0.05, 0.1)):
        for seed in (0, 1):
            rd = store.run_dir(f"lr={lr}", seed, f"{i:02d}{seed:02d}abcd")
            rd.ensure_spec({"config": f"lr={lr}", "seed": seed, "hash": f"{i:02d}{seed:02d}abcd", "done_when": "return",
                            "overrides": [f"lr={lr}"]})
            rd.begin_attempt(launcher="basic")
            if lr == 0.1 and seed == 1:
                rd.end_attempt("failed", cause="error", evidence="RuntimeError: planted failure at step 20",
                               traceback_tail="Traceback ...\nRuntimeError: planted failure at step 20\n")
                rd.set_phase("failed")
                continue
            rd.write_result({"loss": 1.0 / (1 + 10 * lr) + 0.01 * seed, "steps": 200})
            rd.end_attempt("done")
            rd.set_phase("done")
    return store


def test_an_apps_page_shows_its_results_and_a_figure_of_them(tmp_path, browser):
    store = _app_store(tmp_path / "store")
    out = build_app_report(store.root)
    assert {p.name for p in out.iterdir()} == {"results.csv", "results.md", "results.png", "report.html"}
    page = browser.open(out / "report.html", *LAPTOP)
    assert _only_itself(out / "report.html", page.requests) == []
    assert [m for m in page.console if m["level"] in ("error", "warning")] == []
    img = page.evaluate("(() => { const i = document.getElementById('fig-returns'); "
                        "return [i.complete, i.naturalWidth, i.naturalHeight]; })()")
    assert img[0] and img[1] > 400 and img[2] > 200
    body = page.evaluate("document.body.innerText")
    assert "5 of 6 cells done" in body and "RuntimeError: planted failure at step 20" in body
    assert "value.loss" in body and "lr=0.05" in body
    page.screenshot(ARTIFACTS / "report_html_app_1366x768.png")
