"""``service.jobs`` without a cluster: reasons read from logs, an unreachable dashboard."""

from __future__ import annotations

import pytest

from service.jobs import JobError, RayJobs
from service.local.stack import free_port
from service.tracebacks import exception_line

LOG = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
ray.exceptions.RayTaskError(ValueError): ray wrapped it
ValueError: the real reason
"""


def test_exception_line_is_the_last_error_of_a_log():
    assert exception_line(LOG) == "ValueError: the real reason"
    assert exception_line("KeyboardInterrupt: stopped\n") == "KeyboardInterrupt: stopped"
    assert exception_line("all fine\n") == ""
    assert len(exception_line("ValueError: " + "x" * 2000)) == 500


def test_an_unreachable_dashboard_is_a_job_error_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    jobs = RayJobs(url, timeout_s=2)
    with pytest.raises(JobError, match="unreachable"):
        jobs.nodes()
    assert RayJobs(url, token="t").headers == {"Authorization": "Bearer t"}
    assert jobs.entrypoint().endswith("-m service.runner.launch")
