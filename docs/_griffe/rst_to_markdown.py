"""Griffe extension for the docs site: reads the package's reST-flavoured docstrings as Markdown.

The docstrings are written for ``help()`` and doctest (Google sections, reST roles,
``.. math::`` and ``Example::``). Before mkdocstrings renders them this extension rewrites, in
the rendered copy only (the source is untouched):

- ``:class:`~a.b.C``` (and ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:exc:``, ``:obj:``) to a code span, ``C`` for a ``~`` target, else the full name;
- ``:math:`x``` to inline math ``\\(x\\)`` and a ``.. math::`` block to a ``$$`` block
  (pymdownx.arithmatex renders both), and ``.. code-block::`` to a fenced code block;
- ``Example:`` / ``Example::`` to Google's ``Examples:`` section (doctest lines become code);
- any other paragraph ending in ``::`` followed by an indented block, and a doctest paragraph
  outside an examples section, to a fenced code block;
- a reST simple table (``====  ====`` borders) to a Markdown table.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Examples?::?\s*$")
_BORDER = re.compile(r"^\s*=+( +=+)+\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> int:
    """Index just past the indented block that follows ``lines[start - 1]`` (blank lines inside)."""
    end = start
    i = start
    while i < len(lines):
        if lines[i].strip():
            if _indent(lines[i]) <= base:
                break
            end = i + 1
        i += 1
    return end


def _fenced(lines: list[str], start: int, base: int, language: str) -> tuple[list[str], int]:
    """The indented block from ``lines[start]`` as a fenced ``language`` block at indent ``base``,
    and the index just past it."""
    end = _block(lines, start, base)
    body = lines[start:end]
    while body and not body[0].strip():
        body.pop(0)
    cut = min((_indent(s) for s in body if s.strip()), default=base)
    pad = " " * base
    fence = ["", f"{pad}```{language}", *[pad + s[cut:] if s.strip() else "" for s in body]]
    return [*fence, f"{pad}```", ""], end


def _role(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


def _table(lines: list[str]) -> list[str]:
    """A reST simple table (its lines, borders included) as Markdown table lines."""
    spans = [m.span() for m in re.finditer(r"=+", lines[0])]
    rows: list[list[str]] = []
    header = 0
    for line in lines[1:]:
        if _BORDER.match(line):
            header = header or len(rows)
            continue
        cells = [
            line[a : b if k < len(spans) - 1 else None].strip() for k, (a, b) in enumerate(spans)
        ]
        if rows and not cells[0] and len(rows) > header:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    head, body = rows[: header or 1], rows[header or 1 :]
    out = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in head]
    out.append("|" + "---|" * len(spans))
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return out


def convert(text: str) -> str:
    """The docstring ``text`` with its reST constructs rewritten as Markdown."""
    text = _MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    text = _ROLE.sub(_role, text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        base = _indent(line)
        pad = " " * base
        stripped = line.strip()
        if stripped == ".. math::":
            end = _block(lines, i + 1, base)
            equations: list[list[str]] = [[]]
            for s in lines[i + 1 : end]:
                if s.strip():
                    equations[-1].append(pad + s.strip())
                elif equations[-1]:
                    equations.append([])  # a blank line starts the next displayed equation
            for body in filter(None, equations):
                out += [f"{pad}$$", *body, f"{pad}$$", ""]
            i = end
        elif stripped.startswith(".. code-block::"):
            block, i = _fenced(lines, i + 1, base, stripped.split("::", 1)[1].strip() or "text")
            out += block
        elif _BORDER.match(line):
            end = i + 1
            borders = 1
            while end < len(lines) and borders < 3:
                borders += bool(_BORDER.match(lines[end]))
                end += 1
            out += [pad + row for row in _table(lines[i:end])]
            i = end
        elif stripped.startswith(">>>") and base == 0:
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += ["```pycon", *lines[i:end], "```"]
            i = end
        elif _EXAMPLE.match(line):
            out.append(f"{pad}Examples:")
            i += 1
        elif stripped.endswith("::") and not stripped.startswith(".."):
            out.append(line[:-1])  # "text::" -> "text:"
            block, i = _fenced(lines, i + 1, base, "python")
            out += block
        else:
            out.append(line)
            i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite each object's docstring with :func:`convert` once the tree is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if not obj.is_alias and obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
