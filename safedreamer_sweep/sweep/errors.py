"""The sweep's refusal to plan: PlanError, raised before anything is written to the store."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class PlanError(CompactHydraException):
    """The sweep cannot be planned as asked (conflict, confound, bad config). Names the fix. A
    CompactHydraException: raised through Hydra, it prints as its message alone (no traceback), exit 1."""
