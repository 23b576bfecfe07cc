"""Pre-flight of a study on a multi-node cluster, before any trial (and any record).

On a cluster of nodes on more than one host (node IP), every setting a trial depends on must hold
on every node, not only on the driver's. :func:`check_cluster` refuses a sqlite or
file MLflow store outright (per-disk; sqlite must not be shared over a network file
system), then runs one tiny task pinned to each alive node
(``NodeAffinitySchedulingStrategy``) that checks:

- the Tune storage (``CREDIT_STORAGE``) is readable and writable there, and is the
  same storage the driver sees (it finds the marker file the driver wrote);
- the MLflow tracking server is reachable from there and is the same store (it finds
  the driver's experiment under its id and name);
- the study's dataset loads there (``CREDIT_DATA_DIR`` of that node).

A failure is one :class:`PreflightError` line naming the node, the setting and what to
set instead. :func:`serve_problem` is the part ``credit serve`` can check at start
without running anything on the cluster (``service.api.startup``).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from service.records.tune_storage import S3_ENDPOINT_ENV, STORAGE_ENV, tune_storage
from service.runner.worker_code import LOAD_DATASET
from service.spec import StudyError

MARKER_DIR = ".credit-preflight"
TIMEOUT_S = 120.0


class PreflightError(StudyError):
    """The cluster cannot run this study as configured (one line: node, setting, fix)."""


def local_tracking(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def _tracking_refusal(uri: str, nodes: int) -> str:
    return (f"MLFLOW_TRACKING_URI={uri}: a sqlite or file MLflow store is on one disk and "
            f"this Ray cluster has {nodes} nodes; run `mlflow server` (on PostgreSQL) and set "
            f"MLFLOW_TRACKING_URI / CREDIT_MLFLOW_TRACKING_URI / --tracking-uri to its "
            f"http:// URL")


def serve_problem(settings, nodes: list) -> str | None:
    """What ``credit serve`` can already see is wrong for the cluster ``nodes``, or None."""
    alive = [n for n in nodes if n.alive]
    if len({n.node_ip for n in alive}) < 2:  # one machine (a loopback cluster): one disk
        return None
    if local_tracking(settings.mlflow_tracking_uri):
        return "CREDIT_MLFLOW_TRACKING_URI: " + _tracking_refusal(
            settings.mlflow_tracking_uri, len(alive)).split(": ", 1)[1]
    storage = settings.storage or os.environ.get("CREDIT_STORAGE")
    if not storage:
        return (f"CREDIT_STORAGE is not set: the default {settings.home / 'ray_results'} is "
                f"on this machine only and the Ray cluster has {len(alive)} nodes; set "
                "CREDIT_STORAGE to a path every node mounts (NFS) or to s3://bucket/prefix")
    return None


def _node_check(location: str, endpoint: str | None, marker: str, token: str,
                tracking_uri: str, experiment_id: str, experiment_name: str,
                dataset: str, data_dir: str | None) -> list[str]:
    """Runs ON a node: the problems found there (empty: all good)."""
    problems = []
    if endpoint:
        os.environ[S3_ENDPOINT_ENV] = endpoint
    try:
        fs, root = tune_storage(location).pyarrow_fs()
        path = f"{root.rstrip('/')}/{MARKER_DIR}/{marker}"
        try:
            with fs.open_input_stream(path) as f:
                seen = f.read().decode()
        except (FileNotFoundError, OSError):
            seen = None
        if seen != token:
            problems.append(
                f"{STORAGE_ENV}={location}: not the storage the driver sees (its marker file is "
                "not there); set CREDIT_STORAGE to a path every node mounts at the same place "
                "(NFS) or to s3://bucket/prefix")
        else:
            probe = f"{path}.{secrets.token_hex(4)}"
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
    except Exception as error:
        problems.append(f"{STORAGE_ENV}={location}: not readable and writable here "
                        f"({type(error).__name__}: {error}); set CREDIT_STORAGE to storage "
                        "every node can write")
    try:
        exp = MlflowClient(tracking_uri).get_experiment(experiment_id)
        if exp is None or exp.name != experiment_name:
            raise LookupError("another store")
    except LookupError:
        problems.append(f"MLFLOW_TRACKING_URI={tracking_uri}: a different MLflow store here (no "
                        f"experiment {experiment_name!r} with id {experiment_id}); point every "
                        "node at one MLflow server")
    except Exception as error:
        problems.append(f"MLFLOW_TRACKING_URI={tracking_uri}: unreachable from here "
                        f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); make "
                        "the MLflow server reachable from every node")
    try:
        LOAD_DATASET(dataset, data_dir)
    except Exception as error:
        problems.append(f"CREDIT_DATA_DIR={data_dir or os.environ.get('CREDIT_DATA_DIR', '')}: "
                        f"dataset {dataset!r} does not load here ({error}); put the data in "
                        "CREDIT_DATA_DIR on every node")
    return problems


def check_cluster(spec, tracking_uri: str, experiment_id: str) -> int:
    """Check every alive node (Ray must be connected); raise :class:`PreflightError` on the
    first problem. Returns the number of nodes checked (0: a one-node cluster)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len({n.get("NodeManagerAddress") for n in nodes}) < 2:
        return 0  # one host (a single machine, or a loopback cluster): one disk
    if local_tracking(tracking_uri):
        raise PreflightError("pre-flight: " + _tracking_refusal(tracking_uri, len(nodes)))
    store = tune_storage()
    fs, root = store.pyarrow_fs()
    marker = f"{spec.name}-{secrets.token_hex(6)}"
    token = secrets.token_hex(16)
    marker_path = f"{root.rstrip('/')}/{MARKER_DIR}/{marker}"
    try:
        fs.create_dir(f"{root.rstrip('/')}/{MARKER_DIR}", recursive=True)
        with fs.open_output_stream(marker_path) as f:
            f.write(token.encode())
    except Exception as error:
        raise PreflightError(f"pre-flight: CREDIT_STORAGE={store.location}: the driver cannot "
                             f"write it ({type(error).__name__}: {error})") from None
    config = spec.trial_config({})
    task = ray.remote(num_cpus=0, max_retries=0)(_node_check)
    args: tuple[Any, ...] = (store.location, os.environ.get(S3_ENDPOINT_ENV), marker, token,
                             tracking_uri, experiment_id, spec.experiment_name,
                             config.dataset, config.data_dir)
    refs = {
        ref: node for node in nodes
        for ref in [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(*args)]
    }
    try:
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=TIMEOUT_S)
        for ref, node in refs.items():
            where = f"node {node.get('NodeManagerAddress')} ({node['NodeID'][:8]})"
            if ref not in ready:
                raise PreflightError(f"pre-flight: {where} did not answer in {TIMEOUT_S:g} s; "
                                     "check that node's Ray processes")
            try:
                problems = ray.get(ref)
            except Exception as error:
                raise PreflightError(f"pre-flight: {where} could not run the check "
                                     f"({type(error).__name__}); check that node") from None
            if problems:
                raise PreflightError(f"pre-flight: {where}: {problems[0]}")
    finally:
        try:
            fs.delete_file(marker_path)
        except Exception:  # best effort: a marker left behind harms nothing
            pass
    return len(nodes)
