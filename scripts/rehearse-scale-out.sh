#!/usr/bin/env bash
# The scale-out rehearsal: every engine of docker-compose.yaml (PostgreSQL, Redis,
# Airflow with the CeleryExecutor and two Celery workers, a Spark standalone master and
# two workers, the MLflow server, two Horovod hosts over SSH, the metrics exporter and
# Prometheus) as local processes with the compose file's configuration, the main job on
# them, where each stage ran, then everything stopped. What differs from the containers
# is in deploy/rehearsal/rehearsal.env. See deploy/README.md, "Scale-out rehearsal".
#
#   scripts/rehearse-scale-out.sh                       # every line, every real batch
#   scripts/rehearse-scale-out.sh credit_risk --batch slice-1 --fault spark-worker --fault celery-worker
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh" all
# the deployment images' orchestration environment: + the Celery provider and StatsD client
bash "$ROOT/scripts/setup.sh" cluster

# The engines the containers run, from Debian: PostgreSQL, Redis, OpenSSH's server (the
# Horovod hosts' sshd) and Prometheus.
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[rehearsal] installing ${missing[*]} (Debian packages)" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The main job's demonstration setting (scripts/main.sh): the image line's CNN trains 3
# epochs instead of its spec's 25; set FACTORY_MAX_EPOCHS= to lift it.
export FACTORY_MAX_EPOCHS=${FACTORY_MAX_EPOCHS-fashion=3}
cd "$ROOT"
exec "$ROOT/.venv/cluster/bin/python" "$ROOT/deploy/rehearsal/rehearse.py" "$@"
