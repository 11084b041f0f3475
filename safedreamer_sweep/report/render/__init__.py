"""The outputs, from a computed Report: text tables, decision.md, figures, the user's templates and
the self-contained HTML page.

    text.py       table cells (number, interval, n) and Markdown / LaTeX tables, caveats said once
    document.py   decision.md: coverage first, caveats before results
    figures.py    learning curves, ID vs OOD, per-seed lines, coverage heatmap, app returns (PNG)
    templates.py  the user's Jinja2 Markdown templates filled with the numbers
    html.py       report.html: one file, figures embedded, opens from disk (report.html.j2)
    studies.py    a study's section as text (decision.md and report.html lay it out)
"""

__all__ = ["document", "figures", "html", "studies", "templates", "text"]
