"""The container images of the deploy tests, made with podman on this machine: the
registry images deploy/ names (the real ones where the registry answers, else local
stand-ins from Debian's packages and PyPI, ``standins/*/Containerfile``) and
credit-search's own image from ``deploy/Dockerfile``, unchanged.

What this machine needs beyond the files, and only here (``podman_env``, ``build_flags``):
runc with the container's rlimits at the host's own hard limits (this kernel's cgroups
v1 layout refuses crun, and an rlimit above the host's cannot be set); pip inside a
build trusts the host's CA bundle, mounted read-only for the build only.

    python -m tests.deploy.images           # the registry images (real or stand-ins)
    python -m tests.deploy.images --app     # and credit-search:cpu (PyPI's torch wheels)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
# the names deploy/compose.yaml and deploy/Dockerfile use, fully qualified
REGISTRY_IMAGES = {
    "docker.io/rayproject/ray:2.60.0-py311-cpu": "ray",
    "docker.io/library/postgres:15": "postgres",
    "docker.io/chrislusf/seaweedfs:4.48": "seaweedfs",
}
APP_IMAGE = "localhost/credit-search:cpu"
DEBIAN_BASE = "localhost/credit-standin-debian:bookworm"
STANDIN_LABEL = "org.credit-search.standin"
# Here only PyPI is reachable: its Linux torch is the CUDA build. Users build the CPU
# image from torch's CPU index, the Dockerfile's default.
TEST_TORCH_INDEX_URL = "https://pypi.org/simple"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA = "/run/credit-build/ca.crt"  # where a build sees it: the image's own bundle stays


def podman_missing() -> str | None:
    """Why containers cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (podman as root with runc)"
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install podman runc)"
    probe = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return f"podman does not work here: {probe.stderr.strip()[-300:]}"
    return None


def containers_conf(folder: Path) -> Path:
    """A containers.conf for this machine: runc, rlimits no higher than the host's (and
    nproc no higher than the 32768 podman's conmon runs with: runc refuses more)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    limits = [f"{n}={v}:{v}" for n, v in (("nofile", nofile), ("nproc", nproc))
              if v != resource.RLIM_INFINITY]
    path = folder / "containers.conf"
    path.write_text(f"[containers]\ndefault_ulimits = {json.dumps(limits)}\n"
                    '[engine]\nruntime = "runc"\n')
    return path


def podman_env(folder: Path) -> dict[str, str]:
    """The environment for podman and podman-compose here (CONTAINERS_CONF)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf(folder))}


def build_flags(folder: Path) -> list[str]:
    """podman build's mounts for this machine: the host's CA bundle (this machine reaches
    PyPI through a proxy that the images' own bundles do not trust) and a pip.conf that
    names it; mounted for the build only, nothing of them stays in an image."""
    if not CA_BUNDLE.exists():
        return []
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "pip.conf"
    conf.write_text(f"[global]\ncert = {BUILD_CA}\n")
    return ["-v", f"{conf}:/etc/pip.conf:ro", "-v", f"{CA_BUNDLE}:{BUILD_CA}:ro"]


def podman(*args: str, env: dict[str, str], timeout: float = 3600,
           log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if log is None:
        return subprocess.run(["podman", *args], capture_output=True, text=True, env=env,
                              timeout=timeout, check=check)
    with log.open("a") as out:
        out.write(f"$ podman {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(["podman", *args], stdout=out, stderr=subprocess.STDOUT,
                              text=True, env=env, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {args[0]} failed ({done.returncode}): see {log}")
    return done


def image_exists(name: str, env: dict[str, str]) -> bool:
    return podman("image", "exists", name, env=env, check=False).returncode == 0


def is_standin(name: str, env: dict[str, str]) -> bool:
    labels = podman("image", "inspect", "--format", "{{json .Labels}}", name, env=env).stdout
    return (json.loads(labels) or {}).get(STANDIN_LABEL) == "true"


def debian_base(env: dict[str, str], folder: Path, log: Path) -> None:
    """A minimal Debian bookworm image (mmdebstrap + podman import), made once."""
    if image_exists(DEBIAN_BASE, env):
        return
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("the stand-ins need mmdebstrap (apt-get install mmdebstrap)")
    rootfs = folder / "rootfs.tar"
    with log.open("a") as out:
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "bookworm", str(rootfs)],
                       stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800)
    podman("import", "--change", 'CMD ["/bin/bash"]', str(rootfs), DEBIAN_BASE, env=env,
           log=log)
    rootfs.unlink()


def registry_images(env: dict[str, str], folder: Path, log: Path) -> dict[str, str]:
    """Each registry image deploy/ names, here: kept if present, else pulled, else its
    stand-in built. Returns name -> "real" or "standin"."""
    kinds = {}
    for name, standin in REGISTRY_IMAGES.items():
        if not image_exists(name, env):
            pulled = podman("pull", "-q", name, env=env, timeout=1800, check=False)
            if pulled.returncode != 0:
                debian_base(env, folder, log)
                podman("build", *build_flags(folder), "-t", name, str(STANDINS / standin),
                       env=env, log=log)
        kinds[name] = "standin" if is_standin(name, env) else "real"
    return kinds


def build_app(env: dict[str, str], folder: Path, log: Path, *, no_cache: bool = False,
              tag: str = APP_IMAGE) -> float:
    """Build deploy/Dockerfile as it is (from the repository root); return its seconds."""
    start = time.monotonic()
    podman("build", *build_flags(folder), *(["--no-cache"] if no_cache else []),
           "--build-arg", f"TORCH_INDEX_URL={TEST_TORCH_INDEX_URL}",
           "-f", str(ROOT / "deploy" / "Dockerfile"), "-t", tag, str(ROOT), env=env, log=log)
    return time.monotonic() - start


def image_size(name: str, env: dict[str, str]) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name, env=env).stdout)


def main(argv: list[str]) -> None:
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "credit-deploy-images"
    env = podman_env(folder)
    log = folder / "build.log"
    missing = podman_missing()
    if missing:
        sys.exit(missing)
    for name, kind in registry_images(env, folder, log).items():
        print(f"{name} {kind}")
    if "--app" in argv:
        seconds = build_app(env, folder, log)
        print(f"{APP_IMAGE} built in {seconds:.0f} s, {image_size(APP_IMAGE, env) / 1e9:.2f} GB")


if __name__ == "__main__":
    main(sys.argv[1:])
