"""A study's runs in MLflow as a whole: its parent run (opened, found, closed from
outside its driver), and the runs a crash or an early stop leaves RUNNING — closed with
the reason (PRUNED, LOST, STALE), including those of a study whose driver died.

The records themselves (client, retries, a trial's own run) are ``service.records.tracking``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from service.records import series, tags
from service.records.links import study_view, view_key
from service.records.optuna_trials import LOST, fail_unfinished_trials, open_storage
from service.records.study_artifacts import (
    FOLDER,
    log_study_artifacts,
    optuna_trials,
    study_files,
)
from service.records.tracking import child_runs, client, find_runs, log_params
from service.spec import StudyError, StudySpec
from service.trials import member_id, ray_trial_of

log = logging.getLogger("credit.records")


# ------------------------------------------------------------------ a study's parent run
def parent_run_filter(study: str) -> str:
    """MLflow filter of study ``study``'s parent run (``links.study_filter``: all its runs)."""
    return f"tags.`{tags.STUDY}` = '{study}' and tags.`{tags.ROLE}` = 'study'"


def find_study_run(tracking_uri: str, experiment_name: str, study: str):
    """The parent run of study ``study`` in experiment ``experiment_name``, or None
    (``run.info.experiment_id`` names its experiment)."""
    exp = client(tracking_uri).get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    runs = find_runs(tracking_uri, exp.experiment_id, parent_run_filter(study))
    return runs[0] if runs else None


def open_study_run(spec, tracking_uri: str, experiment_id: str, resume: bool):
    """The study's parent run: created (tags, params, ``study_spec.json``), or, with
    ``resume``, found and set RUNNING again. ``StudyError`` if the name is taken (or,
    resuming, unknown)."""
    space = spec.search_space()
    c = client(tracking_uri)
    existing = find_runs(tracking_uri, experiment_id, parent_run_filter(spec.name))
    if existing and not resume:
        raise StudyError(f"study name {spec.name!r} is taken (MLflow run "
                         f"{existing[0].info.run_id}); choose another name or resume it")
    if resume:
        if not existing:
            raise StudyError(f"no study named {spec.name!r} to resume")
        run = existing[0]
        c.update_run(run.info.run_id, status="RUNNING")
        c.set_tag(run.info.run_id, tags.DRIVER, driver_id())
        return run
    run_tags = {tags.STUDY: spec.name, tags.ROLE: tags.STUDY_ROLE, tags.DRIVER: driver_id(),
            tags.EXPERIMENT: space.experiment,
            tags.RULE: space.rule, tags.SPACE: space.name,
            **{tags.LABEL_PREFIX + k: v for k, v in spec.labels.items()}}
    if spec.group_run_id:
        run_tags[tags.PARENT] = spec.group_run_id
    run = c.create_run(experiment_id, run_name=spec.name, tags=run_tags)
    log_params(c, run.info.run_id, {
        "space": space.name, "experiment": space.experiment, "rule": space.rule,
        "sampler": spec.sampler, "seed": spec.seed,
        "training_seed": spec.trial_settings()["seed"], "objective": spec.objective.metric,
        "mode": spec.objective.mode, "max_trials": spec.max_trials,
        "parallel_trials": spec.parallel_trials, "epochs": spec.epochs,
        "early_stopping": bool(spec.early_stopping), "final_seeds": spec.final_seeds,
        "dataset": spec.trial_config({}).dataset,
    })
    spec_json = json.loads(spec.model_dump_json())
    c.log_dict(run.info.run_id, spec_json, "study_spec.json")
    save_study_view(c, experiment_id, spec.name, series.objectives_of(spec_json),
                    list(space.params))
    return run


def save_study_view(c, experiment_id: str, study: str, objectives: list[dict[str, str]],
                    params: list[str]) -> None:
    """The study's runs table as a view of MLflow's UI (``links.study_view``), which the
    study's link opens (``links.mlflow_runs``)."""
    c.set_experiment_tag(experiment_id, tags.SHARED_VIEW_PREFIX + view_key(study),
                         json.dumps(study_view(study, objectives, params)))


def record_study_results(tracking_uri: str, run_id: str, spec: StudySpec, storage: Any,
                         final: dict[str, float] | None = None) -> str | None:
    """The study's table and plots on its parent run (``study_artifacts``), drawn from its
    Optuna trials. Never fails a study's ending: what went wrong comes back, in one line
    (MLflow or the Optuna storage down), None when they were written."""
    try:
        files = study_files(spec.name, optuna_trials(storage, spec.name),
                            series.objectives_of(json.loads(spec.model_dump_json())),
                            series.axes_of(spec.search_space()), final)
        log_study_artifacts(client(tracking_uri), run_id, files)
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def close_study_run(tracking_uri: str, experiment_name: str, study: str, status: str,
                    reason: str) -> int:
    """End a study's runs from outside its driver: its RUNNING trial runs and, if still
    RUNNING, the parent run → ``status`` (KILLED: the study was cancelled), with the
    reason. Idempotent; returns how many runs it closed."""
    parent = find_study_run(tracking_uri, experiment_name, study)
    if parent is None:
        return 0
    run_id = parent.info.run_id
    closed = close_stale_runs(tracking_uri, parent.info.experiment_id, run_id, set())
    if parent.info.status == "RUNNING":
        c = client(tracking_uri)
        c.set_tag(run_id, tags.FAILURE, reason)
        c.set_tag(run_id, tags.STATUS, "CANCELLED" if status == "KILLED" else "FAILED")
        c.set_terminated(run_id, status=status)
        closed += 1
    return closed


# ------------------------------------------------------ runs left RUNNING
def close_stale_runs(tracking_uri: str, experiment_id: str, parent_run_id: str,
                     pruned_trial_ids: set[str], active_trial_ids: set[str] = frozenset(),
                     known_trial_ids: set[str] | None = None) -> int:
    """End every child run still RUNNING: KILLED, tagged PRUNED (early-stopped), LOST (its
    trial is not among Tune's ``known_trial_ids``: see ``failures.LOST``) or STALE.

    Runs of ``active_trial_ids`` (still training elsewhere) are left alone.
    Returns the number of runs closed.
    """
    c = client(tracking_uri)
    closed = 0
    for run in child_runs(tracking_uri, experiment_id, parent_run_id):
        if run.info.status != "RUNNING":
            continue
        trial_id = run.data.tags.get(tags.TRIAL)
        if trial_id in active_trial_ids:
            continue
        if trial_id in pruned_trial_ids:
            state = "PRUNED"
        elif known_trial_ids is not None and trial_id not in known_trial_ids \
                and ray_trial_of(trial_id or "") not in known_trial_ids:
            state = "LOST"
            c.set_tag(run.info.run_id, tags.FAILURE, LOST)
        else:
            state = "STALE"
        c.set_tag(run.info.run_id, tags.STATE, state)
        c.set_terminated(run.info.run_id, status="KILLED")
        closed += 1
    return closed


def _has_results(tracking_uri: str, run_id: str) -> bool:
    """Whether run ``run_id`` has the study's results (``study_artifacts.FOLDER``)."""
    return any(f.path == f"{FOLDER}/trials.html"
               for f in client(tracking_uri).list_artifacts(run_id, FOLDER))


# --------------------------------------------------------------------- orphaned runs
def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def driver_id() -> str:
    """This process, as a study's parent run records its driver: ``host:pid:start``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _driver_gone(driver: str) -> bool:
    """Whether the driver ``host:pid:start`` ran on this host and is gone (a PID reused
    since has another start time). A driver of another host is never judged here."""
    host, _, rest = driver.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _start_ticks(int(pid)) != start


def close_orphaned_runs(tracking_uri: str, experiment_id: str,
                        resuming: str | None = None) -> list[str]:
    """Close (FAILED, with the reason) every study's parent run still RUNNING whose
    driver ran on this host and is gone, with its RUNNING trial runs; the studies'
    names. Run by every study driver (``credit search`` included) as it starts, so a
    crashed search does not leave its runs RUNNING in the store for ever. The study
    being resumed (``resuming``) is left to its resume: its trials continue in their
    runs."""
    closed = []
    for run in find_runs(tracking_uri, experiment_id,
                         f"tags.`{tags.ROLE}` = 'study' and attributes.status = 'RUNNING'"):
        driver = run.data.tags.get(tags.DRIVER)
        study = run.data.tags.get(tags.STUDY)
        if not driver or not study or study == resuming or not _driver_gone(driver):
            continue
        reason = f"its driver ({driver}) is gone: it died before ending the study"
        c = client(tracking_uri)
        close_stale_runs(tracking_uri, experiment_id, run.info.run_id, set())
        c.set_tag(run.info.run_id, tags.FAILURE, reason)
        c.set_tag(run.info.run_id, tags.STATUS, "FAILED")
        c.set_terminated(run.info.run_id, status="FAILED")
        closed.append(study)
    return closed


def mark_lost_runs(tracking_uri: str, experiment_id: str, parent_run_id: str,
                   lost_trial_ids: set[str]) -> int:
    """Tag the runs of lost trials LOST with the reason, also one that finished its
    epochs before its driver could record it (its result is not counted)."""
    c = client(tracking_uri)
    marked = 0
    for run in child_runs(tracking_uri, experiment_id, parent_run_id):
        if run.data.tags.get(tags.TRIAL) in lost_trial_ids \
                and run.data.tags.get(tags.STATE) != "LOST":
            c.set_tag(run.info.run_id, tags.STATE, "LOST")
            c.set_tag(run.info.run_id, tags.FAILURE, LOST)
            marked += 1
    return marked
def record_failures(tracking_uri: str, experiment_id: str, parent_run_id: str,
                    failed: dict[str, tuple[str, str | None]]) -> None:
    """Put each failed trial's whole reason and its kind (``failed``: Tune trial id →
    (reason, kind)) on its MLflow run; a run the
    trial could not close itself (its node died, its storage failed) ends FAILED here."""
    if not failed:
        return
    c = client(tracking_uri)
    for run in child_runs(tracking_uri, experiment_id, parent_run_id):
        if run.data.tags.get(tags.TRIAL) not in failed:
            continue
        reason, kind = failed[run.data.tags.get(tags.TRIAL)]
        values = {tags.FAILURE_KIND: kind} if kind else {}
        if len(reason) > len(run.data.tags.get(tags.FAILURE, "")):
            values[tags.FAILURE] = reason
        for key, value in values.items():
            c.set_tag(run.info.run_id, key, value)
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, tags.STATE, "FAILED")
            c.set_terminated(run.info.run_id, status="FAILED")


def tag_trial_run(tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str,
                  values: dict[str, str]) -> bool:
    """Set ``values`` as tags of Tune trial ``trial_id``'s run (of each member's, for a
    population's Ray trial); whether one was found."""
    where = (f"tags.`{tags.PARENT}` = '{parent_run_id}' and "
             f"tags.`{tags.ROLE}` = '{tags.TRIAL_ROLE}' and tags.`{tags.TRIAL}` ")
    runs = find_runs(tracking_uri, experiment_id, where + f"= '{trial_id}'") or \
        find_runs(tracking_uri, experiment_id, where + f"LIKE '{member_id(trial_id, 0)[:-1]}%'")
    c = client(tracking_uri)
    for run in runs:
        for key, value in values.items():
            c.set_tag(run.info.run_id, key, value)
    return bool(runs)


def close_study_records(spec: StudySpec, tracking_uri: str, optuna_url: str,
                        status: str = "KILLED", reason: str = "cancelled") -> int:
    """End a study's records from outside its driver (after its job was stopped/killed):
    every RUNNING MLflow run of the study (parent and children) → ``status``, and every
    unfinished Optuna trial → FAIL. Idempotent; returns the number of runs closed."""
    closed = close_study_run(tracking_uri, spec.experiment_name, spec.name, status, reason)
    storage = open_storage(optuna_url)
    fail_unfinished_trials(storage, spec.name)
    # a driver stopped or dead before its end drew nothing: draw what its trials left
    parent = find_study_run(tracking_uri, spec.experiment_name, spec.name)
    if parent is not None and not _has_results(tracking_uri, parent.info.run_id):
        problem = record_study_results(tracking_uri, parent.info.run_id, spec, storage)
        if problem:
            log.warning("study %s: its results were not drawn on its parent run: %s",
                        spec.name, problem)
    return closed
