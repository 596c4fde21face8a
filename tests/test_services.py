"""A command's Prefect server and private Ray, started while the driver imports the flow
(``flows/services.py``): both up before the flow runs, the Ray token never in the Prefect server's
environment, both stopped at the end. Run in a process of its own, with no Prefect server or Ray
address configured, as a user's first command is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")]

SCRIPT = """
import json, os, urllib.request
from dubline.flows import console, services

console.prepare_env(verbose=False)
started = services.start_early("ray", None)
from dubline.flows.localize import localize_catalogue  # what the command imports meanwhile
started.wait()

import ray
from prefect.server.api.server import SubprocessASGIServer

server = SubprocessASGIServer()
with urllib.request.urlopen(server.api_url + "/health", timeout=10) as answer:
    healthy = answer.status == 200
with open(f"/proc/{server.server_process.pid}/environ", "rb") as env:
    server_env = {line.split(b"=", 1)[0].decode() for line in env.read().split(b"\\0") if b"=" in line}
process = server.server_process
report = {"healthy": healthy, "ray": ray.is_initialized(), "token_in_ray": "RAY_AUTH_TOKEN" in os.environ,
          "token_in_server": "RAY_AUTH_TOKEN" in server_env}
started.stop()
report.update(server_stopped=process.poll() is not None, ray_after=ray.is_initialized(),
              token_after="RAY_AUTH_TOKEN" in os.environ)
print(json.dumps(report))
"""


def test_prefect_and_ray_start_together_and_the_ray_token_stays_out_of_prefect(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_PROFILE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["PREFECT_HOME"] = str(tmp_path)  # Prefect's default profile and a database of its own
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"healthy": True, "ray": True, "token_in_ray": True, "token_in_server": False,
                      "server_stopped": True, "ray_after": False, "token_after": False}
