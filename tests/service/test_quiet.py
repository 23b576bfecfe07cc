"""``service.quiet``: Ray's notices that a worker or node died, which every driver prints
as ``(raylet) ...``, stay out of our commands' output unless ``--verbose``; Ray's
other messages still show. The samples are Ray's own messages, as a driver of this
project's studies printed them (``credit search --quiet`` while a trial's worker
process, a node's raylet, or a whole node was SIGKILLed).
The whole command with a killed worker: ``test_cli_search.py``."""

from __future__ import annotations

import inspect

import pytest

from service.quiet import VERBOSE_ENV, quiet_third_party, ray_death_notice

NODE_MARKED_DEAD = (
    "The node with node id: 82f5f289e3232d14923ece2930d13943b351c1b2918277eadbe33bcb and "
    "address: 127.0.0.2 and node name: 127.0.0.2 has been marked dead because the detector "
    "has missed too many heartbeats from it. This can happen when a \t(1) raylet crashes "
    "unexpectedly (OOM, etc.) \n\t(2) raylet has lagging heartbeats due to slow network or "
    "busy workload.")
WORKER_DIED = (
    "A worker died or was killed while executing a task by an unexpected system error. To "
    "troubleshoot the problem, check the logs for the dead worker. Lease ID: "
    "000000003f71bd5ae268e25fbea05595f15a8c9161fb389d24cc42a41c045474 Worker ID: "
    "3167619abddd6d4631bfaa37f747bcf307f7a3f4d003b685a67a0bb7 Node ID: "
    "f28c16df79a756cc01498f7c9a4258af8ada0263bfed923e566ec1a2 Worker IP address: 127.0.0.2 "
    "Worker port: 15006 Worker PID: 4412 Worker exit type: SYSTEM_ERROR Worker exit "
    "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some "
    "common causes include: (1) the process was killed by the OOM killer due to high "
    "memory usage, (2) ray stop --force was called, or (3) the worker crashed unexpectedly "
    "due to SIGSEGV or another unexpected error.")
RAYLET_TERMINATED = (
    "Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL "
    "by the user or system OOM killer, (2) Invalid memory access from Raylet causing "
    "SIGSEGV or SIGBUS, (3) Other termination signals. Last 20 lines of the Raylet logs:\n"
    "    [2026-12-05 16:21:26,875 I 5113 5113] (raylet) metrics_agent_client.cc:59: "
    "Exporter initialized.\n    [2026-12-05 16:21:40,828 I 5113 5113] (raylet) "
    "grpc_client_manager.h:65: Starting gRPC client manager with enable_multiple_conns=1, "
    "num_clients=2\n")
# not a death: a warning Ray's raylet publishes to drivers, which stays
MANY_WORKERS = (
    "WARNING: 6 PYTHON worker processes have been started on node: f28c16df79a756cc014 "
    "with address: 127.0.0.2, which is 3x the maximum expected startup concurrency (2). "
    "This could be a result of using a large number of actors, tasks blocked in ray.get() "
    "calls, or tasks with fractional CPU requests (e.g., num_cpus=0.1) allowing high "
    "concurrency. See https://github.com/ray-project/ray/issues/3644 for some discussion "
    "of workarounds.")


def test_death_notices_are_told_from_other_messages() -> None:
    assert ray_death_notice(NODE_MARKED_DEAD)
    assert ray_death_notice(WORKER_DIED)
    assert ray_death_notice(RAYLET_TERMINATED)
    assert not ray_death_notice(MANY_WORKERS)
    assert not ray_death_notice("Raylet is terminated. Termination is graceful.")


@pytest.fixture()
def ray_printer(monkeypatch):
    """Ray's own printer of the cluster's messages, put back after the test; prints
    ``(raylet) message`` without colours, as on a driver's stdout."""
    # imported here, not at collection: Ray reads RAY_AUTH_MODE once, when it is first
    # imported, and the session's cluster fixture sets it first (tests/service/conftest.py)
    import ray._private.worker

    worker = ray._private.worker  # the module whose thread prints them (a driver's)
    monkeypatch.setattr(worker, "print_to_stdstream", inspect.unwrap(worker.print_to_stdstream))
    monkeypatch.setenv("RAY_COLOR_PREFIX", "0")
    for name in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)  # quiet_third_party sets them

    def publish(message: str, pid: str = "raylet") -> None:
        # as ray._private.worker.listen_error_messages prints each message it receives
        worker.print_to_stdstream({"lines": [message], "pid": pid, "is_err": False},
                                  ignore_prefix=False)
    return publish


def test_quiet_drops_the_death_notices_and_keeps_the_rest(ray_printer, monkeypatch,
                                                          capsys) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    quiet_third_party()
    quiet_third_party()  # twice: one filter
    for message in (NODE_MARKED_DEAD, WORKER_DIED, RAYLET_TERMINATED, MANY_WORKERS):
        ray_printer(message)
    out = capsys.readouterr().out
    assert "marked dead" not in out and "A worker died" not in out
    assert "Raylet is terminated" not in out
    assert out.startswith("(raylet) WARNING: 6 PYTHON worker processes"), out
    assert out.count("(raylet)") == 1, out


def test_verbose_shows_the_death_notices(ray_printer, monkeypatch, capsys) -> None:
    monkeypatch.setenv(VERBOSE_ENV, "1")
    quiet_third_party()
    ray_printer(NODE_MARKED_DEAD.replace("82f5f289", "0a0a0a0a"))  # not a repeat
    out = capsys.readouterr().out
    assert out.startswith("(raylet) The node with node id: 0a0a0a0a"), out
    assert "has been marked dead" in out
