"""The external adapter's two errors: a wrong task config, and a script that failed."""

from __future__ import annotations


class ExternalTaskError(RuntimeError):
    """The task config is wrong (caught before anything runs) or the script failed."""


class ExternalCommandFailed(ExternalTaskError):
    """The script exited nonzero; the message carries its exit code and stderr tail."""
