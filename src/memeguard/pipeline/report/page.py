"""The page itself: inline CSS, escaped text, tables, and figures embedded as ``data:`` URIs.

Why everything is inline: the report is mailed around and opened from an attachment, where a relative
``metrics.png`` beside it does not exist and a web font or stylesheet cannot be fetched. A
Content-Security-Policy in the page forbids scripts and every non-``data:`` resource, so even text that
slipped through escaping could not run or phone home.
"""

from __future__ import annotations

import base64
import html
import io
import math
import struct
from collections.abc import Sequence

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PNG_DPI = 130  # sharp enough on a laptop screen, ~40-90 kB per figure

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d0d7de; --soft: #f6f8fa; --accent: #0b5cad;
  --bad: #c62828; --good: #2e7d32; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: var(--ink);
  line-height: 1.45; background: #fff; }
header { background: linear-gradient(120deg, #0b3d91, #0b5cad 60%, #1679c5); color: #fff;
  padding: 1.6rem 0 1.3rem; }
header .wrap { display: flex; justify-content: space-between; align-items: flex-end; gap: 1rem;
  flex-wrap: wrap; }
header h1 { margin: 0; font-size: 1.75rem; } header p { margin: .2rem 0 0; opacity: .85; }
nav { font-size: .85rem; } nav a { color: #fff; opacity: .9; margin-left: .9rem; text-decoration: none;
  border-bottom: 1px solid rgba(255,255,255,.4); }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 1.2rem; }
main { padding-bottom: 3rem; }
h2 { font-size: 1.3rem; margin: 2.4rem 0 .4rem; border-bottom: 2px solid var(--line); padding-bottom: .3rem; }
h3 { font-size: 1.02rem; margin: 1.2rem 0 .3rem; color: #30363d; }
p.note { color: var(--muted); font-size: .9rem; margin: .3rem 0 .8rem; max-width: 60rem; }
.cards { display: flex; flex-wrap: wrap; gap: .9rem; margin: 1.2rem 0 .6rem; }
.card { border: 1px solid var(--line); border-radius: 10px; padding: .8rem 1.1rem; min-width: 190px;
  background: var(--soft); }
.card .k { color: var(--muted); font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 1.65rem; font-weight: 650; color: var(--accent); }
.card .s { font-size: .85rem; color: var(--muted); }
.card.op { background: #fff8e6; border-color: #f0d27a; } .card.op .v { color: #8a5a00; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: .32rem .65rem; text-align: left; }
th { background: var(--soft); font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.ensemble td { font-weight: 650; background: #eef6ff; }
table.cm td { min-width: 7.5rem; text-align: center; font-size: 1rem; }
table.cm td.hit { background: #e8f5e9; } table.cm td.miss { background: #fdecea; }
figure { margin: .6rem 0; } figure img { width: 100%; height: auto; border: 1px solid #eaeef2;
  border-radius: 6px; }
figcaption { color: var(--muted); font-size: .84rem; margin-top: .2rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 1rem 1.4rem; }
.row { display: flex; flex-wrap: wrap; gap: 1rem 2rem; align-items: flex-start; }
details { margin: .4rem 0 1rem; } summary { cursor: pointer; color: var(--accent); font-size: .9rem; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1rem; }
.meme { border: 1px solid var(--line); border-radius: 10px; overflow: hidden; background: #fff;
  box-shadow: 0 1px 2px rgba(0,0,0,.05); }
.meme .pics { display: flex; background: #111; justify-content: center; }
.meme .pics img { display: block; max-width: 100%; max-height: 256px; }
.meme .pics.two img { max-width: 50%; }
.meme .body { padding: .55rem .75rem .7rem; font-size: .88rem; }
.meme .text { font-size: .95rem; margin: .3rem 0; overflow-wrap: anywhere; }
.meme .meta { color: var(--muted); font-size: .8rem; }
.badge { display: inline-block; border-radius: 999px; padding: .05rem .55rem; font-size: .75rem;
  font-weight: 600; color: #fff; }
.badge.fp { background: var(--bad); } .badge.fn { background: #6a1b9a; }
.noimg { color: #ddd; padding: 2.5rem 1rem; font-size: .85rem; text-align: center; }
mark.w { border-radius: 3px; padding: 0 .12rem; color: inherit; }
footer { color: var(--muted); font-size: .8rem; border-top: 1px solid var(--line); padding-top: .8rem;
  margin-top: 3rem; }
"""


def esc(value: object) -> str:
    """HTML-escape any value (quotes too: the same helper fills attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 4) -> str:
    """A metric with fixed digits; a dash for a missing or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def png_bytes(fig) -> bytes:  # noqa: ANN001 - a matplotlib Figure, imported lazily
    """Render a figure on the Agg canvas (no pyplot, no display) to PNG bytes without a timestamp."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}">'


def _css_width(png: bytes) -> int:
    """The figure's width in CSS pixels (its IHDR width at PNG_DPI), so figure text matches page text."""
    return round(struct.unpack(">I", png[16:20])[0] * 96 / PNG_DPI)


def figure(fig, caption: str) -> str:  # noqa: ANN001 - a matplotlib Figure
    """A matplotlib figure as an embedded PNG with its caption."""
    data = png_bytes(fig)
    return (
        f'<figure style="max-width: {_css_width(data)}px">{img(data, caption)}'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == "–"
    return True


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] | None = None, css: str = ""
) -> str:
    """A plain table; every cell is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{esc(classes[k])}"' if classes and classes[k] else ""
        cells = "".join(f'<td class="n">{esc(c)}</td>' if _numeric(c) else f"<td>{esc(c)}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    cls = f' class="{esc(css)}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def document(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], footer: str) -> str:
    """The whole page: header with a table of contents, then ``(anchor, title, html)`` sections."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
        f'<header><div class="wrap"><div><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></div>'
        f"<nav>{links}</nav></div></header>\n"
        '<main class="wrap">\n'
        + "\n".join(section(a, t, body) for a, t, body in sections)
        + f"\n<footer>{esc(footer)}</footer></main>\n</body></html>\n"
    )
