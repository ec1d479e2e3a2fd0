"""Reading the JSON-lines files users hand to `leadstream score` and `leadstream send`."""

from __future__ import annotations

from typing import IO, Iterator

_BOM = b"\xef\xbb\xbf"


def numbered_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line, stripped. A UTF-8 byte order mark, which
    Windows tools put at the start of files they save, is dropped (JSON parsers refuse it)."""
    for number, line in enumerate(handle, start=1):
        if number == 1:
            line = line.removeprefix(_BOM)
        line = line.strip()
        if line:
            yield number, line
