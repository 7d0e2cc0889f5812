"""The scale-out rehearsal: every engine of docker-compose.yaml run as a local process
on this machine, with the compose file's own configuration, and the main job on them.

- :mod:`.compose`: the compose file read and interpolated as Compose does it;
- :mod:`.process`: one started engine (its process group, log, health wait, stop);
- :mod:`.engines`: PostgreSQL, Redis, the Spark standalone cluster, the MLflow server,
  the Celery workers;
- :mod:`.sshd`: an SSH daemon on loopback addresses, the Horovod hosts;
- :mod:`.prometheus`: the metrics exporter and Prometheus scraping it;
- :mod:`.rehearse`: the whole rehearsal (scripts/rehearse-scale-out.sh runs it).

What differs from the containers (addresses, ports, folders) is in
``deploy/rehearsal/rehearsal.env``; the factory's code does not know it is rehearsed.
"""
