"""prefect.yaml: its deployments load the real flow, their parameters fit its signature, the cron
schedule is valid, and `prefect deploy --all` registers them on a Prefect API (the test harness)
as an operator would, with runs that can be created from them."""

from __future__ import annotations

import datetime as dt
import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.templating import apply_values

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
#: What README.md's deployment block exports (run from the checkout: DUBLINE_HOME=$PWD).
ENV = {"DUBLINE_HOME": str(ROOT), "DUBLINE_CATALOGUE": "s3://media/drop/", "DUBLINE_OUT": "s3://media/dubline/nightly"}


def readme_deployment_lines() -> list[str]:
    """The command lines of README.md's deployment block (shells 1-3), comments dropped."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if "prefect work-pool create" in b)
    lines = [re.split(r"\s+#\s", line, maxsplit=1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [d for d in config["deployments"] if d["name"] == name]
    return found


def templated(value: Any) -> Any:
    """``value`` with ``{{ $VAR }}`` filled from the environment the way `prefect deploy` fills it."""
    return apply_values(value, dict(os.environ), remove_notset=False)


@pytest.fixture
def deploy_env(monkeypatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the project root, as after the pull step


def test_prefect_yaml_matches_prefects_schema(config: dict[str, Any]) -> None:
    model = PrefectYamlModel.model_validate(config)
    assert [d.name for d in model.deployments] == ["nightly", "on-demand"]
    assert all(d.work_pool.name == "dubline-local" for d in model.deployments)
    (pull,) = config["pull"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DUBLINE_HOME }}"}}


@pytest.mark.parametrize("name", ["nightly", "on-demand"])
def test_entrypoint_is_the_catalogue_flow_and_parameters_bind(config: dict[str, Any], name: str, deploy_env) -> None:
    spec = deployment(config, name)
    flow = load_flow_from_entrypoint(spec["entrypoint"])
    assert isinstance(flow, Flow) and flow.name == "localize_catalogue"
    signature = inspect.signature(flow.fn)
    parameters = templated(spec["parameters"])
    assert "{{" not in str(parameters)
    if name == "nightly":
        bound = signature.bind(**parameters)  # complete: a scheduled run has nobody to ask
        assert (bound.arguments["catalogue"], bound.arguments["out"]) == (ENV["DUBLINE_CATALOGUE"], ENV["DUBLINE_OUT"])
    else:
        with pytest.raises(TypeError, match="catalogue"):
            signature.bind(**parameters)  # an operator names the catalogue and the run folder
        signature.bind(**parameters, catalogue="cat.yaml", out="runs/x")


def test_nightly_cron_fires_once_a_day(config: dict[str, Any]) -> None:
    (schedule,) = deployment(config, "nightly")["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # validates both
    from prefect._vendor.croniter import croniter  # what the Prefect server computes run times with

    times = croniter(cron.cron, dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc))
    first, second = times.get_next(dt.datetime), times.get_next(dt.datetime)
    assert first == dt.datetime(2026, 1, 2, 2, tzinfo=dt.timezone.utc) and second - first == dt.timedelta(days=1)


def test_unset_variables_stay_as_written() -> None:
    """Why the README says to export the variables before `prefect deploy`."""
    assert templated({"out": "{{ $DUBLINE_TEST_UNSET }}"}) == {"out": "{{ $DUBLINE_TEST_UNSET }}"}


@pytest.fixture(scope="module")
def registered(prefect_harness) -> dict[str, Any]:
    """README.md's deployment block run as written, in one shell in the checkout, against the
    harness's Prefect server instead of one on port 4200: the work pool, the exports,
    `prefect deploy --all` and both `prefect deployment run` lines. Only the two long-running
    lines (`prefect server start`, `prefect worker start`) and the API URL exports are left out."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    lines = readme_deployment_lines()
    kept = [line for line in lines if not re.search(r"prefect (server|worker) start|export PREFECT_API_URL=", line)]
    assert len(lines) - len(kept) == 4 and len(kept) == 5, lines
    assert f"export DUBLINE_HOME=$PWD DUBLINE_CATALOGUE={ENV['DUBLINE_CATALOGUE']} DUBLINE_OUT={ENV['DUBLINE_OUT']}" in kept
    with get_client(sync_client=True) as client:
        try:
            client.delete_work_pool("dubline-local")  # as on a server that never had it
        except Exception:  # noqa: BLE001 - not there
            pass
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-ec", "\n".join(kept)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        deployments = {name: client.read_deployment_by_name(f"localize_catalogue/{name}") for name in ("nightly", "on-demand")}
        for name, parameters in (("on-demand", {"catalogue": "s3://media/new.yaml", "out": "s3://media/dubline/new"}),
                                 ("nightly", {"catalogue": ENV["DUBLINE_CATALOGUE"], "out": ENV["DUBLINE_OUT"]})):
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployments[name].id])))
            (run,) = [r for r in runs if "auto-scheduled" not in r.tags]  # the README's, not a scheduler's
            assert {k: run.parameters[k] for k in parameters} == parameters and run.state.is_scheduled()
            client.delete_flow_run(run.id)  # nothing may pick them up later in the session
    return deployments


def test_deploy_registers_both_deployments(registered: dict[str, Any]) -> None:
    nightly, on_demand = registered["nightly"], registered["on-demand"]
    assert nightly.parameters == {"catalogue": ENV["DUBLINE_CATALOGUE"], "out": ENV["DUBLINE_OUT"], "executor": "ray"}
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)
    assert nightly.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert nightly.global_concurrency_limit.limit == 1
    assert on_demand.parameters == {"executor": "ray"} and not on_demand.schedules
    for spec in (nightly, on_demand):
        assert spec.work_pool_name == "dubline-local"
        assert spec.entrypoint == "flows/localize.py:localize_catalogue"
        assert spec.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        assert spec.enforce_parameter_schema
        assert set(spec.parameter_openapi_schema["required"]) == {"catalogue", "out"}
        assert spec.job_variables["env"]["RAY_USAGE_STATS_ENABLED"] == "0"


def test_on_demand_runs_need_a_catalogue_and_a_run_folder(registered: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client

    deployment_id = registered["on-demand"].id
    with get_client(sync_client=True) as client:
        with pytest.raises(Exception, match="'catalogue' is a required property"):
            client.create_flow_run_from_deployment(deployment_id, parameters={"out": "runs/x"})
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"catalogue": "cat/", "out": "runs/x"})
        try:
            assert run.parameters == {"executor": "ray", "catalogue": "cat/", "out": "runs/x"}
            assert run.state.is_scheduled() and run.work_pool_name == "dubline-local"
        finally:
            client.delete_flow_run(run.id)  # nothing may pick it up later in the session


def test_server_schedules_the_nightly_runs_at_two(registered: dict[str, Any]) -> None:
    """The call the server's scheduler makes for every deployment with an active schedule."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    deployment_id = registered["nightly"].id
    # Plain httpx: Prefect's client would retry a failing call for minutes. A 503 is the server's
    # "retry" (a retryable error such as its SQLite database briefly locked by its own services;
    # prefect.server.api.server.custom_internal_exception_handler): a few tries, a second apart.
    for attempt in range(5):
        response = httpx.post(f"{PREFECT_API_URL.value()}/deployments/{deployment_id}/schedule",
                              json={"min_runs": 3}, timeout=30)
        if response.status_code != 503:
            break
        time.sleep(1)
    assert response.status_code < 300, response.text
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        try:
            times = sorted(r.expected_start_time for r in runs if r.state.is_scheduled())
            assert len(times) >= 3
            assert all((t.hour, t.minute) == (2, 0) and t.utcoffset() == dt.timedelta(0) for t in times)
            assert all(r.parameters["out"] == ENV["DUBLINE_OUT"] for r in runs)
        finally:
            for run in runs:
                client.delete_flow_run(run.id)
