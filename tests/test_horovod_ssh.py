"""Horovod across two hosts reached over SSH, on loopback: a real sshd listens on
127.0.0.2 and 127.0.0.3 (routed on ``lo`` but no interface's address, so horovodrun
takes them for remote hosts), and the launcher's own ``horovodrun`` command, with the
SSH port, key and network interface of the configuration, starts one rank on each over
ssh. First, without processes: the command gains those options only when they are set.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from deploy.rehearsal.process import free_port
from deploy.rehearsal.sshd import SSHD, logins, start_sshd
from pipelines.config import REPO_ROOT, ml_python
from pipelines.training import launch

HOSTS = ("127.0.0.2", "127.0.0.3")
SSH_VARIABLES = ("FACTORY_HOROVOD_SSH_PORT", "FACTORY_HOROVOD_SSH_IDENTITY", "FACTORY_HOROVOD_NETWORK_INTERFACE")
needs_horovod = pytest.mark.skipif(not (ml_python().parent / "horovodrun").exists(), reason="ML environment not set up")


@pytest.fixture
def no_deployment(monkeypatch):
    for name in (*SSH_VARIABLES, "FACTORY_HOROVOD_HOSTS", "FACTORY_HOROVOD_CONTROLLER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- the command


@needs_horovod
def test_the_embedded_default_command_has_no_ssh_options(no_deployment, tmp_path):
    python = ml_python()
    assert launch.horovod_command(tmp_path, 2) == [
        str(python.parent / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
        "--start-timeout", str(launch.START_TIMEOUT_S),
        str(python), "-m", launch.WORKER_MODULE, "--run-dir", str(tmp_path),
    ]


@needs_horovod
def test_the_command_gains_each_ssh_option_only_when_it_is_set(no_deployment, tmp_path):
    no_deployment.setenv("FACTORY_HOROVOD_HOSTS", "gpu1:4,gpu2:4")
    no_deployment.setenv("FACTORY_HOROVOD_SSH_PORT", "2222")
    cmd = launch.horovod_command(tmp_path, 8)
    assert cmd[cmd.index("-H") + 1] == "gpu1:4,gpu2:4"
    assert cmd[cmd.index("--ssh-port") + 1] == "2222"
    assert "--ssh-identity-file" not in cmd and "--network-interface" not in cmd

    no_deployment.setenv("FACTORY_HOROVOD_SSH_IDENTITY", "/keys/id_ed25519")
    no_deployment.setenv("FACTORY_HOROVOD_NETWORK_INTERFACE", "eth0")
    cmd = launch.horovod_command(tmp_path, 8)
    options = cmd[: cmd.index(str(ml_python()))]
    assert options[-6:] == ["--ssh-port", "2222", "--ssh-identity-file", "/keys/id_ed25519",
                            "--network-interface", "eth0"]
    # the worker's own arguments stay last
    assert cmd[-4:] == ["-m", launch.WORKER_MODULE, "--run-dir", str(tmp_path)]

    no_deployment.setenv("FACTORY_HOROVOD_SSH_PORT", "")  # set but empty, as compose passes it
    assert "--ssh-port" not in launch.horovod_command(tmp_path, 8)


@needs_horovod
def test_a_port_that_is_no_port_is_refused(no_deployment, tmp_path):
    no_deployment.setenv("FACTORY_HOROVOD_SSH_PORT", "ssh")
    with pytest.raises(ValueError, match="FACTORY_HOROVOD_SSH_PORT must be a port number, got 'ssh'"):
        launch.horovod_command(tmp_path, 2)


# --------------------------------------------------------------------------- two hosts over SSH

PROBE = """
import json, os
import horovod.tensorflow as hvd
import tensorflow as tf
hvd.init()
total = hvd.allreduce(tf.constant([float(hvd.rank() + 1)], tf.float64), op=hvd.Sum).numpy()[0]
print("probe " + json.dumps({
    "rank": hvd.rank(), "size": hvd.size(), "host": os.environ.get("HOROVOD_HOSTNAME"),
    "ssh": os.environ.get("SSH_CONNECTION"), "iface": os.environ.get("HOROVOD_GLOO_IFACE"),
    "sum": float(total)}), flush=True)
"""


@pytest.fixture
def sshd(tmp_path):
    if not Path(SSHD).exists():
        pytest.skip(f"{SSHD} not installed (openssh-server)")
    engine = start_sshd(tmp_path / "sshd", list(HOSTS), free_port(HOSTS[0]), tmp_path / "logs")
    try:
        yield engine
    finally:
        engine.stop(grace=10)
        assert not engine.alive()


@pytest.fixture
def over_ssh(no_deployment, sshd):
    """The deployment settings that send the launcher's ranks to the two hosts."""
    no_deployment.setenv("FACTORY_HOROVOD_HOSTS", ",".join(f"{h}:1" for h in HOSTS))
    no_deployment.setenv("FACTORY_HOROVOD_SSH_PORT", str(sshd.info["port"]))
    no_deployment.setenv("FACTORY_HOROVOD_SSH_IDENTITY", sshd.info["identity"])
    no_deployment.setenv("FACTORY_HOROVOD_NETWORK_INTERFACE", "lo")
    # a test run from an SSH session must not hand its own connection to the ranks
    no_deployment.delenv("SSH_CONNECTION", raising=False)
    return sshd


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"horovodrun did not finish in {timeout}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


@pytest.mark.integration
@needs_horovod
def test_horovod_takes_loopback_addresses_for_remote_hosts():
    """What makes the rehearsal use ssh at all: Horovod compares a host's address with the
    interfaces' addresses, and 127.0.0.2 is none of them (127.0.0.1 is)."""
    code = ("from horovod.runner.util import network; "
            "print(network.filter_local_addresses(['127.0.0.1', 'localhost', '127.0.0.2', '127.0.0.3']))")
    done = subprocess.run([str(ml_python()), "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['127.0.0.2', '127.0.0.3']"


@pytest.mark.integration
@needs_horovod
def test_two_ranks_run_on_two_hosts_reached_over_ssh(over_ssh, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    # the launcher's command with its options; a probe in place of the training worker
    cmd = launch.horovod_command(tmp_path, 2)
    cmd = [*cmd[: cmd.index(str(ml_python())) + 1], str(probe)]
    assert cmd[cmd.index("-H") + 1] == "127.0.0.2:1,127.0.0.3:1" and "--network-interface" in cmd

    done = _run(cmd, launch.worker_environment(), timeout=120)
    assert done.returncode == 0, done.stdout[-4000:]
    ranks = {}
    for line in done.stdout.splitlines():
        m = re.search(r"probe (\{.*\})", line)
        if m:
            found = json.loads(m.group(1))
            ranks[found["rank"]] = found
    assert sorted(ranks) == [0, 1], done.stdout[-4000:]
    assert {r: ranks[r]["host"] for r in ranks} == {0: "127.0.0.2", 1: "127.0.0.3"}
    for rank in ranks.values():
        assert rank["size"] == 2 and rank["sum"] == 3.0  # 1 + 2: both ranks took part
        assert rank["iface"] == "lo"
        # each rank's shell came in over ssh, to its own host's address
        assert rank["ssh"] is not None and rank["ssh"].split()[2] == rank["host"]
    # and sshd saw a key login on each address
    assert set(logins(over_ssh)) >= set(HOSTS), over_ssh.log.read_text()[-3000:]


@pytest.mark.integration
@needs_horovod
def test_a_credit_risk_training_runs_its_ranks_on_both_hosts(over_ssh, home, tmp_path):
    """The launcher itself (``run_workers``) trains a small credit-risk run over ssh, and the
    training result names the host of each rank."""
    from bench.realdata import lending_club_frame, make_validated_batch
    from pipelines.catalog import records
    from pipelines.training.prepare import prepare_run

    make_validated_batch(home, "credit_risk", "s1", lending_club_frame(1))
    run_dir = tmp_path / "run"
    prepare_run("credit_risk", run_dir, {"workers": 2, "epochs": 2, "batch_size": 64}, home=home)
    before = len(logins(over_ssh))
    lines = launch.run_workers(run_dir, 2, timeout_s=240, log_path=run_dir / "logs" / "horovod.log")

    result = records.read_training_result(run_dir)
    assert result is not None and result.workers == 2 and result.epochs_run == 2
    assert result.hosts == [{"rank": 0, "host": "127.0.0.2"}, {"rank": 1, "host": "127.0.0.3"}]
    assert any("ranks on hosts: 0=127.0.0.2, 1=127.0.0.3" in line for line in lines)
    assert set(logins(over_ssh)[before:]) >= set(HOSTS)
