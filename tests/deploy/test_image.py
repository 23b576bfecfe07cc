"""credit-search's image (deploy/Dockerfile, unchanged, built with podman): it runs as
the Ray image's user `ray` with the versions pyproject.toml pins, lists the learning
rules and trains a short run. ``slow``: building it takes minutes (cold: ~7 min here)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy import images

pytestmark = pytest.mark.slow


def run(image: str, env: dict[str, str], script: str, timeout: float = 600):
    done = subprocess.run(["podman", "run", "--rm", image, "sh", "-c", script],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def pins() -> dict[str, str]:
    text = (images.ROOT / "pyproject.toml").read_text()
    return dict(re.findall(r'"(torch|torchvision|ray|mlflow)(?:\[[^\]]*\])?==([\d.]+)"', text))


def test_the_image_runs_as_ray_with_the_pinned_versions(app_image, podman_env, registry):
    probe = ("import json, os, pwd, grp, sys, torch, torchvision, ray, mlflow; "
             "u = pwd.getpwuid(os.getuid()); print(json.dumps({'user': u.pw_name, "
             "'uid': u.pw_uid, 'group': grp.getgrgid(os.getgid()).gr_name, 'home': u.pw_dir, "
             "'python': sys.version.split()[0], 'torch': torch.__version__, "
             "'torchvision': torchvision.__version__, 'ray': ray.__version__, "
             "'mlflow': mlflow.__version__, 'credit_home': os.environ['CREDIT_HOME']}))")
    seen = json.loads(run(app_image, podman_env, f'python -c "{probe}"').splitlines()[-1])
    assert (seen["user"], seen["uid"], seen["group"], seen["home"]) == \
        ("ray", 1000, "users", "/home/ray")
    assert seen["python"].startswith("3.11.")
    assert {k: seen[k].split("+")[0] for k in pins()} == pins()
    assert seen["credit_home"] == "/home/ray/.credit"
    print(f"\n[deploy] image on {registry}: {seen}", flush=True)


def test_credit_rules_lists_the_rules_as_ray(app_image, podman_env):
    out = run(app_image, podman_env, "id -un && credit rules")
    assert out.splitlines()[0] == "ray"
    for rule in ("backprop", "feedback_alignment", "node_perturbation"):
        assert re.search(rf"^{rule}\b", out, re.M), out


def test_a_short_training_runs_as_ray(app_image, podman_env):
    out = run(app_image, podman_env,
              "credit train --experiment mnist-fc --dataset mnist-5k --rule backprop "
              "--epochs 1 --batches-per-epoch 20 --quiet --json /tmp/result.json >/dev/null "
              "&& stat -c %U /tmp/result.json && cat /tmp/result.json")
    owner, _, body = out.partition("\n")
    result = json.loads(body)
    assert owner == "ray"
    assert result["final"]["epochs"] == 1
    assert 0 <= result["final"]["test_error"] <= 1
    assert result["final"]["test_loss"] == result["final"]["test_loss"]  # not NaN
