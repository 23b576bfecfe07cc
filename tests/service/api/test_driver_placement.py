"""Study drivers off the head node: with ``CREDIT_JOB_ENTRYPOINT_RESOURCES`` naming a
resource only worker nodes have, each study's driver runs on a worker node (the session's
two-node cluster: its worker carries ``worker_node``), so the head's memory does not bound
how many studies run."""

from __future__ import annotations

import pytest

from tests.service.api.helpers import TINY, start_api, wait_status


@pytest.mark.slow
def test_a_studys_driver_runs_where_its_entrypoint_resources_are(
        ray_dashboard, mlflow_server, tmp_path_factory, ray_jobs):
    server = start_api(tmp_path_factory, "placement-home", ray_dashboard, mlflow_server,
                       job_entrypoint_resources='{"worker_node": 0.01}')
    try:
        with server.client() as c:
            r = c.post("/studies", json={"name": "driver-on-worker",
                                         "space": "mnist-fc-backprop", "max_trials": 1, **TINY})
            assert r.status_code == 201, r.text
            final = wait_status(c, "driver-on-worker", ("SUCCEEDED", "FAILED"))
        assert final["status"] == "SUCCEEDED", final["message"]
        info = ray_jobs.client().get_job_info(final["job_id"])
        workers = {n.node_id for n in ray_jobs.nodes() if "worker_node" in n.resources}
        heads = {n.node_id for n in ray_jobs.nodes() if "head_node" in n.resources}
        assert info.driver_node_id in workers and info.driver_node_id not in heads
    finally:
        server.stop()
