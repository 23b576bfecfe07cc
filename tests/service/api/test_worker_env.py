"""A study's Ray workers start without a runtime environment (no ``setup_worker.py``
before each one), yet get what the job was submitted with: its variables through
``worker_env``/``apply_env``, the project on their ``sys.path``."""

from __future__ import annotations

import json
import shlex
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, os, sys
import ray
from service.runner.ray_cluster import connect_ray, worker_env
from service.runner.worker_code import apply_env

connect_ray()

@ray.remote(num_cpus=0)
def probe(env):
    before = os.environ.get("CREDIT_PROBE")
    apply_env(env)
    return {"before": before, "after": os.environ.get("CREDIT_PROBE"),
            "spec": os.environ.get("CREDIT_STUDY_SPEC"),
            "runtime_env": ray.get_runtime_context().get_runtime_env_string(),
            "root_on_path": %r in sys.path}

print("RESULT " + json.dumps({"env": worker_env(), **ray.get(probe.remote(worker_env()))}))
"""


def test_a_jobs_workers_have_no_runtime_env_and_get_its_variables(ray_jobs, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE % str(ROOT))
    job = f"worker-env-{uuid.uuid4().hex[:8]}"
    ray_jobs.client().submit_job(
        entrypoint=f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
        submission_id=job,
        runtime_env={"env_vars": {"CREDIT_PROBE": "through-the-call",
                                  "CREDIT_STUDY_SPEC": "{}"}})
    info = ray_jobs.wait(job, timeout_s=120)
    logs = ray_jobs.logs(job)
    assert info.status == "SUCCEEDED", logs[-3000:]
    (line,) = [x for x in logs.splitlines() if x.startswith("RESULT ")]
    seen = json.loads(line[len("RESULT "):])
    # the worker started without the job's runtime environment ...
    assert json.loads(seen["runtime_env"]) == {}
    assert seen["before"] is None
    # ... and got its variables from the call, not the study's spec (the driver's alone)
    assert seen["after"] == "through-the-call"
    assert seen["env"] == {"CREDIT_PROBE": "through-the-call"}
    assert seen["spec"] is None
    assert seen["root_on_path"]
