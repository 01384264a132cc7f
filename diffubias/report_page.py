"""The page around the report's sections (`diffubias.report`): its title and its one style
sheet, so the exported file needs nothing else, and the HTML pieces the sections are made of."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any


def report_page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1f2933; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
       margin-top: 2em; }}
.muted {{ color: #667; }}
.warn {{ color: #8a4b00; }}
table {{ border-collapse: collapse; margin: 0.8em 0; }}
td, th {{ border: 1px solid #ddd; padding: 4px 10px; text-align: left; font-size: 0.92em; }}
th {{ background: #f4f6f8; }}
.gallery {{ display: grid; grid-template-columns: repeat(auto-fill, 120px); gap: 8px; }}
figure {{ margin: 0; }} figure img {{ width: 112px; height: 112px; object-fit: contain;
       image-rendering: pixelated; background: #eee; }}
figcaption {{ font-size: 0.75em; color: #445; }}
.sheets figure img {{ width: auto; height: auto; max-width: 100%; image-rendering: auto; }}
.gallery.wide figure img {{ width: 100%; height: auto; aspect-ratio: 1; }}
</style></head><body>
{body}
</body></html>
"""


# -- HTML pieces ---------------------------------------------------------------------------------

def escape(text: Any) -> str:
    return html.escape(str(text))


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return escape(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def settings_table(settings: Mapping[str, Any]) -> str:
    """A folded table of the scalar settings; lists and dicts are left out."""
    rows = [[k, v] for k, v in sorted(settings.items()) if not isinstance(v, (list, dict))]
    return "<details><summary>settings</summary>" + table(["setting", "value"], rows) + \
        "</details>"
