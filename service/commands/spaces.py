"""``credit spaces`` (list the search-space presets) and ``credit spaces show NAME``."""

from __future__ import annotations

import argparse
import json
from importlib.resources import files

from search_spaces import list_presets, load_space
from service.commands.listing import print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser(
        "spaces", help="list the search-space presets, or print one as JSON",
        description="List the search-space presets; 'credit spaces show NAME' prints one "
        "as JSON, a starting point for a space file of your own (--space FILE.json) or "
        "an inline space in an HTTP request.",
        allow_abbrev=False,
    )
    s.set_defaults(func=list_spaces)
    actions = s.add_subparsers(title="actions", dest="action", metavar="ACTION",
                               parser_class=type(s))
    show = actions.add_parser("show", help="print a preset as JSON", allow_abbrev=False)
    show.add_argument("name", metavar="NAME", help="a preset name (see 'credit spaces')")
    show.set_defaults(func=show_space)


def list_spaces(args: argparse.Namespace) -> int:
    print_table(sorted(list_presets().items()))
    return 0


def show_space(args: argparse.Namespace) -> int:
    """The preset's JSON as shipped (validated first: an unknown name lists the valid ones)."""
    load_space(args.name)
    text = (files("search_spaces") / "presets" / f"{args.name}.json").read_text("utf-8")
    print(json.dumps(json.loads(text), indent=2, ensure_ascii=False))
    return 0
