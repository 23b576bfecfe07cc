"""A study's driver process: ``python -m service.runner.job [SPEC.json] [--resume]``.

The HTTP service starts it as a Ray Job (through ``service.runner.launch``: a fork of
the node's warm driver, or this module run cold), with the study's spec — the JSON it validated
and stored — in ``$CREDIT_STUDY_SPEC`` (``service.jobs.SPEC_VAR``); given a file, it
reads the spec from there instead. The spec is read with ``model_validate_json``, the
same model the service validated it with. It prints the result as JSON and exits 0
(SUCCEEDED), 1 (FAILED), 2 (no spec) or 143 (stopped: ``ray job stop`` sends SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from service.jobs import SPEC_VAR
from service.runner.study import run_study
from service.spec import StudySpec
from trainables.numbers import finite_or_none


def read_spec(argv: list[str]) -> StudySpec | None:
    """The spec of a file named in ``argv``, else of ``$CREDIT_STUDY_SPEC``; None if neither."""
    files = [a for a in argv if not a.startswith("--")]
    text = Path(files[0]).read_text() if files else os.environ.get(SPEC_VAR)
    return StudySpec.model_validate_json(text) if text else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = read_spec(argv)
    if spec is None:
        print(f"service.runner.job: ${SPEC_VAR} is not set and no spec file given",
              file=sys.stderr)
        return 2

    def _terminate(signum, frame):  # `ray job stop` sends SIGTERM: end records as KILLED
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run_study(spec, resume="--resume" in argv)
    except (KeyboardInterrupt, SystemExit):
        print(f"credit: study {spec.name!r} stopped; its runs are closed as KILLED",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    print(json.dumps(finite_or_none(result.to_dict())))
    return 0 if result.status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
