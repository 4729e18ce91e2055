"""CSV cells that a spreadsheet cannot run. A cell starting with =, +, -, @, tab or CR is a
formula to Excel and LibreOffice (file names are user input), so it gets a leading apostrophe,
as OWASP recommends. Every CSV the project writes (CLI, server) goes through `safe_row`."""

from __future__ import annotations

from collections.abc import Iterable

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_TRIGGERS) else text


def safe_row(values: Iterable[object]) -> list[str]:
    return [safe_cell(v) for v in values]
