"""``credit search``: run or resume a study."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from pydantic import ValidationError

from service.commands.options import (
    UsageError,
    add_study_options,
    run_action,
    study_fields,
    study_flag,
    validation_message,
)
from service.records.tune_storage import STORAGE_ENV, tune_storage
from service.spec import StudySpec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="run a hyperparameter study on Ray Tune with Optuna and MLflow",
        description="Run (or resume) a study: Optuna picks configurations of the search "
        "space, Ray Tune runs them as trials, every trial is an MLflow run.",
        allow_abbrev=False,
    )
    p.add_argument("--space", required=True, metavar="NAME|FILE",
                   help="a preset (see 'credit spaces') or a search-space JSON file")
    add_study_options(p, extra=_SERVER_SIDE)
    p.add_argument("--storage-path", metavar="PATH|URI",
                   help="Tune checkpoints: a path every node mounts, or s3://bucket/prefix "
                   "(default: $CREDIT_STORAGE, else CREDIT_HOME/ray_results)")
    p.add_argument("--resume", action="store_true", help="resume the study --name")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.set_defaults(func=run_search)


#: StudySpec fields the API's server owns, which ``credit search`` (its own server) sets.
_SERVER_SIDE = ("data_dir", "tracking_uri", "storage")


def make_spec(args: argparse.Namespace):
    fields = study_fields(args, {"space": args.space}, extra=_SERVER_SIDE)
    if "name" not in fields:
        if args.resume:
            raise UsageError("--resume needs --name of the study to resume")
        stem = Path(args.space).stem if args.space.endswith(".json") else args.space
        fields["name"] = f"{stem[:40]}-{time.strftime('%Y%m%d-%H%M%S')}".lower()
    try:
        return StudySpec(**fields)
    except ValidationError as e:
        raise UsageError(validation_message(e, study_flag)) from None


def run_search(args: argparse.Namespace) -> int:
    """Check the study the flags describe, then run it (``actions.search``)."""
    spec = make_spec(args)  # bad input answers before the heavy imports of the action
    if args.storage_path:
        os.environ[STORAGE_ENV] = args.storage_path
        tune_storage()  # a malformed setting: exit 2 now
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UsageError(f"--json: directory {Path(args.json).resolve().parent} does not exist")
    return run_action("search:search", args, spec)
