"""What a study can name: search-space presets, experiments, rules, datasets (their
torch-free catalogue: the API trains nothing and imports no torch)."""

from __future__ import annotations

from typing import Any

from search_spaces import load_space, preset_names
from trainables.catalog import dataset_descriptions, rule_descriptions
from trainables.errors import CreditError
from trainables.experiments import EXPERIMENTS


class UnknownSearchSpace(CreditError):
    """No preset of that name."""


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
    rules = [{"name": name, "description": text}
             for name, text in rule_descriptions().items()]
    datasets = [{"name": name, "description": text}
                for name, text in dataset_descriptions().items()]
    return {"experiments": experiments, "rules": rules, "datasets": datasets}
