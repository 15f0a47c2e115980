"""Small HTML building blocks for a self-contained page: escaped tables, embedded PNGs, the page shell."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence

from PIL import Image

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 21px; border-bottom: 2px solid #ddd; margin-top: 36px; }
h3 { font-size: 17px; margin-top: 26px; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta td:first-child { font-weight: 600; background: #fafafa; }
.good { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; } .muted { color: #777; }
img.figure { max-width: 100%; display: block; margin: 8px 0 16px; }
table.grid td { text-align: center; padding: 3px; font-size: 11px; } table.grid img { display: block; margin: auto; }
.swatch { display: inline-block; width: 10px; height: 10px; border: 1px solid #999; margin-right: 4px; }
nav a { margin-right: 14px; } .note { font-size: 13px; color: #555; max-width: 900px; }
"""

THUMBNAIL_SIDE = 128


def escape(value) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,…`` of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str) -> str:
    """An embedded figure."""
    return f'<img class="figure" alt="{escape(alt)}" src="{png_data_uri(png)}">'


def thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """An embedded thumbnail: scaled so its longer side is ``side`` (small images are enlarged without
    smoothing so their pixels stay visible)."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    buffer = io.BytesIO()
    image.convert("RGB").resize(size, resample).save(buffer, format="PNG")
    return f'<img alt="" width="{size[0]}" height="{size[1]}" src="{png_data_uri(buffer.getvalue())}">'


def fmt(value, digits: int = 3) -> str:
    """A number for a table cell (``–`` for missing or non-finite)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return escape(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else "–"


def ratio_with_interval(ratio, lower, upper) -> str:
    """``0.42 [0.31, 0.55]``."""
    return f"{fmt(ratio, 2)} [{fmt(lower, 2)}, {fmt(upper, 2)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (), css: str = "") -> str:
    """A table from already-escaped cell HTML; columns listed in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    css_class = f' class="{css}"' if css else ""
    return f"<table{css_class}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def meta_table(items: Sequence[tuple[str, str]]) -> str:
    """A two-column key/value table (values already escaped)."""
    rows = "".join(f"<tr><td>{escape(key)}</td><td>{value}</td></tr>" for key, value in items)
    return f'<table class="meta"><tbody>{rows}</tbody></table>'


def verdict(ok: bool | None, good: str, bad: str) -> str:
    """A coloured word: ``good`` when ``ok``, ``bad`` when not, ``–`` when unknown."""
    if ok is None:
        return '<span class="muted">–</span>'
    return f'<span class="good">{escape(good)}</span>' if ok else f'<span class="bad">{escape(bad)}</span>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are ``(anchor, heading, body html)``."""
    nav = " ".join(f'<a href="#{escape(anchor)}">{escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{escape(anchor)}"><h2>{escape(h)}</h2>{content}</section>' for anchor, h, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f'<style>{STYLE}</style></head><body><h1>{escape(title)}</h1><p class="muted">{escape(subtitle)}</p>'
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )
