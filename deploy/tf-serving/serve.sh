#!/usr/bin/env bash
# Runs TensorFlow Serving on the lines of MODELS_CONFIG that have a pushed version.
#
# TF Serving does not start listening while any model of its config has no version
# yet (tensorflow/serving issue 979), and a fresh factory has pushed nothing. So this
# wrapper keeps the full list in MODELS_CONFIG (deploy/tf-serving/models.config, one
# `config { name: ... base_path: ... }` entry per line) and writes the *active*
# config, the entries whose base_path holds at least one integer version folder,
# to ACTIVE_CONFIG. It waits for the first pushed model, starts
# tensorflow_model_server on the active config, and rewrites that config when a
# line gets its first version; TF Serving re-reads it every
# --model_config_file_poll_wait_seconds. New versions of a line already served are
# picked up by TF Serving itself.
#
# STATE_FILE says `waiting` (no model pushed yet) or `serving`: the health check
# treats waiting as healthy (the service is doing what it should) and otherwise
# asks TF Serving's REST port.
#
# Extra arguments go to tensorflow_model_server.
set -euo pipefail

MODELS_CONFIG=${MODELS_CONFIG:-/etc/tf-serving/models.config}
ACTIVE_CONFIG=${ACTIVE_CONFIG:-/tmp/tf-serving/active.config}
STATE_FILE=${STATE_FILE:-/tmp/tf-serving/state}
POLL_S=${CONFIG_POLL_S:-30}
SERVER=${TF_MODEL_SERVER:-tensorflow_model_server}

mkdir -p "$(dirname "$ACTIVE_CONFIG")" "$(dirname "$STATE_FILE")"

# The entries (whole `config { ... }` lines) whose base_path has a version.
active_entries() {
  local entry base
  while IFS= read -r entry; do
    base=$(sed -n 's/.*base_path: *"\([^"]*\)".*/\1/p' <<<"$entry")
    [ -n "$base" ] || continue
    if compgen -G "$base/[0-9]*/saved_model.pb" >/dev/null \
       || compgen -G "$base/[0-9]*/saved_model.pbtxt" >/dev/null; then
      printf '%s\n' "$entry"
    fi
  done < <(grep -E '^[[:space:]]*config[[:space:]]*\{.*\}[[:space:]]*$' "$MODELS_CONFIG")
}

# Write the active config if it changed; print the number of entries.
refresh() {
  local entries tmp
  entries=$(active_entries)
  if [ -z "$entries" ]; then
    echo 0
    return
  fi
  tmp="$ACTIVE_CONFIG.tmp"
  { echo "model_config_list {"; printf '%s\n' "$entries"; echo "}"; } >"$tmp"
  if ! cmp -s "$tmp" "$ACTIVE_CONFIG" 2>/dev/null; then
    mv "$tmp" "$ACTIVE_CONFIG"  # atomic: TF Serving never reads half a file
    echo "[serve.sh] serving: $(sed -n 's/.*name: *"\([^"]*\)".*/\1/p' "$ACTIVE_CONFIG" | paste -sd, -)" >&2
  else
    rm -f "$tmp"
  fi
  grep -c 'base_path' "$ACTIVE_CONFIG"
}

server_pid=""
stop() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" || true; fi
  exit 0
}
trap stop TERM INT

echo waiting >"$STATE_FILE"
until [ "$(refresh)" -gt 0 ]; do
  sleep "$POLL_S" &
  wait $! || true
done

"$SERVER" --model_config_file="$ACTIVE_CONFIG" --model_config_file_poll_wait_seconds="$POLL_S" "$@" &
server_pid=$!
echo serving >"$STATE_FILE"

while kill -0 "$server_pid" 2>/dev/null; do
  sleep "$POLL_S" &
  wait $! || true
  refresh >/dev/null
done
wait "$server_pid"
