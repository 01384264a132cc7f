"""The page around the report's sections (`diffubias.report`): its title and its one style
sheet, so the exported file needs nothing else."""

from __future__ import annotations

import html


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
