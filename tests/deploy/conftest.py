"""Fixtures of the container tests: podman on this machine (the tests skip, naming the
reason, where containers cannot run), the registry images (real where pullable, else
stand-ins) and credit-search's image built from deploy/Dockerfile as it is (its cached
layers reused: a change to the code rebuilds the last one). What they measure is printed
at the end of the session (run with ``-s`` to see it) and written to
``$TMPDIR/credit-deploy-measured.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.deploy import images


@pytest.fixture(scope="session")
def measured():
    numbers: dict = {}
    yield numbers
    if numbers:
        text = json.dumps(numbers, indent=1, sort_keys=True)
        print(f"\n[deploy] measured: {text}", flush=True)
        out = Path(os.environ.get("TMPDIR", "/tmp")) / "credit-deploy-measured.json"
        out.write_text(text + "\n")


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def podman_env(work) -> dict[str, str]:
    why = images.podman_missing()
    if why:
        pytest.skip(f"containers cannot run here: {why}")
    return images.podman_env(work)


@pytest.fixture(scope="session")
def registry(podman_env, work, measured) -> dict[str, str]:
    """Every registry image deploy/ names, here: name -> "real" or "standin"."""
    log = work / "registry-images.log"
    try:
        kinds = images.registry_images(podman_env, work, log)
    except Exception as error:  # the build log says why
        pytest.fail(f"{error}\n{log.read_text()[-4000:] if log.exists() else ''}")
    measured["registry_images"] = kinds
    return kinds


@pytest.fixture(scope="session")
def app_image(podman_env, registry, work, measured) -> str:
    """credit-search:cpu from deploy/Dockerfile, here with PyPI's torch wheels."""
    log = work / "app-image.log"
    try:
        seconds = images.build_app(podman_env, work, log)
    except Exception as error:  # the build log says why
        pytest.fail(f"{error}\n{log.read_text()[-4000:] if log.exists() else ''}")
    measured["image_build_s"] = round(seconds, 1)
    measured["image_bytes"] = images.image_size(images.APP_IMAGE, podman_env)
    return images.APP_IMAGE
