"""Markdown escaping: every user string (group keys, step names, paths, warnings) becomes a code span
or escaped text, so no group name is ever read as markup."""

from __future__ import annotations

import re
from typing import Any


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&~#!])")


def md_code(s: Any) -> str:
    """`s` as a Markdown code span, whatever it contains: a fence longer than any backtick run in it,
    a space inside the fence when it starts or ends with a backtick, newlines as spaces. Inside a
    code span nothing else is markup (`<b>` stays text). Table rows escape pipes (`md_row`)."""
    text = str(s).replace("\r", " ").replace("\n", " ")
    if text.strip() == "":
        return "`" + (text or " ") + "`" if text else "` `"
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_text(s: Any) -> str:
    """Plain text for Markdown prose and table cells: every character with a Markdown or HTML meaning
    backslash-escaped, newlines as spaces (pipes: `md_row`)."""
    return _MD_SPECIAL.sub(r"\\\1", str(s).replace("\r", " ").replace("\n", " "))


def md_row(cells: list[Any]) -> str:
    """A GFM table row: a '|' in a cell, code spans included, is escaped (GFM splits cells first)."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return [md_row(head), "|" + "---|" * len(head)] + [md_row(r) for r in rows]
