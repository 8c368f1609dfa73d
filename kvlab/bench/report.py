"""Result tables: rows of dicts rendered as Markdown, the form docs/benchmarks.md records.

Examples:
    >>> print(markdown_table([{"cache": "paged", "waste": 0.015, "steps": 4044}], {"waste": ".1%"}))
    | cache | waste | steps |
    |---|---|---|
    | paged | 1.5% | 4044 |
"""

from __future__ import annotations


def markdown_table(rows: list[dict], formats: dict[str, str] | None = None, float_format: str = "") -> str:
    """One row per dict (keys of the first row as columns); ``formats`` by column, else
    ``float_format`` for floats."""
    formats = formats or {}
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [format(r[k], formats[k]) if k in formats else
                 format(r[k], float_format) if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
