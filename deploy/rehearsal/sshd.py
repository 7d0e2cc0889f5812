"""An SSH daemon on loopback addresses: the Horovod hosts of the rehearsal.

``horovodrun -H 127.0.0.2:1,127.0.0.3:1`` treats both addresses as remote hosts (they
are routed on ``lo``, 127.0.0.0/8, but are no interface's address, which is what Horovod
compares a host's address with) and starts each rank over ``ssh``, as it does on a
cluster. One sshd listening on both addresses stands in for the two hosts; its log
tells which address each login came to.

Everything lives in a folder of its own (mode 700): the host key, the client key pair,
``authorized_keys`` (the client key, accepted from loopback only) and ``sshd_config``.
Nothing of the machine's own SSH setup is read or changed, except that sshd needs its
privilege-separation folder ``/run/sshd``.

The client side is horovodrun's own ``ssh -o StrictHostKeyChecking=no -p PORT -i KEY``:
it records each new ``[address]:port`` host key in the user's ``~/.ssh/known_hosts``. A
user's ``~/.ssh/config`` that sets other options for 127.0.0.* (a ``User``, a ``Port``,
``IdentitiesOnly`` with other keys, a ``ProxyJump``), or a known_hosts with
``StrictHostKeyChecking yes`` forced in ssh_config, can make these logins fail: the
rehearsal cannot pass ssh options of its own through horovodrun.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from deploy.rehearsal.process import Engine, EngineFailed, port_open, spawn

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
# With LogLevel VERBOSE: "Connection from 127.0.0.1 port 50312 on 127.0.0.3 port 2222 rdomain """
_CONNECTION = re.compile(r"Connection from (\S+) port (\d+) on (\S+) port (\d+)")
_ACCEPTED = re.compile(r"Accepted publickey for (\S+) from (\S+) port (\d+)")


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, text=True, timeout=30)


def write_config(workdir: Path, addresses: list[str], port: int) -> Path:
    """The keys, ``authorized_keys`` and ``sshd_config`` in ``workdir``; returns the config."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    _keygen(host_key, "rehearsal-host")
    _keygen(client_key, "rehearsal-client")
    authorized = workdir / "authorized_keys"
    public = (client_key.with_suffix(".pub")).read_text().strip()
    authorized.write_text(f'from="127.0.0.0/8" {public}\n')
    authorized.chmod(0o600)
    lines = [f"ListenAddress {address}:{port}" for address in addresses] + [
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        # the rehearsal runs as root, on a workstation as in CI containers
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        f"PidFile {workdir / 'sshd.pid'}",
        # no AcceptEnv (sshd's default accepts no variables): horovodrun passes the
        # workers' environment on their command line, not with SendEnv
        "PrintMotd no",
        "PrintLastLog no",
        # VERBOSE logs the local address each connection came to ("... on B port Q")
        "LogLevel VERBOSE",
    ]
    config = workdir / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    return config


def start_sshd(workdir: Path, addresses: list[str], port: int, logs: Path, timeout: float = 30.0) -> Engine:
    """sshd on ``address:port`` for each address, logging to ``logs/sshd.log``.

    ``info``: ``identity`` (the client's private key, for ``horovodrun --ssh-identity-file``),
    ``port``, ``addresses``, ``config``. Raises :class:`EngineFailed` when the config is
    refused or a listener does not open in ``timeout`` seconds."""
    if not Path(SSHD).exists():
        raise EngineFailed(f"{SSHD} not found: install openssh-server")
    config = write_config(Path(workdir), addresses, port)
    PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    checked = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if checked.returncode != 0:
        raise EngineFailed(f"sshd refused {config}:\n{checked.stdout}{checked.stderr}")
    workdir = Path(workdir).resolve()
    engine = spawn("sshd", [SSHD, "-D", "-e", "-f", str(config)], env={"PATH": os.environ.get("PATH", "")},
                   logs=logs, cwd=workdir,
                   info={"identity": str(workdir / "client_ed25519"), "port": port, "addresses": list(addresses),
                         "config": str(config)})
    try:
        engine.wait_healthy(lambda: all(port_open(a, port) for a in addresses), timeout, pause=0.2)
    except BaseException:
        engine.stop(grace=5)
        raise
    return engine


def logins(engine: Engine) -> list[str]:
    """The local addresses (of ``info["addresses"]``) that accepted a publickey login,
    in the order of the logins, from sshd's log: each sshd child logs its connection's
    "Connection from A port P on B port Q" and then "Accepted publickey ... from A port P"."""
    text = engine.log.read_text(errors="replace") if engine.log.exists() else ""
    # one sshd child per connection: the line prefix "sshd[pid]" ties its lines together;
    # the client's address and port identify the connection as well
    to: dict[tuple[str, str], str] = {}
    accepted: list[str] = []
    for line in text.splitlines():
        m = _CONNECTION.search(line)
        if m:
            to[(m.group(1), m.group(2))] = m.group(3)
            continue
        m = _ACCEPTED.search(line)
        if m and (m.group(2), m.group(3)) in to:
            accepted.append(to[(m.group(2), m.group(3))])
    return accepted
