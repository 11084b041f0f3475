"""The `safedreamer-sweep` command: status, watch, doctor, cost, report."""
