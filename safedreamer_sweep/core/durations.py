"""Durations and device-hours as a person reads them at a glance: one formatter for the live view,
`status`, the report and the cost section."""

from __future__ import annotations

__all__ = ["format_duration", "format_hours"]


def format_duration(seconds: float | None) -> str:
    """14 min, 45 s, 2.1 h, 3.0 d: what a human reads at a glance (`?` when unknown)."""
    if seconds is None:
        return "?"
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def format_hours(h: float) -> str:
    """1.234 -> '1.23'; small values with four decimals so a short run does not read as 0.00."""
    if h == 0:
        return "0"
    if h < 0.0001:
        return "<0.0001"
    if h < 0.1:
        return f"{h:.4f}"
    return f"{h:.2f}"
