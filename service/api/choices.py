"""What a study can name: search-space presets, experiments, rules, datasets."""

from __future__ import annotations

from typing import Any

from search_spaces import load_space, preset_names
from trainables.data import describe_datasets
from trainables.errors import CreditError
from trainables.experiments import EXPERIMENTS
from trainables.rules import RULES


class UnknownSearchSpace(CreditError):
    """No preset of that name."""


def _first_paragraph(doc: str | None) -> str:
    text = (doc or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def search_spaces() -> list[dict[str, Any]]:
    out = []
    for name in preset_names():
        space = load_space(name)
        out.append({"name": name, "description": space.description,
                    "experiment": space.experiment, "rule": space.rule,
                    "params": sorted(space.params)})
    return out


def search_space(name: str) -> dict[str, Any]:
    """A preset, as JSON data (the schema an inline space follows)."""
    if name not in preset_names():  # never a path: only names from the shipped list
        raise UnknownSearchSpace(f"unknown search space {name!r}; valid: "
                                 f"{', '.join(preset_names())}")
    return load_space(name).model_dump(mode="json")


def catalog() -> dict[str, Any]:
    experiments = [{"name": name, "description": exp.description,
                    "classification": exp.classification, "datasets": list(exp.datasets),
                    "default_dataset": exp.default_dataset}
                   for name, exp in EXPERIMENTS.items()]
    rules = [{"name": name, "description": _first_paragraph(rule.__doc__)}
             for name, rule in RULES.items()]
    datasets = [{"name": name, "description": text}
                for name, text in sorted(describe_datasets().items())]
    return {"experiments": experiments, "rules": rules, "datasets": datasets}
