"""A trial's MLflow calls survive transient errors: a real ``mlflow server`` behind a TCP
proxy that cuts connections (the first ones, and every open one in the middle of the
trial). MLflow's own HTTP retries are off here, so what keeps the trial alive is
``service.records.tracking``'s retry; and MLflow's telemetry is off in our processes."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from service.records import tags
from service.records import tracking as T
from service.records import trial_logger as TL
from trainables.config import TrainConfig
from trainables.trainer import Callback, Trainer


class DroppingProxy:
    """Loopback TCP proxy to ``target``: drops the next ``drop`` new connections (closed
    at once), and ``cut()`` closes every open one."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.drop = 0
        self.dropped = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                if self.drop > 0:
                    self.drop -= 1
                    self.dropped += 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    conn.close()  # a reset, as a server going away
                    continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.open += [conn, upstream]
            host = (f"127.0.0.1:{self.port}".encode(), f"127.0.0.1:{self.target_port}".encode())
            for a, b, rewrite in ((conn, upstream, host), (upstream, conn, None)):
                threading.Thread(target=self._pipe, args=(a, b, rewrite), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, rewrite: tuple[bytes, bytes] | None) -> None:
        # requests carry the proxy's address in Host: the server allows its own only
        try:
            while data := a.recv(65536):
                b.sendall(data.replace(*rewrite) if rewrite else data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self, then_drop: int) -> None:
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open.clear()
            self.drop += then_drop

    def close(self) -> None:
        self.server.close()
        self.cut(0)


class CutAfterFirstEpoch(Callback):
    """Cuts MLflow's connections at the end of epoch 1, before the logger writes it."""

    def __init__(self, proxy: DroppingProxy):
        self.proxy = proxy

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch == 1:
            self.proxy.cut(then_drop=2)


@pytest.fixture()
def proxy(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(T, "RETRY_FIRST_S", 0.2)
    p = DroppingProxy(int(mlflow_server.rsplit(":", 1)[1]))
    yield p
    p.close()


def test_a_trial_survives_dropped_mlflow_connections(proxy, mlflow_server):
    """Before: one transient error (``log-batch failed``) failed the trial. After: the
    call is made again and the trial's run ends FINISHED with every epoch logged."""
    experiment_id = T.ensure_experiment(mlflow_server, "credit-faults", None)
    parent = T.client(mlflow_server).create_run(experiment_id, tags={tags.ROLE: "study"})
    proxy.drop = 3  # the trial's first calls meet a server that is not there
    logger = TL.MlflowTrialLogger(proxy.url, experiment_id, parent.info.run_id, "faults", "t0")
    config = TrainConfig(dataset="mnist-5k", epochs=2, batches_per_epoch=3,
                         metrics_batch_size=64, max_test_samples=200)
    Trainer(config, callbacks=[CutAfterFirstEpoch(proxy), logger]).fit()

    assert proxy.dropped == 5  # 3 at the start, 2 after the cut: each one was retried
    run = T.client(mlflow_server).get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    history = T.client(mlflow_server).get_metric_history(logger.run_id, "epoch")
    assert sorted(m.step for m in history) == [1, 2]
    # one run only: a retried create_run did not make a second one
    runs = T.child_runs(mlflow_server, experiment_id, parent.info.run_id)
    assert len(runs) == 1


def test_mlflow_telemetry_is_off_in_our_processes():
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    from mlflow.telemetry.utils import is_telemetry_disabled

    assert is_telemetry_disabled()
    from service.api.config import ApiSettings

    env = ApiSettings(api_tokens="t").job_env()
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
