"""The scale-out deployment (docker-compose.yaml and deploy/) holds together.

No Docker engine is needed: the compose file is interpolated as Compose does it and
validated against the official Compose Specification schema vendored in
deploy/schema/; images, build contexts, Dockerfile targets and the files they copy,
bind-mounted configs, health checks, the GPU reservation, Prometheus targets, the
Grafana dashboard, the StatsD mapping (against the installed Airflow's metrics
registry) and the extra lock files are checked against each other and the repo.
The integration tests run the compose file's own command lines for the MLflow
server (on a throw-away PostgreSQL initialised by the compose init script) and the
Spark standalone cluster on this machine's loopback, with their health checks, and two
processes sharing one Optuna study in that PostgreSQL's tuning database.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml
from pgserver import free_port, postgres_server

from deploy.rehearsal.compose import VARIABLE, interpolate, load_compose, read_env_file, variables
from pipelines.config import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yaml"
DEPLOY = REPO_ROOT / "deploy"
SCHEMA = DEPLOY / "schema" / "compose-spec.json"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
MAKE_ENV = DEPLOY / "make_env.py"
LINES = sorted(p.stem for p in (REPO_ROOT / "include" / "lines").glob("*.yaml"))

# Services without a health check, and why (deploy/README.md says the same).
NO_HEALTHCHECK = {
    "airflow-init": "one-shot: migrates the database and exits; the others wait for it to complete",
    "airflow-cli": "one-off commands (profile `cli`), not a service that stays up",
}

# ----------------------------------------------------------------------------- helpers

def make_env_module():
    spec = importlib.util.spec_from_file_location("make_env", MAKE_ENV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SECRETS = sorted(make_env_module().SECRETS)


def secret_uses(value):
    """``(name, operator)`` of every variable use in a loaded compose file."""
    if isinstance(value, dict):
        for v in value.values():
            yield from secret_uses(v)
    elif isinstance(value, list):
        for v in value:
            yield from secret_uses(v)
    elif isinstance(value, str):
        for m in VARIABLE.finditer(value):
            if not m.group("escaped"):
                yield m.group("braced") or m.group("named"), m.group("op")


def run_make_env(*args: str) -> subprocess.CompletedProcess:
    """deploy/make_env.py as a user runs it, under a umask that would let anyone read."""
    return subprocess.run(["bash", "-c", 'umask 000; exec "$0" "$@"', sys.executable, str(MAKE_ENV), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """A .env made by deploy/make_env.py from .env.example."""
    path = tmp_path_factory.mktemp("deploy-env") / ".env"
    done = run_make_env("--output", str(path))
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def compose(env_file) -> dict:
    return load_compose(read_env_file(env_file))


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def dockerfile_of(build: dict | str) -> tuple[Path, Path]:
    if isinstance(build, str):
        build = {"context": build}
    context = (REPO_ROOT / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def dockerfile_stages(text: str) -> dict[str, str]:
    """``stage name -> base`` of every ``FROM base AS name``."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)}


def logical_lines(text: str) -> list[str]:
    return [line for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def container_ports(service: dict) -> set[int]:
    ports = {int(p) for p in service.get("expose", [])}
    for p in service.get("ports", []):
        target = p["target"] if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
        ports.add(int(target))
    return ports


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """``(type, source, target)`` of every volume entry (short syntax)."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["type"], v.get("source", ""), v["target"]))
            continue
        parts = v.split(":")
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((kind, source, target))
    return out


# ----------------------------------------------------------------------------- schema


def test_vendored_schema_is_the_official_compose_spec():
    source = (DEPLOY / "schema" / "SOURCE.md").read_text()
    recorded = re.search(r"\| sha256 \| ([0-9a-f]{64}) \|", source).group(1)
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded, "deploy/schema/compose-spec.json was edited"
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (DEPLOY / "schema" / "LICENSE.compose-spec").read_text().lstrip().startswith("Apache License")


def test_compose_file_is_valid_compose_spec(validator, env_file):
    errors = sorted(validator.iter_errors(load_compose(read_env_file(env_file))), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:20])


def test_schema_validation_is_not_vacuous(validator, compose):
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["healthcheck"]["retires"] = 5  # a typo Compose would reject
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"] = "all"
    assert list(validator.iter_errors(broken))


def test_every_compose_variable_is_documented_in_env_example():
    # $${HOSTNAME} and the like are escaped: the container's shell expands them, not Compose
    used = variables(yaml.safe_load(COMPOSE.read_text()))
    documented = set(read_env_file(ENV_EXAMPLE))
    assert used - documented == set(), f"set in docker-compose.yaml but not in .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f"in .env.example but unused: {sorted(documented - used)}"


# ----------------------------------------------------------------------------- secrets


def test_every_secret_is_required_and_has_no_default():
    """A password, secret or key has no default in docker-compose.yaml (``${NAME:?...}``
    everywhere it is used) and no usable value in .env.example."""
    uses = list(secret_uses(yaml.safe_load(COMPOSE.read_text())))
    secretish = {name for name, _ in uses if re.search(r"PASSWORD|SECRET|FERNET|_KEY$|TOKEN", name)}
    assert secretish == set(SECRETS), "deploy/make_env.py and docker-compose.yaml disagree on the secrets"
    loose = sorted({f"${{{name}{op or ''}...}}" for name, op in uses if name in SECRETS and op != ":?"})
    assert loose == [], f"secrets with a default or optional in docker-compose.yaml: {loose}"
    example = read_env_file(ENV_EXAMPLE)
    assert {name: example[name] for name in SECRETS} == dict.fromkeys(SECRETS, "")


def test_compose_refuses_to_render_without_its_secrets(env_file):
    raw = yaml.safe_load(COMPOSE.read_text())
    for env in ({}, read_env_file(ENV_EXAMPLE)):
        with pytest.raises(ValueError, match="required variable"):
            interpolate(raw, env)
    full = read_env_file(env_file)
    for name in SECRETS:
        for env in ({k: v for k, v in full.items() if k != name}, {**full, name: ""}):
            with pytest.raises(ValueError, match=f"required variable {name} is missing: .*make_env"):
                interpolate(raw, env)


def test_make_env_writes_strong_distinct_secrets_privately(tmp_path):
    from cryptography.fernet import Fernet

    path = tmp_path / ".env"
    done = run_make_env("--output", str(path))
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    env, example = read_env_file(path), read_env_file(ENV_EXAMPLE)
    values = [env[name] for name in SECRETS]
    assert len(set(values)) == len(values), "two secrets are the same"
    assert all(len(v) >= 32 and re.fullmatch(r"[A-Za-z0-9_=-]+", v) for v in values)  # URL-safe
    key = Fernet(env["AIRFLOW_FERNET_KEY"].encode())
    assert key.decrypt(key.encrypt(b"conn")) == b"conn"
    # every other setting as .env.example has it
    assert {k: v for k, v in env.items() if k not in SECRETS} == {k: v for k, v in example.items() if k not in SECRETS}
    # an existing file is kept: its secrets are already in the database volumes
    before = path.read_text()
    done = run_make_env("--output", str(path))
    assert done.returncode == 1 and "--force" in done.stderr
    assert path.read_text() == before
    # --force replaces it, with new values, still private
    done = run_make_env("--output", str(path), "--force")
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    again = read_env_file(path)
    assert all(again[name] != env[name] for name in SECRETS)
    assert not [p for p in tmp_path.iterdir() if p.name != ".env"], "a temp file was left"


def test_image_entrypoint_writes_the_passwords_file_privately_and_has_no_defaults(tmp_path):
    passwords = tmp_path / "auth" / "passwords.json"
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    entrypoint = str(DEPLOY / "airflow" / "entrypoint.sh")
    done = subprocess.run(["bash", entrypoint, "true"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "FACTORY_ADMIN_PASSWORD" in done.stderr
    assert not passwords.exists() or json.loads(passwords.read_text() or "{}") == {}
    env.update(FACTORY_ADMIN_PASSWORD="a-b-c-d-e-f", FACTORY_VIEWER_PASSWORD="g-h-i-j-k-l")
    done = subprocess.run(["bash", "-c", f'umask 000; exec bash {entrypoint} echo started'], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "started\n", done.stderr
    assert json.loads(passwords.read_text()) == {"admin": "a-b-c-d-e-f", "viewer": "g-h-i-j-k-l"}
    assert passwords.stat().st_mode & 0o777 == 0o600


def test_mlflow_is_not_published_to_the_host(compose):
    """MLflow has no authentication here: reachable on the compose network only."""
    mlflow = services(compose)["mlflow"]
    assert "ports" not in mlflow and 5000 in container_ports(mlflow)
    assert services(compose)["airflow-scheduler"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "not published" in (DEPLOY / "README.md").read_text()


def test_studies_live_in_the_deployments_postgres(compose):
    """Every Airflow service that runs tasks (the Celery workers, and the one-off CLI) keeps
    tuning studies in the ``optuna`` database of the postgres service, as the role the init
    script makes from the postgres service's environment: trials on different workers share
    one study (pipelines.config.optuna_storage)."""
    pg = services(compose)["postgres"]["environment"]
    user, password, db = pg["OPTUNA_DB_USER"], pg["OPTUNA_DB_PASSWORD"], pg["OPTUNA_DB_NAME"]
    assert (user, db) == ("optuna", "optuna") and len(password) >= 32
    url = f"postgresql+psycopg2://{user}:{password}@postgres:5432/{db}"
    runs_tasks = [name for name, svc in services(compose).items()
                  if svc.get("command", [])[:3] == ["airflow", "celery", "worker"]]
    assert sorted(runs_tasks) == ["airflow-worker", "airflow-worker-gpu"]
    for name in [*runs_tasks, "airflow-cli", "airflow-scheduler", "airflow-apiserver"]:
        assert services(compose)[name]["environment"].get("FACTORY_OPTUNA_STORAGE") == url, name
    script = (DEPLOY / "postgres" / "init" / "10-mlflow-database.sh").read_text()
    assert "OPTUNA_DB_NAME" in script and "OPTUNA_DB_PASSWORD" in script
    assert "FACTORY_OPTUNA_STORAGE" in (DEPLOY / "README.md").read_text()


def test_compose_config_accepts_the_file_if_a_compose_binary_is_available(tmp_path, env_file):
    """The real Compose implementation (`docker compose config`) when one is installed:
    FACTORY_COMPOSE_BIN, the docker CLI's compose plugin, or docker-compose."""
    candidates = []
    if os.environ.get("FACTORY_COMPOSE_BIN"):
        candidates.append([os.environ["FACTORY_COMPOSE_BIN"]])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True)
        if probe.returncode == 0 and "version v2" in probe.stdout.lower():
            break
    else:
        pytest.skip("no Docker Compose v2 binary here (set FACTORY_COMPOSE_BIN to one)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    done = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "--profile", "gpu", "--profile", "cli",
         "config", "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    # without the secrets Compose refuses
    done = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert done.returncode != 0 and "make_env" in done.stderr


# ----------------------------------------------------------------------------- images and files


def test_every_service_has_an_image_or_a_buildable_context(compose):
    for name, svc in services(compose).items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        if "build" not in svc:
            assert ":" in svc["image"] and not svc["image"].endswith(":latest"), f"{name}: pin the image tag"
            continue
        context, dockerfile = dockerfile_of(svc["build"])
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        text = dockerfile.read_text()
        stages = dockerfile_stages(text)
        target = svc["build"].get("target") if isinstance(svc["build"], dict) else None
        if target:
            assert target in stages, f"{name}: {dockerfile.relative_to(REPO_ROOT)} has no stage {target!r}"
        # a named context must be what the Dockerfile starts FROM, and a service that builds
        for ctx_name, ref in (svc["build"].get("additional_contexts") or {}).items():
            assert ctx_name in stages.values(), f"{name}: no `FROM {ctx_name}` for additional context {ctx_name}"
            if ref.startswith("service:"):
                other = ref.removeprefix("service:")
                assert "build" in services(compose).get(other, {}), f"{name}: {ref} is not a service that builds"


@pytest.mark.parametrize("dockerfile", sorted(DEPLOY.glob("*/Dockerfile")), ids=lambda p: p.parent.name)
def test_dockerfile_copies_only_files_of_the_repo(dockerfile):
    text = dockerfile.read_text()
    stages = dockerfile_stages(text)
    for line in logical_lines(text):
        words = shlex.split(line, posix=True)
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        from_flag = [w for w in words[1:] if w.startswith("--from=")]
        if from_flag:
            source = from_flag[0].removeprefix("--from=")
            assert source in stages or "/" in source or ":" in source, f"{dockerfile}: COPY --from={source}: no such stage"
            continue
        for src in args[:-1]:
            assert (REPO_ROOT / src).exists(), f"{dockerfile.relative_to(REPO_ROOT)}: COPY {src}: not in the repo"
            assert not (REPO_ROOT / src).is_symlink()
    for line in logical_lines(text):
        if line.lstrip().upper().startswith("RUN") and "pip sync" in line:
            assert "--require-hashes" in line, f"{dockerfile}: install from a lock with --require-hashes"


def test_bind_mounted_files_exist_and_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, svc in services(compose).items():
        for kind, source, _target in mounts(svc):
            if kind == "bind":
                path = (REPO_ROOT / source).resolve()
                assert path.exists(), f"{name}: bind mount {source} does not exist"
                assert REPO_ROOT in path.parents, f"{name}: {source} is outside the repository"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_shared_volumes_are_mounted_where_the_config_says(compose):
    svcs = services(compose)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "airflow-worker-gpu"):
        env = svcs[name]["environment"]
        targets = {src: tgt for _, src, tgt in mounts(svcs[name])}
        assert targets["factory-home"] == env["FACTORY_HOME"]
        assert targets["serving"] == env["FACTORY_SERVING_STORE"]
    # the Spark executors write where the driver (the worker) says: the same path
    for name in ("spark-master", "spark-worker-1", "spark-worker-2"):
        assert ("volume", "factory-home", "/opt/factory/home") in mounts(svcs[name])
    assert ("volume", "serving", "/models") in [(k, s, t.split(":")[0]) for k, s, t in mounts(svcs["tf-serving"])]


# ----------------------------------------------------------------------------- health


def test_every_service_has_a_healthcheck_or_a_documented_reason(compose):
    for name, svc in services(compose).items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in svc
            assert svc.get("restart") == "no" or "profiles" in svc, f"{name} is exempt only as a one-off"
            continue
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name}: no health check"
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"
    readme = (DEPLOY / "README.md").read_text()
    for name in NO_HEALTHCHECK:
        assert name in readme


def test_inline_scripts_parse(compose):
    """Health checks and commands written inline: Python with compile(), shell with bash -n."""
    scripts: list[tuple[str, str, str]] = []
    for name, svc in services(compose).items():
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test[:1] == ["CMD-SHELL"]:
            scripts.append((name, "sh", test[1]))
        elif test[:1] == ["CMD"] and test[1:2] in (["python"], ["python3"]) and test[2] == "-c":
            scripts.append((name, "py", test[3]))
        elif test[:1] == ["CMD"] and test[1:3] == ["bash", "-c"]:
            scripts.append((name, "sh", test[3]))
        entry = svc.get("entrypoint") or []
        if entry[-2:] == ["/bin/bash", "-c"] or entry[-1:] == ["-c"]:
            scripts.append((name, "sh", svc["command"][0]))
    assert len(scripts) >= 12
    for name, kind, code in scripts:
        if kind == "py":
            compile(code, f"<{name} health check>", "exec")
        else:
            done = subprocess.run(["bash", "-n", "-c", code], capture_output=True, text=True)
            assert done.returncode == 0, f"{name}: {done.stderr}"
    for script in (DEPLOY / "tf-serving" / "serve.sh", DEPLOY / "airflow" / "entrypoint.sh",
                   DEPLOY / "postgres" / "init" / "10-mlflow-database.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_depends_on_conditions_match_what_the_targets_offer(compose):
    svcs = services(compose)
    for name, svc in svcs.items():
        for other, cond in (svc.get("depends_on") or {}).items():
            assert other in svcs, f"{name} depends on unknown {other}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in svcs[other], f"{name} waits for {other} to be healthy: it has no health check"
            if cond["condition"] == "service_completed_successfully":
                assert svcs[other].get("restart") == "no", f"{other} must be one-shot"


# ----------------------------------------------------------------------------- workers


def test_gpu_worker_reserves_nvidia_gpus_and_serves_the_gpu_queue(compose):
    gpu = services(compose)["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert gpu["build"]["dockerfile"] == "deploy/ml-gpu/Dockerfile"
    assert gpu["environment"]["FACTORY_ML_PYTHON"] == "/opt/venvs/ml/bin/python"
    assert gpu["profiles"] == ["gpu"]
    cpu = services(compose)["airflow-worker"]
    assert cpu["command"][cpu["command"].index("--queues") + 1] == "default"
    assert cpu["environment"]["FACTORY_ML_PYTHON"] == "/opt/venvs/ml/bin/python"
    assert "deploy" not in cpu


def test_ml_images_build_horovod_as_the_setup_does():
    cpu = (DEPLOY / "ml" / "Dockerfile").read_text()
    gpu = (DEPLOY / "ml-gpu" / "Dockerfile").read_text()
    for text in (cpu, gpu):
        for flag in ("HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1", "HOROVOD_WITHOUT_MPI=1", "--no-build-isolation"):
            assert flag in text
        assert "requirements/ml.txt" in text and "--require-hashes" in text
        assert "horovodrun --check-build" in text
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in gpu and "HOROVOD_GPU_OPERATIONS" not in cpu
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-devel", gpu, re.M)
    assert "deploy/ml-gpu/requirements-cuda.txt" in gpu
    # the setup script's Horovod version is the images' one
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    version = re.search(r"^HOROVOD_VERSION=(\S+)", setup, re.M).group(1)
    assert f"ARG HOROVOD_VERSION={version}" in cpu and f"ARG HOROVOD_VERSION={version}" in gpu


def _pins(path: Path) -> dict[str, tuple[str, int]]:
    """``name -> (version, number of hashes)`` of a hashed lock file."""
    out, name = {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            name = m.group(1).lower()
            out[name] = (m.group(2), 0)
        elif name and "--hash=sha256:" in line:
            out[name] = (out[name][0], out[name][1] + 1)
    return out


@pytest.mark.parametrize(
    ("base", "extra"),
    [("requirements/airflow.txt", "deploy/airflow/requirements-cluster.txt"),
     ("requirements/ml.txt", "deploy/ml-gpu/requirements-cuda.txt")],
)
def test_extra_locks_add_to_the_base_lock_without_overlap(base, extra):
    """The images run `uv pip sync --require-hashes BASE EXTRA`: every package once, hashed.
    A failure here after a change of the base lock: run `python deploy/compile_locks.py`."""
    b, e = _pins(REPO_ROOT / base), _pins(REPO_ROOT / extra)
    assert e, f"{extra} is empty"
    assert set(b) & set(e) == set(), f"in both {base} and {extra}: {sorted(set(b) & set(e))}"
    assert all(n > 0 for _, n in e.values()), f"{extra}: a package without hashes"
    assert "://" not in (REPO_ROOT / extra).read_text(), "no download addresses in lock files"


@pytest.mark.parametrize("lock", ["deploy/spark/requirements.txt", "deploy/mlflow/requirements.txt"])
def test_standalone_locks_agree_with_the_orchestration_environment(lock):
    orchestration = {**_pins(REPO_ROOT / "requirements/airflow.txt"),
                     **_pins(REPO_ROOT / "deploy/airflow/requirements-cluster.txt")}
    mine = _pins(REPO_ROOT / lock)
    differ = {n: (orchestration[n][0], v) for n, (v, _) in mine.items() if n in orchestration and orchestration[n][0] != v}
    assert not differ, f"{lock} differs from the orchestration environment (run deploy/compile_locks.py): {differ}"
    assert all(n > 0 for _, n in mine.values())
    key = "pyspark" if "spark" in lock else "mlflow"
    assert mine[key][0] == orchestration[key][0]


def test_airflow_policy_routes_training_to_the_gpu_queue(tmp_path):
    """deploy/airflow/config/airflow_local_settings.py, loaded by Airflow from
    $AIRFLOW_HOME/config as in the images: FACTORY_TRAIN_QUEUE moves train_<line>.train
    (and nothing else) to that queue; unset, nothing moves."""
    (tmp_path / "config").mkdir()
    shutil.copy(DEPLOY / "airflow" / "config" / "airflow_local_settings.py", tmp_path / "config")
    code = textwrap.dedent(
        """
        import json, sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder=sys.argv[1])
        print(json.dumps({"errors": list(bag.import_errors),
                          "moved": sorted(f"{d}.{t.task_id}:{t.queue}" for d, dag in bag.dags.items()
                                          for t in dag.tasks if t.queue != "default")}))
        """
    )
    results = {}
    for queue in ("gpu", ""):
        env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "FACTORY_TRAIN_QUEUE": queue}
        out = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "dags")], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        results[queue] = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["gpu"]["errors"] == []
    assert results["gpu"]["moved"] == [f"train_{line}.train:gpu" for line in LINES]
    assert results[""]["moved"] == []


# ----------------------------------------------------------------------------- observability


def test_prometheus_scrapes_services_that_exist_and_expose_the_port(compose):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    svcs = services(compose)
    assert ("bind", "./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml") in [
        (k, s, t.split(":")[0]) for k, s, t in mounts(svcs["prometheus"])]
    jobs = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                host = "prometheus" if host == "localhost" and job["job_name"] == "prometheus" else host
                assert host in svcs, f"job {job['job_name']}: no service {host}"
                assert int(port) in container_ports(svcs[host]), f"job {job['job_name']}: {host} does not expose {port}"
                jobs[job["job_name"]] = host
    assert jobs["airflow"] == "statsd-exporter" and jobs["factory"] == "factory-metrics"
    # Airflow sends its StatsD metrics to that exporter
    env = svcs["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    assert int(env["AIRFLOW__METRICS__STATSD_PORT"]) in container_ports(svcs["statsd-exporter"])
    factory = svcs["factory-metrics"]["command"]
    assert factory[factory.index("--port") + 1] == "9108"


def test_prometheus_config_passes_promtool_if_installed():
    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian package prometheus)")
    done = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_and_dashboard(compose):
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert 9090 in container_ports(services(compose)["prometheus"])
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/factory.yml").read_text())["providers"][0]
    grafana_mounts = {s: t.split(":")[0] for _, s, t in mounts(services(compose)["grafana"])}
    assert grafana_mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]

    dashboard = json.loads((DEPLOY / "grafana/dashboards/factory.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    exprs = []
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ds["uid"] and t["expr"].strip(), p["title"]
            exprs.append(t["expr"])
    # grid: inside 24 columns, no two panels overlap
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    text = " ".join(exprs)
    for needle in ("airflow_dagrun_duration_success", "airflow_dagrun_duration_failed", "airflow_ti_finish",
                   "airflow_scheduler_heartbeat", "factory_rows", "factory_validation_pass_ratio",
                   "factory_training_samples_per_second", "factory_training_val_auc", "factory_drift_score",
                   "factory_serving_latest_version"):
        assert needle in text, f"no panel shows {needle}"
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == ds["uid"]


def test_serving_dashboard_shows_the_model_server(tmp_path):
    """The model server's dashboard: provisioned with the others (same folder), on the same
    datasource, a clean grid, every metric the server exposes and no other, requests and
    latency per line and version, and every query valid PromQL (promtool parses them as rules)."""
    from pipelines.serving.server import Metrics

    exposed = set(re.findall(r"^# TYPE (\S+) ", Metrics().text().decode(), flags=re.MULTILINE))
    (ds,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/serving.json").read_text())
    other = json.loads((DEPLOY / "grafana/dashboards/factory.json").read_text())
    assert dashboard["uid"] and dashboard["uid"] != other["uid"]
    cells, exprs = set(), {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, f"{p['title']} overlaps another panel"
            cells.add(cell)
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": ds["uid"]} and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ds["uid"] and t["expr"].strip(), p["title"]
            exprs[f"{p['title']} {t['refId']}"] = t["expr"]
    exprs.update({f"annotation {a['name']}": a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a})
    text = " ".join(exprs.values())
    used = {re.sub(r"_(sum|count|bucket)$", "", n) for n in re.findall(r"\b(factory_[a-z_]+)", text)}
    assert used == exposed, f"shown but not exposed: {sorted(used - exposed)}; not shown: {sorted(exposed - used)}"
    assert re.search(r"by \(line, version\) \(rate\(factory_model_server_requests_total", text)
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (line, version, le) (rate(factory_model_server_request_seconds_bucket" in text
    assert 'code!~"2.."' in text  # the error rate counts 4xx and 5xx
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == ds["uid"]
    if not shutil.which("promtool"):
        pytest.skip("promtool not installed (Debian package prometheus): the queries are not parsed")
    rules = {"groups": [{"name": "serving-dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$line", ".*")} for i, e in enumerate(exprs.values())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_factory_metrics_are_ones_the_exporter_writes(tmp_path):
    from pipelines.observability.exporter import exposition

    text = exposition(tmp_path / "home", tmp_path / "serving", lines=["x"])
    names = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))  # as exposed: counters end in _total
    dashboard = (DEPLOY / "grafana/dashboards/factory.json").read_text()
    used = set(re.findall(r"\b(factory_[a-z_]+)", dashboard))
    assert used and used <= names, f"not exported by pipelines.observability.exporter: {sorted(used - names)}"


def test_dashboard_airflow_metrics_are_ones_the_mapping_produces():
    mapping = yaml.safe_load((DEPLOY / "statsd" / "mappings.yml").read_text())
    mapped = {m["name"] for m in mapping["mappings"] if m.get("action") != "drop"}
    dashboard = (DEPLOY / "grafana/dashboards/factory.json").read_text()
    used = {re.sub(r"_(sum|count|bucket)$", "", n) for n in re.findall(r"\b(airflow_[a-z_]+)", dashboard)}
    registry = _airflow_registry()
    plain = {"airflow_" + re.sub(r"[^a-zA-Z0-9_]", "_", m["name"]) for m in registry if m["legacy_name"] == "-"}
    assert used <= mapped | plain, f"neither mapped nor exported as is: {sorted(used - mapped - plain)}"


def _airflow_registry() -> list[dict]:
    import airflow

    path = Path(airflow.__file__).parent / "_shared" / "observability" / "metrics" / "metrics_template.yaml"
    return yaml.safe_load(path.read_text())["metrics"]


def test_statsd_mapping_covers_airflow_legacy_names():
    """Every legacy StatsD name of the installed Airflow whose variables are whole name
    parts is mapped to labels, its tag-less modern name dropped; nothing else clashes."""
    mapping = yaml.safe_load((DEPLOY / "statsd" / "mappings.yml").read_text())
    assert mapping["defaults"]["observer_type"] == "histogram"
    rules = {m["match"]: m for m in mapping["mappings"]}
    expected = 0
    for metric in _airflow_registry():
        legacy = metric["legacy_name"]
        if legacy == "-" or "{" in metric["name"]:
            continue
        parts = legacy.split(".")
        if any("{" in p and not re.fullmatch(r"\{\w+\}", p) for p in parts):
            continue
        expected += 1
        glob_ = "airflow." + ".".join("*" if p.startswith("{") else p for p in parts)
        assert glob_ in rules, f"no mapping for {legacy}"
        rule = rules[glob_]
        if rule.get("action") == "drop":
            continue
        variables_ = [p[1:-1] for p in parts if p.startswith("{")]
        assert rule["labels"] == {v: f"${i}" for i, v in enumerate(variables_, 1)}
        assert rule["name"] == "airflow_" + re.sub(r"[^a-zA-Z0-9_]", "_", metric["name"])
        assert rules[f"airflow.{metric['name']}"]["action"] == "drop"
    assert expected > 30
    names: dict[str, tuple] = {}
    for m in mapping["mappings"]:
        if m.get("action") == "drop":
            continue
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", m["name"])
        labels = tuple(sorted(m.get("labels", {})))
        assert names.setdefault(m["name"], labels) == labels, f"{m['name']} mapped with two label sets"


def test_statsd_exporter_mounts_the_mapping(compose):
    svc = services(compose)["statsd-exporter"]
    target = {s: t.split(":")[0] for _, s, t in mounts(svc)}["./deploy/statsd/mappings.yml"]
    assert f"--statsd.mapping-config={target}" in svc["command"]


# ----------------------------------------------------------------------------- serving


def test_tf_serving_config_lists_every_declared_line(compose):
    config = (DEPLOY / "tf-serving" / "models.config").read_text()
    entries = re.findall(r'config \{ name: "([^"]+)" base_path: "([^"]+)" model_platform: "tensorflow" \}', config)
    assert sorted(name for name, _ in entries) == LINES
    assert all(base == f"/models/{name}" for name, base in entries)
    svc = services(compose)["tf-serving"]
    assert svc["environment"]["MODELS_CONFIG"] == "/etc/tf-serving/models.config"
    assert "--rest_api_port=8501" in svc["command"] and 8501 in container_ports(svc)
    assert any("--monitoring_config_file=" in c for c in svc["command"])


def test_serve_script_starts_tf_serving_on_the_first_pushed_model(tmp_path):
    """serve.sh with a stand-in for tensorflow_model_server: it waits while nothing is
    pushed, starts the server on the lines that have a version, adds a line when its
    first version lands, and stops the server on SIGTERM."""
    models = tmp_path / "models"
    config = tmp_path / "models.config"
    config.write_text((DEPLOY / "tf-serving" / "models.config").read_text().replace('"/models/', f'"{models}/'))
    stub = tmp_path / "stub.sh"
    stub.write_text('#!/usr/bin/env bash\necho "$@" > "$STUB_ARGS"\n'
                    'trap \'echo stopped >> "$STUB_ARGS"; exit 0\' TERM\nwhile true; do sleep 0.1; done\n')
    stub.chmod(0o755)
    run = tmp_path / "run"
    env = {**os.environ, "MODELS_CONFIG": str(config), "ACTIVE_CONFIG": str(run / "active.config"),
           "STATE_FILE": str(run / "state"), "CONFIG_POLL_S": "1", "TF_MODEL_SERVER": str(stub),
           "STUB_ARGS": str(tmp_path / "args")}
    proc = subprocess.Popen(["bash", str(DEPLOY / "tf-serving" / "serve.sh"), "--rest_api_port=8501"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_for(check, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        wait_for(lambda: (run / "state").exists(), "the state file")
        time.sleep(1.5)
        assert (run / "state").read_text().strip() == "waiting" and not (tmp_path / "args").exists()
        first, second = LINES[0], LINES[-1]
        (models / first / "3").mkdir(parents=True)
        (models / first / "3" / "saved_model.pb").write_bytes(b"")
        (models / second / "not-a-version").mkdir(parents=True)
        wait_for(lambda: (tmp_path / "args").exists(), "the server to start")
        args = (tmp_path / "args").read_text()
        assert f"--model_config_file={run / 'active.config'}" in args and "--rest_api_port=8501" in args
        assert (run / "state").read_text().strip() == "serving"
        active = (run / "active.config").read_text()
        assert f'name: "{first}"' in active and f'name: "{second}"' not in active
        (models / second / "1").mkdir()
        (models / second / "1" / "saved_model.pb").write_bytes(b"")
        wait_for(lambda: f'name: "{second}"' in (run / "active.config").read_text(), "the second line")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert (tmp_path / "args").read_text().splitlines()[-1] == "stopped"


# ----------------------------------------------------------------------------- real engines


def _healthcheck_argv(test: list[str], replacements: dict[str, str]) -> list[str]:
    """A compose CMD health check as a local command line."""
    assert test[0] == "CMD"
    argv = [sys.executable if a in ("python", "python3") else a for a in test[1:]]
    out = []
    for a in argv:
        for old, new in replacements.items():
            a = a.replace(old, new)
        out.append(a)
    return out


def _wait_healthy(argv: list[str], timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if subprocess.run(argv, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(2)
    raise AssertionError(f"not healthy within {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def compose_postgres(compose):
    """A throw-away PostgreSQL on loopback, initialised by the compose file's init script
    with the compose file's postgres environment (secrets from deploy/make_env.py)."""
    env = compose["services"]["postgres"]["environment"]
    with postgres_server(env["POSTGRES_USER"]) as port:
        pg = {**os.environ, **env, "PGHOST": "127.0.0.1", "PGPORT": str(port)}
        subprocess.run(["psql", "-U", env["POSTGRES_USER"], "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                        f'CREATE DATABASE "{env["POSTGRES_DB"]}"'], env=pg, check=True, capture_output=True)
        script = DEPLOY / "postgres" / "init" / "10-mlflow-database.sh"
        done = subprocess.run(["bash", str(script)], env=pg, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        yield {"port": port, "env": env}


@pytest.mark.integration
def test_mlflow_server_runs_with_the_compose_command(compose_postgres, compose, tmp_path):
    """The mlflow service's command line (PostgreSQL backend made by the init script,
    proxied artifacts, allowed hosts) on loopback; its health check; a client run whose
    artifact goes through the server into the artifact store."""
    svc = compose["services"]["mlflow"]
    port = free_port()
    artifacts = tmp_path / "artifacts"
    argv = [str(Path(sys.executable).parent / "mlflow")]
    for arg in svc["command"][1:]:
        arg = arg.replace("@postgres:5432/", f"@127.0.0.1:{compose_postgres['port']}/")
        arg = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}.get(arg, arg)
        arg = arg.replace("--artifacts-destination=/opt/mlflow/artifacts", f"--artifacts-destination={artifacts}")
        argv.append(arg)
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://mlflow:") for a in argv)
    log = tmp_path / "mlflow.log"
    proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        check = _healthcheck_argv(svc["healthcheck"]["test"], {"127.0.0.1:5000": f"127.0.0.1:{port}"})
        _wait_healthy(check, 180, proc, log)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        for host, status in (("mlflow:5000", 200), ("evil.example", 403)):
            req = urllib.request.Request(url, headers={"Host": host})
            try:
                got = urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as err:
                got = err.code
            assert got == status, f"Host {host}: {got}"
        (tmp_path / "result.json").write_text("{}")
        code = textwrap.dedent(
            """
            from pathlib import Path
            import sys
            from pipelines import tracking
            run = tracking.start_run("credit_risk", "deploy-test", {}, {"workers": 2})
            tracking.finish_run(run, status="FINISHED", metrics={"final_val_auc": 0.7},
                                artifacts=[("training", Path(sys.argv[1]))])
            print(tracking.client().get_run(run).info.artifact_uri)
            """
        )
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
               "FACTORY_MLFLOW_ARTIFACTS": compose["services"]["airflow-worker"]["environment"]["FACTORY_MLFLOW_ARTIFACTS"]}
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "result.json")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1].startswith("mlflow-artifacts:/credit_risk/")
        assert list(artifacts.rglob("training/result.json"))
    finally:
        _stop(proc)


@pytest.mark.integration
def test_spark_cluster_runs_with_the_compose_commands(compose, tmp_path):
    """spark-master and a spark-worker with the compose command lines (host names on
    loopback), their health checks, and a job submitted to the master."""
    svcs = compose["services"]
    spark_class = Path(sys.executable).parent / "spark-class"
    if not spark_class.exists():
        pytest.skip("pyspark's spark-class is not installed")
    rpc, ui, wui = free_port(), free_port(), free_port()

    def local(cmd: list[str]) -> list[str]:
        text = shlex.join(cmd)
        text = text.replace("--webui-port 8080", f"--webui-port {ui}").replace("--webui-port 8081", f"--webui-port {wui}")
        text = text.replace(":7077", f":{rpc}").replace("--port 7077", f"--port {rpc}")
        text = text.replace("spark-master", "127.0.0.1").replace("spark-worker-1", "127.0.0.1")
        argv = shlex.split(text)
        return [str(spark_class), *argv[1:]] if argv[0] == "spark-class" else argv

    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(tmp_path / "work")}
    procs = []
    try:
        master_log = tmp_path / "master.log"
        master = subprocess.Popen(local(svcs["spark-master"]["command"]), env=env, stdout=open(master_log, "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(master)
        _wait_healthy(_healthcheck_argv(svcs["spark-master"]["healthcheck"]["test"], {"127.0.0.1:8080": f"127.0.0.1:{ui}"}),
                      120, master, master_log)
        worker_cmd = local(svcs["spark-worker-1"]["command"])
        worker_cmd[worker_cmd.index("--memory") + 1] = "1g"
        worker_cmd[worker_cmd.index("--cores") + 1] = "1"
        worker_log = tmp_path / "worker.log"
        worker = subprocess.Popen(worker_cmd, env=env, stdout=open(worker_log, "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(worker)
        _wait_healthy(_healthcheck_argv(svcs["spark-worker-1"]["healthcheck"]["test"], {"127.0.0.1:8081": f"127.0.0.1:{wui}"}),
                      120, worker, worker_log)
        deadline = time.monotonic() + 60
        while json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5)).get("aliveworkers", 0) < 1:
            assert time.monotonic() < deadline, worker_log.read_text()[-3000:]
            time.sleep(1)
        job = textwrap.dedent(
            f"""
            from pyspark.sql import SparkSession
            spark = SparkSession.builder.master("spark://127.0.0.1:{rpc}").appName("deploy-test") \\
                .config("spark.executor.memory", "512m").config("spark.ui.enabled", "false").getOrCreate()
            print("rows", spark.range(1000).selectExpr("sum(id)").collect()[0][0])
            spark.stop()
            """
        )
        done = subprocess.run([sys.executable, "-c", job], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "rows 499500" in done.stdout
    finally:
        for proc in reversed(procs):
            _stop(proc)


_ASK_AND_TELL = textwrap.dedent(
    """
    import os, sys
    import optuna
    from pipelines.config import optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(optuna_storage())
    study = optuna.load_study(study_name=sys.argv[1], storage=storage)
    for _ in range(3):
        trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)})
        trial.set_user_attr("pid", os.getpid())
        study.tell(trial, 0.7 + trial.params["learning_rate"])
        print(trial.number, flush=True)
    """
)


@pytest.mark.integration
def test_trials_in_two_processes_share_one_study_in_postgres(compose_postgres, compose, monkeypatch):
    """The optuna database the init script makes, reached as every worker reaches it
    (FACTORY_OPTUNA_STORAGE through pipelines.config.optuna_storage): one process creates a
    study, two others ask for trials and tell their values at the same time."""
    import optuna

    from pipelines.config import optuna_storage

    url = services(compose)["airflow-worker"]["environment"]["FACTORY_OPTUNA_STORAGE"]
    url = url.replace("@postgres:5432/", f"@127.0.0.1:{compose_postgres['port']}/")
    monkeypatch.setenv("FACTORY_OPTUNA_STORAGE", url)
    assert optuna_storage() == url
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(optuna_storage())
    study = optuna.create_study(study_name="credit_risk-deploy-test", storage=storage, direction="maximize")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _ASK_AND_TELL, study.study_name], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    told = [int(n) for out, _ in outs for n in out.split()]
    trials = optuna.load_study(study_name=study.study_name, storage=optuna_storage()).get_trials()
    assert sorted(told) == [t.number for t in trials] == list(range(6))
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert {t.user_attrs["pid"] for t in trials} == {p.pid for p in procs}
    owner = subprocess.run(
        ["psql", "-U", compose_postgres["env"]["POSTGRES_USER"], "-d", "postgres", "-tA", "-c",
         "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'optuna'"],
        env={**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(compose_postgres["port"])},
        capture_output=True, text=True, check=True)
    assert owner.stdout.strip() == "optuna"


def test_label_studio_serves_the_labelling_queues_read_only(compose):
    """Label Studio runs its pinned image with data of its own and sees the factory's
    labelling folder (where review queues are exported) read-only, as local files."""
    ls = services(compose)["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    env = ls["environment"]
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert "label-studio-data:/label-studio/data" in ls["volumes"]
    mounts = {v["target"]: v for v in ls["volumes"] if isinstance(v, dict)}
    queues = mounts["/label-studio/files/labelling"]
    assert queues["source"] == "factory-home" and queues["read_only"] is True
    assert queues["volume"]["subpath"] == "labelling"  # layout.labelling_dir's parent under FACTORY_HOME
    assert queues["target"].startswith(env["LOCAL_FILES_DOCUMENT_ROOT"] + "/")
    assert ls["ports"] == ["127.0.0.1:8089:8080"]
    assert "8080" in " ".join(ls["healthcheck"]["test"]) and "/health" in " ".join(ls["healthcheck"]["test"])
    assert "label-studio-data" in compose["volumes"]
    from pipelines.catalog import layout

    assert layout.labelling_dir("x", Path("/h")).parent == Path("/h/labelling")
