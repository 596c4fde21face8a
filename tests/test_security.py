"""The private Ray that dubline starts for itself is closed: every port it listens on is on the
loopback interface, and nothing answers without its per-run token — while stage workers (actor
pools, as the flows use them, and Ray Data) run normally. Traffic goes to 127.0.0.1 only.

The cluster runs in a driver process of its own (this file run as a script): the test process is
the "second process without the token". The token is read from the environment of the cluster's
GCS process, as only its own user can, for the positive controls and to check that it leaks nowhere.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
grpc = pytest.importorskip("grpc")

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
#: A method of each Ray gRPC service a process of the private cluster serves (by process name).
GRPC_PROBES = {
    "gcs_server": ["/ray.rpc.NodeInfoGcsService/GetAllNodeInfo"],
    "raylet": ["/ray.rpc.NodeManagerService/GetNodeStats", "/ray.rpc.ObjectManagerService/Pull"],
    "ray::DashboardAgent": ["/ray.rpc.LogService/ListLogs"],
    "worker": ["/ray.rpc.CoreWorkerService/GetCoreWorkerStats"],
}


# --- the driver: this file run as a script ----------------------------------------------------


def _driver(work: Path) -> None:
    """Start the private cluster with ``cluster.connect``, run stage jobs on it, report, and keep it
    up until stdin closes."""
    import ray
    import ray.data

    from dubline.cluster.connect import connect, disconnect
    from dubline.cluster.ray_runner import RayRunner
    from dubline.flows.demo import astronaut, square, write_clip
    from dubline.stages.base import StageJob
    from dubline.stages.probe import ProbeStage
    from dubline.stages.shots import ShotsStage

    clip = work / "clip.mp4"
    write_clip(clip, [square(astronaut(), 64)] * 10, fps=25)
    connect(num_cpus=2)
    runner = RayRunner()
    titles, shots = str(work / "titles.parquet"), str(work / "shots.parquet")
    probe = runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(clip)},)))
    shot = runner.run(StageJob(ShotsStage, {}, shots, "t", input_url=titles))
    runner.shutdown()

    class Double:
        def __call__(self, batch):
            return {"id": batch["id"] * 2}

    data = ray.data.range(16).map_batches(Double, concurrency=1, num_cpus=0.25, batch_size=4)
    report = {
        "gcs_address": ray.get_runtime_context().gcs_address,
        "node_address": ray.nodes()[0]["NodeManagerAddress"],
        "dashboard": ray._private.worker.get_dashboard_url(),
        "workers": [probe.worker, shot.worker],
        "rows": [probe.rows_out, shot.rows_out],
        "data_sum": int(sum(row["id"] for row in data.take_all())),
    }
    print("REPORT " + json.dumps(report), flush=True)
    sys.stdin.read()  # the test probes the cluster meanwhile
    disconnect()
    left = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    print("AFTER " + json.dumps(left), flush=True)


if __name__ == "__main__":
    _driver(Path(sys.argv[1]))
    sys.exit(0)


# --- the tests ----------------------------------------------------------------------------------


class Cluster:
    """The driver of a private cluster, its report, its token and the sockets its processes listen on."""

    def __init__(self, driver: subprocess.Popen, report: dict, work: Path):
        self.driver, self.report, self.work = driver, report, work
        self.process = psutil.Process(driver.pid)
        self.processes = [self.process, *self.process.children(recursive=True)]
        # The processes Ray started got the token in their environment (the driver's own
        # /proc/PID/environ shows what it was started with, before connect() set it).
        self.token = next(p.environ()["RAY_AUTH_TOKEN"] for p in self.processes if p.name() == "gcs_server")
        self.listening = [
            (conn.laddr.ip, conn.laddr.port, process)
            for process in self.processes
            for conn in _connections(process)
            if conn.status == psutil.CONN_LISTEN
        ]
        self.gcs_port = int(report["gcs_address"].rsplit(":", 1)[1])


def _connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except psutil.Error:  # a worker that ended meanwhile
        return []


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("private_ray")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("RAY_AUTH") and name != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_AUTH_MODE"] = "disabled"  # what the user (or this suite) had: connect() must not care
    driver = subprocess.Popen([sys.executable, __file__, str(work)], cwd=REPO, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    try:
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("REPORT "):
                break
        cluster = Cluster(driver, json.loads(lines[-1].removeprefix("REPORT ")), work) if lines and lines[-1].startswith("REPORT ") else None
        if cluster is not None:
            yield cluster
    finally:
        stdout, stderr = driver.communicate(input="", timeout=120)  # closing stdin ends the driver
    output = "".join(lines) + stdout + stderr
    assert cluster is not None, f"the driver ended early: {output[-4000:]}"
    assert driver.returncode == 0, output[-4000:]
    # disconnect() gave the environment back as it was, and stopped every process of the cluster
    assert json.loads(stdout.split("AFTER ", 1)[1]) == {
        "RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": None, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": None}
    _, alive = psutil.wait_procs(cluster.processes, timeout=30)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert cluster.token not in output


def test_stage_workers_and_ray_data_run_on_the_private_cluster(private_cluster):
    report = private_cluster.report
    assert report["rows"] == [1, 1]  # probe and shots jobs on actor pools
    driver_pid = private_cluster.driver.pid
    assert all(int(worker.rsplit(":", 1)[1]) != driver_pid for worker in report["workers"])
    assert report["data_sum"] == 2 * sum(range(16))  # Ray Data with an actor pool
    assert report["node_address"] == "127.0.0.1" and report["gcs_address"].startswith("127.0.0.1:")


def test_every_port_of_the_private_cluster_is_on_loopback(private_cluster):
    names = {process.name() for _, _, process in private_cluster.listening}
    ports = {port for _, port, _ in private_cluster.listening}
    # the sockets of the cluster itself were seen: GCS, raylet, workers; no dashboard was started
    assert {"gcs_server", "raylet"} <= names and private_cluster.gcs_port in ports
    assert private_cluster.report["dashboard"] in ("", None)
    exposed = [(ip, port, process.name()) for ip, port, process in private_cluster.listening if ip not in LOOPBACK]
    assert exposed == []


def _grpc_code(port: int, method: str, token: str | None = None) -> str:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(method)(b"", timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def _http_get(port: int, path: str = "/") -> tuple[int, str] | None:
    """(status, start of the body) of a plain GET, or None when the port does not speak HTTP/1."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError, http.client.HTTPException):
        return None


def _answer_without_token(port: int, process_name: str) -> str:
    """What a port of the cluster does for a client without the token: "refused" (gRPC
    UNAUTHENTICATED, HTTP 401/403), "metrics" (a read-only Prometheus page), "closed" (a worker
    that has ended since the sockets were listed, before or during the probes: a Ray Data worker
    ending as its pool drains answered gRPC UNAVAILABLE, then refused connections), else
    "OPEN: <what>"."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return "closed"
    kind = process_name if process_name in GRPC_PROBES else "worker" if process_name.startswith("ray::") or process_name == "python" else None
    codes = [_grpc_code(port, method) for method in GRPC_PROBES.get(kind, [])]
    if "OK" in codes:
        return f"OPEN: gRPC {codes}"
    if "UNAUTHENTICATED" in codes:
        return "refused"
    answer = _http_get(port)
    if answer is not None and answer[0] in (401, 403):
        return "refused"
    if answer is not None and answer[0] == 200 and "# TYPE " in answer[1]:
        return "metrics"
    if answer is None and codes and set(codes) == {"UNAVAILABLE"}:  # the transport failed: ended since?
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return "closed"
    return f"OPEN: gRPC {codes}, HTTP {answer}"


def test_no_ray_port_answers_without_the_token(private_cluster):
    answers = {(process.name(), port): _answer_without_token(port, process.name())
               for _, port, process in private_cluster.listening}
    assert {key: a for key, a in answers.items() if a.startswith("OPEN")} == {}
    refused = [name for (name, _), answer in answers.items() if answer == "refused"]
    # GCS, both raylet ports (node manager, object manager), the dashboard agent, the runtime-env
    # agent, the driver's and the workers' core workers:
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= set(refused)
    assert refused.count("raylet") == 2 and len(refused) >= 8, answers
    # The rejection is the token's doing: the right one opens the GCS, a wrong one does not.
    gcs_method = GRPC_PROBES["gcs_server"][0]
    assert _grpc_code(private_cluster.gcs_port, gcs_method, token="0" * 64) == "UNAUTHENTICATED"
    assert _grpc_code(private_cluster.gcs_port, gcs_method, token=private_cluster.token) == "OK"


def _http_status(url: str, token: str | None = None, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    if data:
        headers["Content-Type"] = "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_no_port_of_the_private_cluster_takes_a_job_submission(private_cluster):
    # The classic way in is a shell command submitted as a Ray job to the dashboard's job API:
    # there is no dashboard, and no other HTTP port of the cluster takes one.
    marker = private_cluster.work / "submitted"
    for _, port, _ in private_cluster.listening:
        if _http_get(port) is not None:
            assert _http_status(f"http://127.0.0.1:{port}/api/jobs/", body={"entrypoint": f"touch {marker}"}) != 200
    time.sleep(1)
    assert not marker.exists()


def test_ray_init_without_the_token_cannot_join(private_cluster):
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_AUTH")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray would otherwise dial the machine's network address
    env["RAY_NUM_REDIS_GET_RETRIES"] = "3"  # give up after 3 refusals instead of 20 (one a second)
    code = f"import ray; ray.init(address='127.0.0.1:{private_cluster.gcs_port}', logging_level='ERROR'); print('JOINED')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0 and "JOINED" not in result.stdout
    assert "Authentication token is missing or incorrect" in result.stderr  # refused for the token


def test_the_token_is_in_no_command_line_and_no_file(private_cluster):
    token = private_cluster.token
    for process in private_cluster.processes:
        try:
            assert token not in " ".join(process.cmdline())
        except psutil.Error:
            continue
    session = next(arg.split("=", 1)[1] for process in private_cluster.processes if process.name() == "raylet"
                   for arg in process.cmdline() if arg.startswith("--session_dir="))
    searched = [path for folder in (Path(session), private_cluster.work, Path.home() / ".ray") if folder.exists()
                for path in folder.rglob("*") if path.is_file() and not path.is_socket()]
    assert any(path.suffix == ".parquet" for path in searched) and any(".log" in path.name for path in searched)
    assert [path for path in searched if token.encode() in path.read_bytes()] == []
