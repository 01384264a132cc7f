"""Text from users and models made safe for where it goes: CSV cells a spreadsheet opens, and
prompts a text encoder reads.

CSV injection: a spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
return as a formula (`=HYPERLINK(...)`, `=cmd|...`). `csv_cell` prefixes such a cell with an
apostrophe, which spreadsheets show as text; `from_csv_cell` undoes it exactly, so a file we
write and read back keeps every caption as it was. Write such files with the csv module's default
line terminator ("\r\n"): with `lineterminator="\n"` a cell holding a bare "\r" is not quoted
and splits its row when read back. Knows: those rules. Does not know: CSV files
(callers keep using the `csv` module) or HTML (escape with `html.escape`).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
GUARD = "'"
# A prompt is read by a text encoder that sees ~77 tokens (CLIP) to 512 (T5): a longer one is a
# paste mistake, and thousands of characters would only slow the tokenizer and the table.
MAX_PROMPT_CHARS = 1000


def csv_cell(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text, never runs as a formula."""
    return GUARD + text if _needs_guard(text) else text


def from_csv_cell(cell: str) -> str:
    """The text `csv_cell` was given: drops the guard apostrophe it added, nothing else."""
    if cell.startswith(GUARD) and _needs_guard(cell[len(GUARD):]):
        return cell[len(GUARD):]
    return cell


def csv_row(values: list) -> list:
    """`csv_cell` applied to the string values of a row; numbers pass through unchanged."""
    return [csv_cell(v) if isinstance(v, str) else v for v in values]


def check_prompt_text(text: str, *, where: str = "prompt") -> str:
    """`text` with its whitespace collapsed; ValueError when it is longer than MAX_PROMPT_CHARS."""
    collapsed = " ".join(str(text).split())
    if len(collapsed) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{where} is {len(collapsed):,} characters long; keep it under {MAX_PROMPT_CHARS:,} "
            "(the text encoder reads only the first few dozen words)"
        )
    return collapsed


def _needs_guard(text: str) -> bool:
    # a text that itself starts with the guard before a formula character is guarded too, so
    # from_csv_cell(csv_cell(t)) == t for every t
    if text.startswith(FORMULA_STARTS):
        return True
    return text.startswith(GUARD) and _needs_guard(text[len(GUARD):])
