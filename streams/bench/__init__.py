"""Benchmarks: `leadstream bench NAME` runs streams/bench/NAME.py (sinks: sinks/bench.py)."""

from __future__ import annotations

from typing import Any, Mapping

import orjson


def print_figures(figures: Mapping[str, Any], as_json: bool) -> None:
    """One JSON object (`--json`), or one aligned `name value` line per figure."""
    if as_json:
        print(orjson.dumps(dict(figures)).decode())
        return
    for key, value in figures.items():
        print(f"{key:28} {value}")
