"""``[core] hostname_callable`` for processes that share one machine but stand for
different hosts: the ``HOSTNAME`` variable of their environment (what a container's
hostname is), else the machine's name as Airflow reports it by default."""

from __future__ import annotations

import os
import socket


def container_hostname() -> str:
    return os.environ.get("HOSTNAME") or socket.getfqdn()
