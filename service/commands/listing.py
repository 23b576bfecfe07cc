"""Name/description tables that fit the terminal (``credit rules``, ``credit spaces``, ...)."""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import TextIO

#: Below this many columns for the text, descriptions go on their own indented lines.
_MIN_TEXT = 30


def print_table(rows: Sequence[tuple[str, str]], file: TextIO | None = None) -> None:
    """Print ``name  description`` rows, the descriptions wrapped to the terminal width
    (``$COLUMNS`` or the terminal's; 80 when neither is known) with a hanging indent."""
    out = file or sys.stdout
    columns = shutil.get_terminal_size((80, 24)).columns
    width = max((len(name) for name, _ in rows), default=0)
    indent = width + 2
    if columns - indent < _MIN_TEXT:  # narrow: name, then its text below
        for name, text in rows:
            print(name, file=out)
            for line in textwrap.wrap(text, max(columns - 4, 20)) or [""]:
                print(f"    {line}", file=out)
        return
    for name, text in rows:
        lines = textwrap.wrap(text, columns - indent) or [""]
        print(f"{name:<{width}}  {lines[0]}".rstrip(), file=out)
        for line in lines[1:]:
            print(" " * indent + line, file=out)
