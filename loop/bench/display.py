"""How the bench commands print numbers and metric summaries."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """Rich table of a `metrics.summarize` result.

    Args:
        summary: Output of `metrics.summarize`.
        title: Table title.

    Returns:
        A two-column (metric, value) table.
    """
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, fmt(value))
    return table


def fmt(value: Any) -> str:
    """Short text for a summary value."""
    if value is None:
        return "not reached"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)
