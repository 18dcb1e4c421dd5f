"""infra/: the files that run lisegagr beyond one machine parse, validate and agree with each other.

What can be checked without a Docker engine, a GPU or a Kubernetes API server is checked with
the tools' own parsers and models: Prefect's project-file model and deploy command, Dask's and
Prefect's command-line parsers, distributed's TLS settings, and `docker compose config` when the
Compose plugin is installed.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import datetime as dt
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
VENV_BIN = Path(sys.executable).parent
PREFECT_FILE = INFRA / "prefect.yaml"
COMPOSE_FILE = INFRA / "compose.yaml"
COMPOSE_TLS_FILE = INFRA / "compose.tls.yaml"
K8S = INFRA / "k8s"
TLS_SCRIPT = INFRA / "make-tls-certs.sh"
WORK_POOL = "lisegagr-gpu"
NIGHTLY_CRON = "0 2 * * *"
COMPOSE_SERVICES = {
    "postgres",
    "prefect-server",
    "dask-scheduler",
    "gpu-worker",
    "cpu-worker",
    "prefect-worker",
}
# The flows' parameters as the application's contract names them.
FLOW_CONTRACT = {
    "flows/region.py:region_flow": ["sources", "out", "config", "model", "scheduler"],
    "flows/nightly.py:nightly_flow": ["source", "out", "config", "model", "scheduler"],
}
PROGRAMS = {"dask", "prefect", "lisegagr"}


# --- helpers -------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


_COMPOSE_VARIABLE = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, applied to every string."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, op = match["name"], match["op"]
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op and op.endswith("-"):
            return str(match["arg"])
        if op and op.endswith("?"):
            raise KeyError(f"required variable {name}: {match['arg']}")
        return ""

    return _COMPOSE_VARIABLE.sub(replace, value)


def _compose(*files: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose files merged the way `docker compose -f A -f B` merges the parts used here."""
    merged: dict[str, Any] = {"services": {}}
    for path in files:
        doc = _interpolate(_load_yaml(path), env if env is not None else {"POSTGRES_PASSWORD": "x"})
        for name, service in doc.get("services", {}).items():
            target = merged["services"].setdefault(name, {})
            for key, value in service.items():
                if key == "environment":
                    target.setdefault(key, {}).update(value)
                elif key == "volumes":
                    target[key] = [*target.get(key, []), *value]
                else:
                    target[key] = value
        for key, value in doc.items():
            if key != "services":
                merged[key] = value
    return merged


def _secret_like(name: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY", name, re.IGNORECASE))


def _k8s_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a DaskCluster, DaskWorkerGroup, Deployment or Job."""
    kind = doc["kind"]
    if kind == "DaskCluster":
        specs = [doc["spec"]["worker"]["spec"], doc["spec"]["scheduler"]["spec"]]
    elif kind == "DaskWorkerGroup":
        specs = [doc["spec"]["worker"]["spec"]]
    elif kind in {"Deployment", "Job"}:
        specs = [doc["spec"]["template"]["spec"]]
    else:
        specs = []
    return [container for spec in specs for container in spec["containers"]]


def _k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _load_yaml_all(path)]


def _readme_commands() -> list[list[str]]:
    """Shell commands in infra/README.md's bash blocks, without leading VAR=value assignments."""
    text = (INFRA / "README.md").read_text()
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line)
            if argv[0] == "export":
                continue
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
                argv = argv[1:]
            if argv:
                commands.append(argv)
    return commands


def _infra_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command that the compose files, manifests and Dockerfile run."""
    commands: list[tuple[str, list[str]]] = []
    for path in (COMPOSE_FILE, COMPOSE_TLS_FILE):
        for name, service in _compose(path)["services"].items():
            if isinstance(service.get("command"), list):
                commands.append((f"{path.name}:{name}", service["command"]))
    for doc in _k8s_docs():
        for container in _k8s_containers(doc):
            argv: list[str] = container.get("command") or container.get("args") or []
            where = f"k8s {doc['kind']}/{doc['metadata']['name']}"
            if argv[:2] == ["sh", "-c"]:
                commands += [(where, shlex.split(part)) for part in argv[2].split("&&")]
            elif argv:
                commands.append((where, argv))
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD ["):
            commands.append(("Dockerfile CMD", json.loads(line[len("CMD ") :])))
    for argv in _readme_commands():
        commands.append(("README.md", argv))
    return commands


def _dask_cli() -> click.Group:
    """The `dask` command with its plugins (dask scheduler, dask worker, dask cuda ...)."""
    import dask.cli

    group = click.Group("dask", commands=dict(dask.cli.cli.commands))
    for entry_point in entry_points(group="dask_cli"):
        with contextlib.suppress(Exception):
            group.add_command(entry_point.load())
    return group


def _cli_refusal(group: Any, argv: list[str], *, check_values: bool = True) -> str | None:
    """Parse argv with a click-style command's own parser: None, or why it refuses.

    Duck-typed, because typer vendors its own copy of click. Without `check_values`, only the
    subcommands and option names are checked (a README's example paths need not exist).
    """
    command = group
    args = list(argv)
    while hasattr(command, "commands") and args and not args[0].startswith("-"):
        name, *args = args
        sub = command.get_command(command.context_class(command), name)
        if sub is None:
            return f"no command {name!r}"
        command = sub
    if not check_values:
        params = command.get_params(command.context_class(command))
        known = {opt for param in params for opt in param.opts + param.secondary_opts}
        unknown = [
            a.split("=")[0] for a in args if a.startswith("-") and a.split("=")[0] not in known
        ]
        return f"no option {', '.join(unknown)} in {command.name}" if unknown else None
    try:
        with command.make_context(command.name, args):
            return None
    except Exception as exc:
        if hasattr(exc, "format_message"):
            return str(exc.format_message())
        raise


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: Any, what: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up")
        time.sleep(0.3)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _process(
    argv: list[str], env: Mapping[str, str], log: Path, cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect or Dask settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    env.update(extra)
    return env


def _docker_compose_available() -> str | None:
    """Why `docker compose` cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return "the docker client has no Compose plugin (`docker compose version` failed)"
    return None


# --- every file ------------------------------------------------------------------------------


def test_every_yaml_file_in_infra_parses() -> None:
    paths = sorted(INFRA.rglob("*.yaml"))
    assert {p.relative_to(INFRA).as_posix() for p in paths} >= {
        "prefect.yaml",
        "compose.yaml",
        "compose.tls.yaml",
        "k8s/dask-cluster.yaml",
        "k8s/gpu-workers.yaml",
        "k8s/prefect-worker.yaml",
    }
    for path in paths:
        docs = _load_yaml_all(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), path


# --- prefect.yaml ----------------------------------------------------------------------------


def test_prefect_yaml_validates_against_prefects_project_model() -> None:
    pytest.importorskip("prefect")
    from prefect.cli.deploy._models import (
        DeploymentConfig,
        PrefectYamlModel,
        RawScheduleConfig,
        WorkPoolConfig,
    )

    raw = _load_yaml(PREFECT_FILE)
    model = PrefectYamlModel.model_validate(raw)
    assert len(model.deployments) == len(raw["deployments"])
    # Prefect's models ignore unknown keys, so a misspelt key would be dropped silently.
    top_level = {f.alias or name for name, f in PrefectYamlModel.model_fields.items()}
    assert set(raw) <= top_level | {"definitions"}
    for deployment in raw["deployments"]:
        assert set(deployment) <= set(DeploymentConfig.model_fields), deployment["name"]
        assert set(deployment["work_pool"]) <= set(WorkPoolConfig.model_fields)
        for schedule in deployment.get("schedules") or []:
            RawScheduleConfig.model_validate(schedule)


def test_prefect_yaml_declares_the_region_and_nightly_deployments() -> None:
    deployments = {d["name"]: d for d in _load_yaml(PREFECT_FILE)["deployments"]}
    assert set(deployments) == {"lisegagr-region", "lisegagr-nightly"}

    region, nightly = deployments["lisegagr-region"], deployments["lisegagr-nightly"]
    assert region["entrypoint"] == "flows/region.py:region_flow"
    assert region["schedules"] == []
    assert nightly["entrypoint"] == "flows/nightly.py:nightly_flow"
    [schedule] = nightly["schedules"]
    assert schedule["cron"] == NIGHTLY_CRON and schedule["timezone"]
    assert set(nightly["parameters"]) == {"source", "out"}
    assert all("{{ $" in value for value in nightly["parameters"].values())
    for deployment in deployments.values():
        assert deployment["work_pool"]["name"] == WORK_POOL


def test_nightly_schedule_fires_at_two_in_its_timezone_every_day() -> None:
    pytest.importorskip("prefect")
    from zoneinfo import ZoneInfo

    from prefect.client.schemas.schedules import CronSchedule as ClientCronSchedule
    from prefect.server.schemas.schedules import CronSchedule

    nightly = {d["name"]: d for d in _load_yaml(PREFECT_FILE)["deployments"]}["lisegagr-nightly"]
    for schedule in nightly["schedules"]:
        ClientCronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        server = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        start = dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC)  # across a DST change in Europe
        dates = asyncio.run(server.get_dates(n=3, start=start))
        zone = ZoneInfo(schedule["timezone"])
        local = [d.astimezone(zone) for d in dates]
        assert [(d.hour, d.minute) for d in local] == [(2, 0)] * 3
        assert [d.date() for d in local] == [
            start.astimezone(zone).date() + dt.timedelta(days=i) for i in (1, 2, 3)
        ]


def test_pull_steps_are_prefect_step_functions_called_with_their_parameters() -> None:
    pytest.importorskip("prefect")
    from prefect.utilities.importtools import import_object

    raw = _load_yaml(PREFECT_FILE)
    steps = list(raw["pull"]) + [s for d in raw["deployments"] for s in d.get("pull") or []]
    assert any("set_working_directory" in name for step in steps for name in step)
    for step in steps:
        [(name, kwargs)] = step.items()
        function = import_object(name)
        inspect.signature(function).bind(**kwargs)


def test_job_variables_are_variables_of_a_process_work_pool() -> None:
    pytest.importorskip("prefect")
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    allowed = set(template["variables"]["properties"])
    for deployment in _load_yaml(PREFECT_FILE)["deployments"]:
        assert set(deployment["work_pool"].get("job_variables") or {}) <= allowed


def test_entrypoints_are_flow_functions_with_the_contracted_parameters() -> None:
    missing = [e for e in FLOW_CONTRACT if not (REPO / e.split(":")[0]).is_file()]
    if missing:
        pytest.skip(f"flow files not written yet: {', '.join(missing)}")
    for deployment in _load_yaml(PREFECT_FILE)["deployments"]:
        entrypoint = deployment["entrypoint"]
        file_name, function_name = entrypoint.split(":")
        tree = ast.parse((REPO / file_name).read_text())
        functions = {
            node.name: node
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert function_name in functions, f"{entrypoint}: no top-level function {function_name}"
        function = functions[function_name]
        decorators = [ast.unparse(d) for d in function.decorator_list]
        assert any(re.match(r"(prefect\.)?flow\b", d) for d in decorators), entrypoint
        arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
        names = [a.arg for a in arguments]
        assert names[: len(FLOW_CONTRACT[entrypoint])] == FLOW_CONTRACT[entrypoint], entrypoint
        assert set(deployment["parameters"]) <= set(names), entrypoint


def test_environment_placeholders_of_prefect_yaml_are_documented() -> None:
    names = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", json.dumps(_load_yaml(PREFECT_FILE))))
    assert names == {"LISEGAGR_HOME", "LISEGAGR_NIGHTLY_SOURCE", "LISEGAGR_NIGHTLY_OUT"}
    readme = (INFRA / "README.md").read_text()
    assert all(name in readme for name in names)


_STUB_REGION = """\
from prefect import flow


@flow
def region_flow(sources: list[str], out: str, config: str | None = None,
                model: str | None = None, scheduler: str | None = None) -> None:
    pass
"""
_STUB_NIGHTLY = """\
import json
import os

from prefect import flow


@flow
def nightly_flow(source: str, out: str, config: str | None = None,
                 model: str | None = None, scheduler: str | None = None) -> None:
    with open(out, "w") as f:
        json.dump({"source": source, "cwd": os.getcwd()}, f)
"""


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_process_worker_runs_the_nightly_flow(tmp_path: Path) -> None:
    """`prefect deploy --all` on a throw-away server, then one flow run through the work pool.

    The flows are stand-ins with the contracted signatures, so that this checks the deployment
    file (schedules, parameters, pull step, pool), not the application.
    """
    pytest.importorskip("prefect")
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "infra").mkdir()
    (project / "flows" / "region.py").write_text(_STUB_REGION)
    (project / "flows" / "nightly.py").write_text(_STUB_NIGHTLY)
    shutil.copy(PREFECT_FILE, project / "infra" / "prefect.yaml")
    nightly_out = tmp_path / "nightly.json"

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = _clean_env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
    )
    server_argv = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
    server_argv += ["--port", str(port)]
    with _process(server_argv, base_env, tmp_path / "server.log", tmp_path) as server:
        _wait_for(lambda: _http_ok(f"{api}/health"), "the Prefect server", 90, server)
        env = {**base_env, "PREFECT_API_URL": api}

        def prefect(*args: str, cwd: Path = project, **extra: str) -> str:
            result = subprocess.run(
                [str(VENV_BIN / "prefect"), *args],
                env={**env, **extra},
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        prefect("work-pool", "create", WORK_POOL, "--type", "process")
        prefect(
            "deploy",
            "--all",
            "--prefect-file",
            "infra/prefect.yaml",
            LISEGAGR_NIGHTLY_SOURCE="s3://imagery/county/",
            LISEGAGR_NIGHTLY_OUT=str(nightly_out),
        )

        request = urllib.request.Request(
            f"{api}/deployments/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            deployments = {d["name"]: d for d in json.load(response)}
        assert set(deployments) == {"lisegagr-region", "lisegagr-nightly"}
        region, nightly = deployments["lisegagr-region"], deployments["lisegagr-nightly"]
        assert region["schedules"] == []
        [schedule] = nightly["schedules"]
        assert schedule["active"] is True
        assert schedule["schedule"]["cron"] == NIGHTLY_CRON
        assert nightly["parameters"] == {
            "source": "s3://imagery/county/",
            "out": str(nightly_out),
        }
        assert nightly["global_concurrency_limit"]["limit"] == 1
        for deployment in (region, nightly):
            assert deployment["work_pool_name"] == WORK_POOL
            assert deployment["pull_steps"] == _load_yaml(PREFECT_FILE)["pull"]

        request = urllib.request.Request(
            f"{api}/deployments/{nightly['id']}/create_flow_run",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).close()
        # The worker runs from elsewhere: the pull step must move the run into LISEGAGR_HOME.
        prefect(
            "worker",
            "start",
            "--pool",
            WORK_POOL,
            "--run-once",
            cwd=tmp_path,
            LISEGAGR_HOME=str(project),
        )
    ran = json.loads(nightly_out.read_text())
    assert ran == {"source": "s3://imagery/county/", "cwd": str(project)}


# --- compose ---------------------------------------------------------------------------------


def test_compose_declares_the_services_each_with_a_healthcheck() -> None:
    services = _compose(COMPOSE_FILE)["services"]
    assert set(services) == COMPOSE_SERVICES
    for name, service in services.items():
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), name


def test_compose_publishes_ports_on_loopback_only() -> None:
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_TLS_FILE)):
        published = 0
        for name, service in _compose(*files)["services"].items():
            assert service.get("network_mode") != "host", name
            for port in service.get("ports", []):
                host, _, _ = str(port).rpartition(":")[0].rpartition(":")
                assert host == "127.0.0.1", f"{name} publishes {port}"
                published += 1
        assert published >= 3


def test_compose_passwords_come_from_variables_and_are_required() -> None:
    for path in (COMPOSE_FILE, COMPOSE_TLS_FILE, INFRA / ".env.example"):
        text = path.read_text()
        assert not re.search(r"://[^/\s:@]+:(?!\$\{)[^@\s]+@", text), f"{path}: password in a URL"
    raw = _load_yaml(COMPOSE_FILE)
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if _secret_like(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {key}"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _compose(COMPOSE_FILE, env={})
    for line in (INFRA / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#") and _secret_like(line.split("=")[0]):
            assert line.split("=", 1)[1] == "", line


def test_compose_prefect_server_keeps_its_state_in_postgres() -> None:
    services = _compose(COMPOSE_FILE, env={"POSTGRES_PASSWORD": "pw"})["services"]
    postgres, server = services["postgres"], services["prefect-server"]
    assert postgres["image"].startswith("postgres:16")
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and ":pw@postgres:" in url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["image"] == "prefecthq/prefect:3-python3.11"
    assert server["command"][:3] == ["prefect", "server", "start"]
    assert server["command"][server["command"].index("--host") + 1] == "0.0.0.0"


def test_compose_gpu_worker_reserves_gpus_and_only_it_declares_the_gpu_resource() -> None:
    services = _compose(COMPOSE_FILE)["services"]
    gpu = services["gpu-worker"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["command"][:3] == ["dask", "cuda", "worker"]
    assert gpu["command"][gpu["command"].index("--resources") + 1] == "GPU=1"
    for name, service in services.items():
        if name != "gpu-worker":
            assert "--resources" not in (service.get("command") or []), name
    assert services["cpu-worker"]["command"][:2] == ["dask", "worker"]
    assert "--nthreads" in services["cpu-worker"]["command"]
    worker = services["prefect-worker"]["command"]
    assert worker[:3] == ["prefect", "worker", "start"]
    assert worker[worker.index("--pool") + 1] == WORK_POOL
    assert worker[worker.index("--type") + 1] == "process"


def test_compose_tls_override_encrypts_every_dask_connection() -> None:
    services = _compose(COMPOSE_FILE, COMPOSE_TLS_FILE)["services"]
    roles = {
        "dask-scheduler": "SCHEDULER",
        "gpu-worker": "WORKER",
        "cpu-worker": "WORKER",
        "prefect-worker": "CLIENT",
    }
    for name, role in roles.items():
        env = services[name]["environment"]
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True", name
        for key in ("CA_FILE", f"{role}__CERT", f"{role}__KEY"):
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{key}"].startswith("/tls/"), (name, key)
        assert any(str(v).endswith(":/tls:ro") for v in services[name]["volumes"]), name
    scheduler = services["dask-scheduler"]["command"]
    assert scheduler[scheduler.index("--protocol") + 1] == "tls"
    assert "tls://dask-scheduler:8786" in services["gpu-worker"]["command"]
    assert "tls://dask-scheduler:8786" in services["cpu-worker"]["command"]
    assert services["prefect-worker"]["environment"]["DASK_SCHEDULER_ADDRESS"].startswith("tls://")
    assert "--resources" in services["gpu-worker"]["command"]


def test_docker_compose_config_accepts_the_files(tmp_path: Path) -> None:
    reason = _docker_compose_available()
    if reason:
        pytest.skip(reason)
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")

    def config(*files: Path, **env: str) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "--env-file", str(empty_env_file)]
        for path in files:
            argv += ["-f", str(path)]
        return subprocess.run(
            [*argv, "config", "--format", "json"],
            env={**_clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_TLS_FILE)):
        result = config(*files, POSTGRES_PASSWORD="x")
        assert result.returncode == 0, result.stderr
        services = json.loads(result.stdout)["services"]
        assert set(services) == COMPOSE_SERVICES
        for service in services.values():
            assert all(p["host_ip"] == "127.0.0.1" for p in service.get("ports", []))
    refused = config(COMPOSE_FILE)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_cuda_image_with_dask_cuda() -> None:
    dockerfile = pytest.importorskip("dockerfile", reason="the dockerfile parser (dev extra)")
    commands = dockerfile.parse_file(str(INFRA / "Dockerfile"))
    args = {c.value[0].split("=")[0]: c.value[0] for c in commands if c.cmd == "ARG"}
    [base] = [c.value[0] for c in commands if c.cmd == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]].split("=", 1)[1], base)
    assert "cuda" in base, base
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "DASK_CUDA_SPEC" in runs and "dask-cuda" in args["DASK_CUDA_SPEC"]
    assert "pip install" in runs
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    last_run = max(i for i, c in enumerate(commands) if c.cmd == "RUN")
    last_user = max(i for i, c in enumerate(commands) if c.cmd == "USER")
    assert last_user > last_run, "the last RUN must not leave the image running as root"
    envs = " ".join(" ".join(c.value) for c in commands if c.cmd == "ENV")
    assert "LISEGAGR_WEIGHTS_DIR" in envs and "LISEGAGR_HOME" in envs
    [cmd] = [c for c in commands if c.cmd == "CMD"]
    assert cmd.json and cmd.value[0] in PROGRAMS


def test_dockerignore_keeps_the_venv_secrets_and_checkpoints_out_of_the_image() -> None:
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    for pattern in (
        ".venv",
        ".git",
        "weights/*.pth",
        "infra/.env",
        "infra/lisegagr.env",
        "infra/tls",
    ):
        assert pattern in ignored, pattern


# --- Kubernetes ------------------------------------------------------------------------------


def test_k8s_dask_cluster_and_gpu_worker_group_for_the_dask_operator() -> None:
    cluster = _load_yaml(K8S / "dask-cluster.yaml")
    group = _load_yaml(K8S / "gpu-workers.yaml")
    assert cluster["apiVersion"] == group["apiVersion"] == "kubernetes.dask.org/v1"
    assert (cluster["kind"], group["kind"]) == ("DaskCluster", "DaskWorkerGroup")
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    assert cluster["spec"]["scheduler"]["service"]["type"] == "ClusterIP"

    [gpu] = _k8s_containers(group)
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["args"][:3] == ["dask", "cuda", "worker"]
    assert gpu["args"][gpu["args"].index("--resources") + 1] == "GPU=1"

    worker, scheduler = _k8s_containers(cluster)
    assert worker["args"][:2] == ["dask", "worker"] and "--resources" not in worker["args"]
    assert "nvidia.com/gpu" not in worker.get("resources", {}).get("limits", {})
    assert scheduler["args"][:2] == ["dask", "scheduler"]


def test_k8s_dask_resource_quantities_are_strings_as_the_operator_crds_require() -> None:
    """The operator's CRDs type resources.limits/requests values as strings: 1 is refused."""
    for doc in (_load_yaml(K8S / "dask-cluster.yaml"), _load_yaml(K8S / "gpu-workers.yaml")):
        for container in _k8s_containers(doc):
            for quantities in container.get("resources", {}).values():
                assert all(isinstance(v, str) for v in quantities.values()), container["name"]


def test_k8s_dask_resources_validate_against_the_operators_crd_schemas() -> None:
    spec = importlib.util.find_spec("dask_kubernetes")
    if spec is None or spec.origin is None:
        pytest.skip("dask-kubernetes is not installed: its CRD schemas are not available")
    jsonschema = pytest.importorskip("jsonschema")
    crds = Path(spec.origin).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"
    for crd_file, manifest in (
        ("daskcluster.yaml", "dask-cluster.yaml"),
        ("daskworkergroup.yaml", "gpu-workers.yaml"),
    ):
        crd = _load_yaml(crds / crd_file)
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        jsonschema.validate(_load_yaml(K8S / manifest), version["schema"]["openAPIV3Schema"])


def test_k8s_prefect_worker_polls_the_pool_with_the_api_url_from_a_configmap() -> None:
    docs = {doc["kind"]: doc for doc in _load_yaml_all(K8S / "prefect-worker.yaml")}
    config_map, deployment = docs["ConfigMap"], docs["Deployment"]
    assert config_map["data"]["PREFECT_API_URL"].endswith("/api")
    [container] = _k8s_containers(deployment)
    command = container["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == WORK_POOL
    assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"]
    env = {e["name"]: e["value"] for e in container["env"]}
    cluster_name = _load_yaml(K8S / "dask-cluster.yaml")["metadata"]["name"]
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{cluster_name}-scheduler:8786"
    assert env["LISEGAGR_HOME"] == "/opt/lisegagr"


def test_k8s_pods_run_as_non_root_and_read_secrets_from_secret_objects() -> None:
    for doc in _k8s_docs():
        if doc["kind"] in {"DaskCluster", "DaskWorkerGroup", "Deployment", "Job"}:
            for container in _k8s_containers(doc):
                for env in container.get("env", []):
                    assert not (_secret_like(env["name"]) and "value" in env), env["name"]
    for doc in _k8s_docs():
        if doc["kind"] == "ConfigMap":
            assert not any(_secret_like(key) for key in doc["data"])


# --- commands --------------------------------------------------------------------------------


def test_programs_named_in_infra_are_installed_in_the_venv() -> None:
    programs = {argv[0] for _, argv in _infra_commands() if argv[0] in PROGRAMS | {"docker"}}
    assert programs >= PROGRAMS
    for program in programs - {"docker"}:
        assert (VENV_BIN / program).exists(), f"{program} is not in {VENV_BIN}"


def test_dask_commands_parse_with_dasks_own_command_line() -> None:
    group = _dask_cli()
    pending = []
    for where, argv in _infra_commands():
        if argv[0] != "dask":
            continue
        if argv[1] not in group.commands:
            pending.append(f"{where}: dask {argv[1]} (not installed here)")
            continue
        refusal = _cli_refusal(group, argv[1:])
        assert refusal is None, f"{where}: {shlex.join(argv)}: {refusal}"
    assert len(pending) < len([argv for _, argv in _infra_commands() if argv[0] == "dask"])


def test_prefect_commands_parse_with_prefects_own_command_line() -> None:
    pytest.importorskip("prefect")
    import prefect.cli  # noqa: F401  (registers the commands)
    from prefect.cli._app import _app

    commands = [(w, a) for w, a in _infra_commands() if a[0] == "prefect"]
    assert commands
    for where, argv in commands:
        try:
            _app.parse_args(argv[1:])
        except Exception as exc:  # cyclopts' errors share no public base class
            pytest.fail(f"{where}: {shlex.join(argv)}: {exc}")


def test_lisegagr_commands_in_the_readme_exist() -> None:
    import typer.main

    from lisegagr.cli import app

    group = typer.main.get_command(app)
    commands = [argv for _, argv in _infra_commands() if argv[0] == "lisegagr"]
    assert commands
    not_yet = []
    for argv in commands:
        refusal = _cli_refusal(group, argv[1:], check_values=False)
        if refusal is not None:
            not_yet.append(f"{shlex.join(argv)} ({refusal})")
    if not_yet:
        pytest.skip("the CLI does not offer these yet: " + "; ".join(not_yet))


# --- TLS -------------------------------------------------------------------------------------


def test_tls_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(TLS_SCRIPT)], check=True, timeout=30)
    assert os.access(TLS_SCRIPT, os.X_OK)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    out = tmp_path_factory.mktemp("tls") / "certs"
    subprocess.run(["bash", str(TLS_SCRIPT), str(out)], check=True, capture_output=True, timeout=60)
    return out


def test_tls_script_makes_certificates_that_distributed_loads(tls_dir: Path) -> None:
    from distributed.security import Security

    security = Security(
        tls_ca_file=str(tls_dir / "ca.pem"),
        tls_scheduler_cert=str(tls_dir / "scheduler.pem"),
        tls_scheduler_key=str(tls_dir / "scheduler-key.pem"),
        tls_worker_cert=str(tls_dir / "worker.pem"),
        tls_worker_key=str(tls_dir / "worker-key.pem"),
        tls_client_cert=str(tls_dir / "client.pem"),
        tls_client_key=str(tls_dir / "client-key.pem"),
        require_encryption=True,
    )
    for role in ("scheduler", "worker", "client"):
        assert security.get_connection_args(role)["ssl_context"] is not None
        assert security.get_listen_args(role)["ssl_context"] is not None
    assert (tls_dir / "worker-key.pem").stat().st_mode & 0o077 == 0


def test_tls_script_refuses_to_replace_an_existing_ca(tls_dir: Path) -> None:
    again = subprocess.run(
        ["bash", str(TLS_SCRIPT), str(tls_dir)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode != 0 and "-f" in again.stderr


@pytest.mark.slow
def test_compose_tls_settings_connect_scheduler_worker_and_client(
    tls_dir: Path, tmp_path: Path
) -> None:
    """The TLS override's commands and DASK_* settings, run for real on 127.0.0.1."""
    import dask.config
    from distributed import Client

    services = _compose(COMPOSE_TLS_FILE)["services"]

    def settings(service: str) -> dict[str, str]:
        return {
            key: str(value).replace("/tls/", f"{tls_dir}/")
            for key, value in services[service]["environment"].items()
            if key.startswith("DASK_")
        }

    port = _free_port()
    address = f"tls://127.0.0.1:{port}"
    local = {
        "0.0.0.0": "127.0.0.1",
        "8786": str(port),
        ":8787": "127.0.0.1:0",
        "127.0.0.1:8788": "127.0.0.1:0",
        "tls://dask-scheduler:8786": address,
        "/tmp/dask": str(tmp_path / "dask"),
    }
    scheduler_argv = [local.get(a, a) for a in services["dask-scheduler"]["command"]]
    worker_argv = [local.get(a, a) for a in services["cpu-worker"]["command"]]
    worker_argv += ["--host", "127.0.0.1", "--resources", "GPU=1"]
    scheduler_env = _clean_env(**settings("dask-scheduler"))
    worker_env = _clean_env(**settings("cpu-worker"))
    client_settings = {
        key[len("DASK_") :].lower().replace("__", "."): dask.config.interpret_value(value)
        for key, value in settings("prefect-worker").items()
    }

    with _process(
        [str(VENV_BIN / scheduler_argv[0]), *scheduler_argv[1:]],
        scheduler_env,
        tmp_path / "scheduler.log",
        tmp_path,
    ) as scheduler:
        _wait_for(lambda: _port_open(port), "the TLS scheduler", 60, scheduler)
        with _process(
            [str(VENV_BIN / worker_argv[0]), *worker_argv[1:]],
            worker_env,
            tmp_path / "worker.log",
            tmp_path,
        ):
            with dask.config.set(client_settings), Client(address, timeout=30) as client:
                client.wait_for_workers(1, timeout=60)
                [worker] = client.scheduler_info()["workers"].values()
                assert worker["resources"] == {"GPU": 1}
                assert client.submit(sum, [20, 22], resources={"GPU": 1}).result(timeout=30) == 42
            with pytest.raises((OSError, TimeoutError)):
                Client(f"tcp://127.0.0.1:{port}", timeout=3).close()
