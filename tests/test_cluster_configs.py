"""cluster/: the `ray up` config and the KubeRay manifest as Ray's own tools read them, the worker
image's install order, and the stage placement table of cluster/README.md against the code.
(Nothing here starts a cloud cluster, Kubernetes or Docker: none is available to the tests.)"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
GPU_STAGES = {"coeffs", "enhance"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.fixture(scope="module")
def ray_up() -> dict[str, Any]:
    """ray-cluster.yaml filled out and validated the way `ray up` does before launching."""
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    config = prepare_config(load("ray-cluster.yaml"))
    validate_config(config)
    return config


def test_ray_up_node_types(ray_up: dict[str, Any]) -> None:
    types = ray_up["available_node_types"]
    assert ray_up["head_node_type"] == "head" and set(types) == {"head", "cpu_workers", "gpu_workers"}
    gpu = types["gpu_workers"]
    assert 1 <= gpu["min_workers"] < gpu["max_workers"]
    assert types["cpu_workers"]["min_workers"] < types["cpu_workers"]["max_workers"]
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != "head") <= ray_up["max_workers"]
    # GPU instances only where GPUs are meant to be (g*/p* families carry NVIDIA GPUs)
    family = {name: t["node_config"]["InstanceType"].split(".")[0] for name, t in types.items()}
    assert family["gpu_workers"][0] in "gp" and family["head"][0] not in "gp" and family["cpu_workers"][0] not in "gp"


def test_ray_up_setup_and_start(ray_up: dict[str, Any]) -> None:
    setup = ray_up["setup_commands"]
    torch = next(i for i, c in enumerate(setup) if '"torch==2.13.0"' in c)
    dubline = next(i for i, c in enumerate(setup) if "-e ~/dubline" in c)
    mediapipe = next(i for i, c in enumerate(setup) if "mediapipe==0.10.21" in c)
    assert torch < dubline < mediapipe and "--no-deps" in setup[mediapipe]
    assert "--index-url" not in setup[torch]  # PyPI's Linux wheel is the CUDA build
    assert ray_up["file_mounts"]["~/dubline"] == "."
    head = " ".join(ray_up["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    for commands in (ray_up["head_start_ray_commands"], ray_up["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in commands[-1]
    assert ray_up["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.fixture(scope="module")
def kuberay() -> tuple[dict[str, Any], dict[str, Any]]:
    """The RayCluster manifest and the node types Ray's KubeRay autoscaler derives from it."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    manifest = load("kuberay-raycluster.yaml")
    return manifest, _derive_autoscaling_config_from_ray_cr(manifest)  # validates the result too


def test_kuberay_groups_and_gpus(kuberay) -> None:
    manifest, autoscaling = kuberay
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    spec = manifest["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    types = autoscaling["available_node_types"]
    assert set(types) == {"headgroup", "cpu", "gpu"}
    assert "GPU" not in types["headgroup"]["resources"] and "GPU" not in types["cpu"]["resources"]
    assert types["gpu"]["resources"]["GPU"] == 1
    assert 1 <= types["gpu"]["min_workers"] < types["gpu"]["max_workers"]
    assert types["cpu"]["min_workers"] < types["cpu"]["max_workers"]
    (gpu_group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_kuberay_access_and_versions(kuberay) -> None:
    manifest, _ = kuberay
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    build_tag = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", (CLUSTER / "Dockerfile").read_text())[1]
    groups = [head, *spec["workerGroupSpecs"]]
    assert {c["image"] for g in groups for c in g["template"]["spec"]["containers"]} == {build_tag}


def dockerfile_runs() -> list[list[str]]:
    """The RUN instructions of the Dockerfile, as shell words (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    return [shlex.split(line[4:]) for line in text.splitlines() if line.startswith("RUN ")]


def test_dockerfile_installs_torch_then_dubline_then_mediapipe() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+$", text, re.M)
    runs = dockerfile_runs()
    pip = [(i, words) for i, words in enumerate(runs) if words[:2] == ["pip", "install"]]
    torch = next(i for i, words in pip if "torch==2.13.0" in words)
    dubline = next(i for i, words in pip if words[2:] == ["-e", "."])
    mediapipe = next(i for i, words in pip if "mediapipe==0.10.21" in words)
    assert torch < dubline < mediapipe
    assert runs[torch] == ["pip", "install", "torch==2.13.0"]  # from PyPI: the CUDA build on Linux
    assert runs[mediapipe] == ["pip", "install", "--no-deps", "mediapipe==0.10.21"]
    assert importlib.metadata.version("mediapipe") == "0.10.21"  # the version the test suite runs
    assert any("python3.11" in words for words in runs)


def test_readme_stage_table_matches_the_code() -> None:
    import dubline.flows.tasks  # noqa: F401 - imports every stage the flows run
    from dubline.cluster.policy import policy_for
    from dubline.stages.base import Stage

    def subclasses(cls: type) -> list[type]:
        return [s for sub in cls.__subclasses__() for s in (sub, *subclasses(sub))]

    stages = {s.name: s for s in subclasses(Stage) if s.__module__.startswith("dubline.stages.") and "name" in s.__dict__}
    table = {}
    for line in (CLUSTER / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in stages:
            table[cells[0]] = cells
    assert set(table) == set(stages)
    for name, (_, cpus, gpus, memory, workers, runs_on) in table.items():
        declared = stages[name].resources
        assert (float(cpus), float(gpus), float(memory.removesuffix(" GB"))) == (
            declared.cpus, declared.gpus, declared.memory_gb), name
        assert int(workers) == policy_for(name).max_workers, name
        assert runs_on.startswith("GPU nodes" if declared.gpus else "CPU nodes"), name
    assert {n for n, s in stages.items() if s.resources.gpus} == GPU_STAGES
