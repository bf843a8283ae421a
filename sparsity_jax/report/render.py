"""The run report's pages: `Section`s rendered as Markdown (report.md) and as one HTML
page (index.html) that needs nothing but its own directory: images are PNG files beside
it, no scripts, no external style sheets."""
from __future__ import annotations

import dataclasses
import html

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
         "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.3em 0}"
         ".missing{color:#777;font-style:italic}code{background:#f5f5f5;padding:0 3px}")


@dataclasses.dataclass
class Section:
    """One part of the report: text, tables and images, or what produces it when missing."""

    title: str
    text: list[str] = dataclasses.field(default_factory=list)
    tables: list[tuple[list[str], list[list]]] = dataclasses.field(default_factory=list)
    images: list[str] = dataclasses.field(default_factory=list)  # file names in the report directory
    missing: str | None = None  # the command that produces the section, when it has no data

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.missing:
            lines += [f"*No data yet: {s.missing}*", ""]
            continue
        lines += [*s.text, ""] if s.text else []
        for head, rows in s.tables:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
            lines.append("")
        lines += [f"![{name}]({name})" for name in s.images]
        lines.append("")
    return "\n".join(lines)


def page(title: str, sections: list[Section]) -> str:
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
           f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><ul>"]
    out += [f"<li><a href='#{s.anchor}'>{esc(s.title)}</a>{' (no data yet)' if s.missing else ''}</li>"
            for s in sections]
    out.append("</ul>")
    for s in sections:
        out.append(f"<h2 id='{s.anchor}'>{esc(s.title)}</h2>")
        if s.missing:
            out.append(f"<p class='missing'>No data yet: {esc(s.missing)}</p>")
            continue
        out += [f"<p>{esc(t)}</p>" for t in s.text]
        for head, rows in s.tables:
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>" for row in rows]
            out.append("</table>")
        out += [f"<img src='{esc(name)}' alt='{esc(name)}'>" for name in s.images]
    out.append("</body></html>")
    return "\n".join(out)
