"""The report as a document: a list of blocks (headings, paragraphs, tables, figures), and
its two renderings, Markdown (``report.md``) and a self-contained HTML page (``index.html``).

Building the document once and rendering it twice keeps the two files saying the same
thing. Tables go through ``tabulate`` (``github`` for Markdown, ``html`` for the page, which
escapes every cell); a column whose values are all numbers is right-aligned in both.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from tritonlab.output import fmt_num


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str  # `code` spans are rendered as code


@dataclass
class Banner:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list]


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Figures:
    """Figures shown side by side (one per run)."""

    items: list[Figure]


Block = Heading | Para | Banner | Bullets | Table | Figure | Figures


def cell(value) -> str:
    """How a value reads in a table: ``-`` for None, yes/no, 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt_num(value, ".4g")
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _alignment(table: Table) -> list[str]:
    aligns = []
    for i in range(len(table.headers)):
        values = [r[i] for r in table.rows if i < len(r) and r[i] is not None]
        aligns.append("right" if values and all(map(_is_number, values)) else "left")
    return aligns


def _tabulate(table: Table, fmt: str, escape) -> str:
    rows = [[escape(cell(c)) for c in r] for r in table.rows]
    return tabulate(rows, headers=[escape(h) for h in table.headers], tablefmt=fmt,
                    disable_numparse=True, colalign=_alignment(table))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], out_dir: Path) -> str:
    """``report.md``; figures are linked relative to ``out_dir``."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Banner):
            lines += [f"> **{b.text}**", ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            lines += [_tabulate(b, "github", _md_escape), ""]
        elif isinstance(b, (Figure, Figures)):
            for f in (b.items if isinstance(b, Figures) else [b]):
                rel = f.path.relative_to(out_dir).as_posix()
                lines += [f"![{f.caption}]({rel})", "", f"*{f.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #333; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: .6em 1em; font-weight: bold;
          border-radius: 4px; }
.figs { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: .5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
.figs figure { flex: 1 1 600px; }
figcaption { font-size: 13px; color: #555; }
"""


def _html_inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: list[Block], title: str) -> str:
    """``index.html``: one file, figures embedded as base64 PNG, nothing fetched."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif isinstance(b, Banner):
            out.append(f'<p class="banner">{html.escape(b.text)}</p>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        elif isinstance(b, Table):
            # tabulate's "html" format escapes each cell itself.
            out.append(_tabulate(b, "html", str))
        elif isinstance(b, (Figure, Figures)):
            items = b.items if isinstance(b, Figures) else [b]
            out.append('<div class="figs">')
            for f in items:
                out.append(f'<figure><img src="{_data_uri(f.path)}" '
                           f'alt="{html.escape(f.caption, quote=True)}">'
                           f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
            out.append("</div>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
