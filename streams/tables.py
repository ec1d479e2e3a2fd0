"""Tables as the command line prints them (`leadstream score --table`, `review --table`,
`models`, `top`): left-aligned columns, and points written in full."""

from __future__ import annotations


def columns(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join(lines) + "\n"


def points(value: float, signed: bool = False) -> str:
    """Points as a table shows them: in full, as the JSON output carries them (`:g` keeps six
    digits, so an account's 2,500,001 points would show as 2.5e+06)."""
    return f"{value:+.15g}" if signed else f"{value:.15g}"
