"""``index.html``: the report's tables and figures in one offline page (no scripts, no external files)."""
from __future__ import annotations

import html
from pathlib import Path


def markdown_table_to_html(md: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in md.strip().splitlines()]
    head, body = rows[0], [r for r in rows[2:]]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body]
    out.append("</table>")
    return "\n".join(out)


def write_index(path: Path, title: str, sections: list[tuple[str, str, str | None]]) -> None:
    """``sections``: (heading, markdown table or paragraph text, figure file name or None)."""
    from ..utils import atomic_write_text

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right}th{background:#eee}img{max-width:100%}p.note{color:#555;font-size:90%}</style>",
             f"</head><body><h1>{html.escape(title)}</h1>"]
    for heading, text, figure in sections:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            if text.lstrip().startswith("|"):
                parts.append(markdown_table_to_html(text))
            else:
                parts.append(f"<p class='note'>{html.escape(text)}</p>")
        if figure:
            parts.append(f"<img src='{html.escape(figure)}' alt='{html.escape(heading)}'>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
