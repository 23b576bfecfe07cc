"""The torch-free catalogue says what the real registries hold, and imports without torch."""

from __future__ import annotations

import subprocess
import sys

from trainables.catalog import DATASET_NAMES, RULE_NAMES, dataset_descriptions, rule_descriptions
from trainables.data import DATASETS, describe_datasets
from trainables.rules import RULES


def test_rule_names_and_descriptions_match_the_registry() -> None:
    assert RULE_NAMES.names() == RULES.names()
    assert rule_descriptions() == {name: rule.description for name, rule in RULES.items()}


def test_dataset_names_and_descriptions_match_the_registry() -> None:
    assert list(DATASET_NAMES) == DATASETS.names()
    assert dataset_descriptions() == describe_datasets()


def test_configs_and_spaces_validate_without_torch() -> None:
    code = (
        "import sys\n"
        "from pydantic import ValidationError\n"
        "from trainables.config import TrainConfig\n"
        "import search_spaces, trainables.experiments\n"
        "search_spaces.load_space('mnist-fc-node-perturbation')\n"
        "try:\n"
        "    TrainConfig(rule='bogus')\n"
        "except ValidationError as e:\n"
        "    assert 'unknown rule' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('accepted')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
