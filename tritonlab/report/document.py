"""The report as a document: a list of blocks (headings, paragraphs, tables, figures), and
its two renderings, Markdown (``report.md``) and a self-contained HTML page (``index.html``).

Building the document once and rendering it twice keeps the two files saying the same
thing. Headings carry an anchor (the page's id); Markdown links point at the slug GitHub
gives the heading's text instead, so ``report.md`` needs no raw HTML but ``<details>``.
Tables go through ``tabulate`` (``github`` for Markdown, ``html`` for the page, which
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
    anchor: str | None = None  # the HTML id; Markdown links use GitHub's slug of ``text``


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


@dataclass
class Links:
    """A line of links to anchored headings, as ``(text, heading)`` pairs: the HTML page
    links to the heading's ``anchor``, the Markdown to the slug GitHub gives its text."""

    items: list[tuple[str, Heading]]
    label: str = ""


@dataclass
class Box:
    """Blocks grouped under an HTML id (the summary, the verdict); Markdown shows the blocks
    as they are. ``columns`` lays the children out side by side on the page."""

    anchor: str
    blocks: list
    columns: bool = False


@dataclass
class Details:
    """Blocks folded under a one-line summary (``<details>``, which GitHub renders too)."""

    summary: str
    blocks: list


Block = Heading | Para | Banner | Bullets | Table | Figure | Figures | Links | Box | Details


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


def walk(blocks: list[Block]):
    """Every block in document order, the children of boxes and folds included."""
    for b in blocks:
        yield b
        if isinstance(b, (Box, Details)):
            yield from walk(b.blocks)


def github_slug(text: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces
    as hyphens (a repeated heading gets ``-1``, ``-2``: see :func:`markdown_slugs`)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def markdown_slugs(blocks: list[Block]) -> dict[int, str]:
    """The GitHub anchor of each heading of the document, by ``id()`` of the heading."""
    seen: dict[str, int] = {}
    slugs = {}
    for b in walk(blocks):
        if isinstance(b, Heading):
            base = github_slug(b.text)
            n = seen.get(base, 0)
            seen[base] = n + 1
            slugs[id(b)] = base if n == 0 else f"{base}-{n}"
    return slugs


def render_markdown(blocks: list[Block], out_dir: Path) -> str:
    """``report.md``; figures are linked relative to ``out_dir``."""
    slugs = markdown_slugs(blocks)
    return "\n".join(_markdown_lines(blocks, out_dir, slugs)).rstrip() + "\n"


def _markdown_lines(blocks: list[Block], out_dir: Path, slugs: dict[int, str]) -> list[str]:
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
        elif isinstance(b, Links):
            links = " · ".join(f"[{text}](#{slugs[id(h)]})" for text, h in b.items)
            lines += [f"{b.label} {links}".strip(), ""]
        elif isinstance(b, Table):
            lines += [_tabulate(b, "github", _md_escape), ""]
        elif isinstance(b, (Figure, Figures)):
            for f in (b.items if isinstance(b, Figures) else [b]):
                rel = f.path.relative_to(out_dir).as_posix()
                lines += [f"![{f.caption}]({rel})", "", f"*{f.caption}*", ""]
        elif isinstance(b, Box):
            lines += _markdown_lines(b.blocks, out_dir, slugs)
        elif isinstance(b, Details):
            # GitHub renders Markdown inside <details> only after a blank line.
            lines += ["<details>", f"<summary>{html.escape(b.summary)}</summary>", ""]
            lines += _markdown_lines(b.blocks, out_dir, slugs)
            lines += ["</details>", ""]
    return lines


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
#summary { border: 1px solid #bbb; border-radius: 6px; padding: .2em 1.2em .6em;
           background: #fcfcfc; font-size: 14px; }
#summary h1 { margin: .3em 0; font-size: 1.6em; }
#summary h2 { margin: .6em 0 .2em; font-size: 1.15em; border: none; }
#summary p, #summary ul { margin: .3em 0; } #summary table { margin: .3em 0; }
.cols { display: flex; flex-wrap: wrap; gap: 2em; }
.cols > div { flex: 1 1 560px; }
.links a { white-space: nowrap; }
details { margin: .6em 0; } summary { cursor: pointer; font-weight: bold; }
"""


def _html_inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: list[Block], title: str) -> str:
    """``index.html``: one file, figures embedded as base64 PNG, nothing fetched."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    out += _html_lines(blocks)
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _html_lines(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor, quote=True)}"' if b.anchor else ""
            out.append(f"<h{b.level}{anchor}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif isinstance(b, Banner):
            out.append(f'<p class="banner">{html.escape(b.text)}</p>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        elif isinstance(b, Links):
            links = " · ".join(f'<a href="#{html.escape(h.anchor or "", quote=True)}">'
                               f"{html.escape(text)}</a>" for text, h in b.items)
            label = f"{html.escape(b.label)} " if b.label else ""
            out.append(f'<p class="links">{label}{links}</p>')
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
        elif isinstance(b, Box):
            css = ' class="cols"' if b.columns else ""
            out.append(f'<div id="{html.escape(b.anchor, quote=True)}"{css}>')
            out += _html_lines(b.blocks)
            out.append("</div>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>")
            out += _html_lines(b.blocks)
            out.append("</details>")
    return out
