"""`safedreamer-sweep status STORE`: where the sweep stands, with the evidence for every cell.

    evidence.py   what the store, the scheduler and this host say about cells beyond observe_store
    headline.py   the one line on top (DONE 20/20, RUNNING ..., STALLED ..., INCOMPLETE ...)
    document.py   `collect`: the status document, also the `--json` output (docs/status-json.md)
    view.py       `status_view`: the document as rich tables (matrix, evidence, device-hours)
    history.py    one cell in depth: `cell_history` (its attempts) and `cell_view`

The command (commands/cli.py) calls the names re-exported here.
"""

from safedreamer_sweep.commands.status.document import CELL_FIELDS, SCHEMA, StatusError, collect, exit_code
from safedreamer_sweep.commands.status.evidence import DEFAULT_STALL_AFTER_S
from safedreamer_sweep.commands.status.headline import headline
from safedreamer_sweep.commands.status.history import cell_history, cell_view
from safedreamer_sweep.commands.status.view import status_view

__all__ = ["CELL_FIELDS", "DEFAULT_STALL_AFTER_S", "SCHEMA", "StatusError", "cell_history", "cell_view", "collect",
           "exit_code", "headline", "status_view"]
