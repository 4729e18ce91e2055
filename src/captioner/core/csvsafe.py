"""CSV cells that a spreadsheet cannot run. A cell starting with =, +, -, @, tab or CR is a
formula to Excel and LibreOffice (file names are user input), so it gets a leading apostrophe,
as OWASP recommends. Every CSV the project writes (CLI, server) goes through `safe_row`.

TSV cells have no quoting, so a tab, newline or CR inside one (file names may hold any of them)
would split its row: `tsv_cell` writes them as backslash escapes (\\t, \\n, \\r, and \\\\ for a
backslash), the convention of PostgreSQL's and MySQL's text formats; `tsv_text` reads them back."""

from __future__ import annotations

import re
from collections.abc import Iterable

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_TABLE = str.maketrans(_TSV_ESCAPES)
_TSV_PLAIN = {escape[1]: char for char, escape in _TSV_ESCAPES.items()}  # "t" -> tab
_TSV_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_TRIGGERS) else text


def safe_row(values: Iterable[object]) -> list[str]:
    return [safe_cell(v) for v in values]


def tsv_cell(value: object) -> str:
    """`value` as one TSV cell: tab, newline, CR and backslash escaped (\\t \\n \\r \\\\)."""
    return str(value).translate(_TSV_TABLE)


def tsv_text(cell: str) -> str:
    """The text a `tsv_cell` stands for (an unknown escape stands for its own character)."""
    return _TSV_ESCAPE.sub(lambda m: _TSV_PLAIN.get(m.group(1), m.group(1)), cell)
