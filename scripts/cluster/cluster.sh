#!/usr/bin/env bash
# The distributed topology of docker-compose.yml, run natively on one machine (no Docker
# engine): Postgres (Airflow's metadata DB + the separate `privacy` ledger DB) and Redis from
# Debian's packages, Airflow 3 with the CeleryExecutor -- api-server, scheduler,
# dag-processor, triggerer, a default Celery worker and one worker per data-site queue. Each
# site's key ring is in the environment of that site's worker only, so a site task that lands
# anywhere else fails instead of borrowing another site's key; the data holder's private ring
# is on the holder's worker only, its public ring on the sites' (they encrypt to the holder
# and cannot decrypt). Everything listens on
# 127.0.0.1 only and lives under one state directory; every process it starts is recorded by
# PID (each service is its own session) and stopped by that PID. See docs/cluster.md.
#
#   cluster.sh up [--state DIR] [--dags-folder DIR] [--no-schedules]
#                 [--owner-pid PID] [--max-lifetime SECONDS]
#   cluster.sh run [up options] -- COMMAND...   up, COMMAND with the cluster's env, down (trap)
#   cluster.sh down STATE [--purge]             stop everything by PID (--purge: delete STATE)
#   cluster.sh kill STATE SERVICE               SIGKILL a service's whole session (fault injection)
#   cluster.sh stop STATE SERVICE               stop one service (SIGTERM, then SIGKILL)
#   cluster.sh start STATE SERVICE [--name NAME --queues Q]
#                                               (re)start one Airflow service, wait until ready;
#                                               NAME/Q: a worker with SERVICE's environment on Q
#   cluster.sh status STATE
#   cluster.sh topology                         services, commands, key connections
#   cluster.sh settings                         the Airflow settings every service shares
#
# `up` writes STATE/cluster.env (mode 0600): API URL, admin user and password, ledger URL,
# demo root, ... for clients such as tests/integration. Environment: VENV (default the
# repository's .venv), AIRFLOW_PRIVACY_CLUSTER_KEEP=1 keeps STATE on `run`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

SITES=(site_a site_b site_c)
KEYHOLDER=keyholder  # the Paillier key holder: a party of its own, with its own queue and key ring
HOLDER=holder  # the data holder (issue 19): sites encrypt to its public key, only it decrypts
# The Airflow services, in start order; names are docker-compose.yml's.
SERVICES=(airflow-apiserver airflow-scheduler airflow-dag-processor airflow-triggerer
          airflow-worker worker-site-a worker-site-b worker-site-c worker-keyholder worker-holder)
WORKER_CONCURRENCY_DEFAULT=4  # the concurrency test runs several DP releases at once
WORKER_CONCURRENCY_SITE=2
# Every wait below is bounded (seconds).
WAIT_DB=90 WAIT_API=240 WAIT_WORKER=240 WAIT_HEALTH=240 WAIT_STOP=40

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- topology (compared with docker-compose.yml by tests/integration/test_topology.py) ------
service_site() { local s="${1#worker-}"; echo "${s//-/_}"; }   # worker-site-a -> site_a, worker-keyholder -> keyholder
HOLDER_PUBLIC_CONN=privacy_recipient_holder  # the data holder's public ring: what a site holds

service_command() {
  case "$1" in
    airflow-init) echo "db migrate" ;;
    airflow-apiserver) echo "api-server" ;;
    airflow-scheduler) echo "scheduler" ;;
    airflow-dag-processor) echo "dag-processor" ;;
    airflow-triggerer) echo "triggerer" ;;
    airflow-worker) echo "celery worker --queues default" ;;
    worker-*) echo "celery worker --queues $(service_site "$1")" ;;
    *) die "unknown service $1" ;;
  esac
}

# Which key ring connections (ids) a service gets: the default ring for the default worker
# (the archive step of demo_patient_batches), each site's ring and the data holder's public
# ring for that site's worker, the key holder's ring (it seals the Paillier private key) for
# the key holder's worker, the data holder's private ring for the holder's worker, none else.
service_keys() {
  case "$1" in
    airflow-worker) echo "privacy_keys_default" ;;
    worker-site-*) echo "privacy_keys_$(service_site "$1") $HOLDER_PUBLIC_CONN" ;;
    worker-*) echo "privacy_keys_$(service_site "$1")" ;;
    *) echo "" ;;
  esac
}

conn_var() { echo "AIRFLOW_CONN_$(echo "$1" | tr '[:lower:]' '[:upper:]')"; }

cmd_topology() {
  printf 'postgres\t-\t-\nredis\t-\t-\n'
  local svc conn vars
  for svc in airflow-init "${SERVICES[@]}"; do
    vars=""
    for conn in $(service_keys "$svc"); do vars="${vars:+$vars,}$(conn_var "$conn")"; done
    printf '%s\t%s\t%s\n' "$svc" "$(service_command "$svc")" "${vars:--}"
  done
}

# --- processes ------------------------------------------------------------------------------
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# All processes of a service: it was started as the leader of its own session, and every
# descendant keeps that session id -- also task processes that made their own process group
# and children orphaned when their parent died.
session_pids() { ps -e -o pid=,sid= | awk -v s="$1" '$2 == s && $1 != s { print $1 }'; }

launch() {  # NAME COMMAND... -- started as a new session; PID recorded in STATE/pids
  local name="$1"; shift
  setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  disown "$pid" 2>/dev/null || true  # no job-control notice when a test kills it
  echo "$pid" >"$STATE/pids/$name.pid"
  sleep 0.2
  # A non-interactive shell's background job is no group leader, so setsid does not fork and
  # the recorded PID is the session id; say so loudly if that ever changes.
  local sid
  sid="$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')" || true
  if [ -n "$sid" ] && [ "$sid" != "$pid" ]; then log "WARNING: $name pid $pid is not its session leader ($sid)"; fi
}

stop_pid() {  # NAME SIGNAL: TERM = graceful (then KILL after WAIT_STOP), KILL = at once
  local name="$1" sig="$2" pidfile="$STATE/pids/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  local members
  members="$(session_pids "$pid")"
  if alive "$pid" || [ -n "$members" ]; then
    if [ "$sig" = TERM ] && alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + WAIT_STOP))
      while [ $SECONDS -lt $deadline ] && { alive "$pid" || [ -n "$(session_pids "$pid")" ]; }; do sleep 0.5; done
    fi
    members="$(session_pids "$pid")"
    if alive "$pid" || [ -n "$members" ]; then
      # shellcheck disable=SC2086
      kill -KILL "$pid" $members 2>/dev/null || true
      local deadline=$((SECONDS + 10))
      while [ $SECONDS -lt $deadline ] && { alive "$pid" || [ -n "$(session_pids "$pid")" ]; }; do sleep 0.2; done
    fi
  fi
  rm -f "$pidfile"
}

as_pg() {  # initdb/pg_ctl refuse to run as root: use the `postgres` user when we are root
  if [ "$(id -u)" -eq 0 ]; then (cd "$STATE" && runuser -u postgres -- "$@"); else "$@"; fi
}

wait_for() {  # DESCRIPTION SECONDS PID|- COMMAND... -- poll until COMMAND succeeds, bounded;
  local what="$1" limit="$2" pid="$3"; shift 3   # gives up at once if PID has exited
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$pid" = - ] || alive "$pid" || { log "$what exited while starting"; return 1; }
    [ $SECONDS -lt "$deadline" ] || { log "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 1
  done
}

# --- installing what is missing -------------------------------------------------------------
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

ensure_packages() {
  local need=()
  [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/initdb" ] || need+=(postgresql)
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=()  # as scripts/install_chromium.sh: root, or passwordless sudo, or a clear error
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
      else
        die "missing ${need[*]}: run as root or with passwordless sudo, or: sudo apt-get install -y ${need[*]}"
      fi
    fi
    log "installing Debian packages: ${need[*]}"
    # Only the binaries are used: our servers run from the state directory on free ports,
    # so a system-wide server the packages may start does not get in the way.
    timeout 900 "${sudo[@]}" apt-get update -qq
    timeout 900 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  [ -x "$PY" ] || die "no Python at $PY (run \`make install\` or set VENV)"
  if ! "$PY" -c "import airflow.providers.celery, asyncpg, psycopg2, redis" 2>/dev/null; then
    log "installing the cluster extra (apache-airflow-providers-celery, asyncpg, psycopg2-binary, redis)"
    timeout 900 "$PY" -m pip install -q -e "$REPO[cluster]"
    "$PY" -c "import airflow.providers.celery, asyncpg, psycopg2, redis" \
      || die "apache-airflow-providers-celery, asyncpg, psycopg2-binary and redis are needed in $VENV"
  fi
}

# --- up ------------------------------------------------------------------------------------
write_state() {
  umask 077
  read -r API_PORT PG_PORT REDIS_PORT WORKER_LOG_PORT TRIGGER_LOG_PORT < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
  read -r PG_PASSWORD REDIS_PASSWORD ADMIN_PASSWORD JWT_SECRET API_SECRET FERNET_KEY < <("$PY" - <<'EOF'
import base64, os, secrets
# JWT secret: 64 bytes (RFC 7518 3.2 for HS512); Fernet key: 32 bytes, urlsafe base64.
print(*(secrets.token_hex(16) for _ in range(3)), secrets.token_hex(64), secrets.token_hex(16),
      base64.urlsafe_b64encode(os.urandom(32)).decode())
EOF
)
  cat >"$STATE/cluster.env" <<EOF
AIRFLOW_PRIVACY_CLUSTER_STATE=$STATE
AIRFLOW_PRIVACY_CLUSTER_API=http://127.0.0.1:$API_PORT
AIRFLOW_PRIVACY_CLUSTER_USER=admin
AIRFLOW_PRIVACY_CLUSTER_PASSWORD=$ADMIN_PASSWORD
AIRFLOW_PRIVACY_CLUSTER_LEDGER_URL=postgresql+psycopg2://airflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/privacy
AIRFLOW_PRIVACY_CLUSTER_METADATA_URL=postgresql+psycopg2://airflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/airflow
AIRFLOW_PRIVACY_CLUSTER_DAGS_FOLDER=$DAGS_FOLDER
AIRFLOW_PRIVACY_CLUSTER_USE_JOB_SCHEDULE=$USE_JOB_SCHEDULE
AIRFLOW_PRIVACY_DEMO_ROOT=file://$STATE/demo-data
API_PORT=$API_PORT
PG_PORT=$PG_PORT
PG_PASSWORD=$PG_PASSWORD
REDIS_PORT=$REDIS_PORT
REDIS_PASSWORD=$REDIS_PASSWORD
WORKER_LOG_PORT=$WORKER_LOG_PORT
TRIGGER_LOG_PORT=$TRIGGER_LOG_PORT
JWT_SECRET=$JWT_SECRET
API_SECRET=$API_SECRET
FERNET_KEY=$FERNET_KEY
EOF
  printf '{"admin": "%s"}\n' "$ADMIN_PASSWORD" >"$STATE/auth/passwords.json"
  umask 022
}

load_state() {
  [ -f "$STATE/cluster.env" ] || die "$STATE is not a cluster state directory (no cluster.env)"
  set -a
  # shellcheck disable=SC1091
  . "$STATE/cluster.env"
  set +a
  DAGS_FOLDER="$AIRFLOW_PRIVACY_CLUSTER_DAGS_FOLDER"
  USE_JOB_SCHEDULE="$AIRFLOW_PRIVACY_CLUSTER_USE_JOB_SCHEDULE"
}

start_postgres() {
  local bin
  bin="$(pg_bindir)"
  mkdir -p "$STATE/postgres/data" "$STATE/postgres/run"
  local su=postgres
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$STATE/postgres"; else su="$(id -un)"; fi
  chmod 700 "$STATE/postgres/data"
  as_pg "$bin/initdb" -D "$STATE/postgres/data" -U "$su" -E UTF8 --no-locale \
    --auth-local=peer --auth-host=scram-sha-256 >>"$STATE/logs/postgres.log" 2>&1 \
    || die "initdb failed; see $STATE/logs/postgres.log"
  # pg_ctl -w returns once the server accepts connections (bounded by -t).
  # The server log must be writable by the postgres user: it stays in its own folder.
  as_pg "$bin/pg_ctl" -D "$STATE/postgres/data" -l "$STATE/postgres/server.log" -w -t "$WAIT_DB" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$STATE/postgres/run -c max_connections=300" \
    start >/dev/null || die "postgres did not start; see $STATE/postgres/server.log"
  head -n 1 "$STATE/postgres/data/postmaster.pid" >"$STATE/pids/postgres.pid"
  local psql=(as_pg "$bin/psql" -h "$STATE/postgres/run" -p "$PG_PORT" -U "$su" -d postgres -v ON_ERROR_STOP=1 -q)
  "${psql[@]}" -c "CREATE ROLE airflow LOGIN PASSWORD '$PG_PASSWORD'" -c "CREATE DATABASE airflow OWNER airflow"
  # The same init script as docker-compose.yml: the ledger's own database.
  "${psql[@]}" <"$REPO/scripts/postgres-init.sql"
}

redis_ping() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG; }

start_redis() {
  mkdir -p "$STATE/redis"
  launch redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" \
    --save "" --appendonly no --requirepass "$REDIS_PASSWORD" --daemonize no
  wait_for "redis" "$WAIT_DB" "$(cat "$STATE/pids/redis.pid")" redis_ping || die "redis did not start; see $STATE/logs/redis.log"
}

make_keys() {  # STATE/keys/<connection id>.conn: symmetric rings, and the data holder's key pair
  mkdir -p "$STATE/keys"
  chmod 700 "$STATE/keys"
  "$PY" - "$STATE/keys" "$HOLDER" "$HOLDER_PUBLIC_CONN" default "${SITES[@]}" "$KEYHOLDER" <<'EOF'
import json, os, sys
from airflow_privacy.core.crypto import KeyRing, PrivateKeyRing

folder, holder, holder_public, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rings = {f"privacy_keys_{name}": KeyRing.generate().to_json() for name in names}
pair = PrivateKeyRing.generate(key_id=f"{holder}-1")
rings[f"privacy_keys_{holder}"], rings[holder_public] = pair.to_json(), pair.public_ring().to_json()
for conn_id, ring in rings.items():
    fd = os.open(os.path.join(folder, f"{conn_id}.conn"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({"conn_type": "privacy_keys", "password": ring}))
EOF
}

# The Airflow settings every service shares, NUL-separated: docker-compose.yml's
# x-airflow-common environment, natively (`cluster.sh settings` prints them for
# tests/integration/test_cluster_matches_compose.py).
common_settings() {
  local settings=(
    "AIRFLOW__CORE__HOSTNAME_CALLABLE=cluster_node.hostname"
    "AIRFLOW__CORE__EXECUTOR=CeleryExecutor"
    "AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin"
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$STATE/auth/passwords.json"
    "AIRFLOW__CORE__DAGS_FOLDER=$DAGS_FOLDER"
    "AIRFLOW__CORE__LOAD_EXAMPLES=False"
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True"
    "AIRFLOW__CORE__FERNET_KEY=$FERNET_KEY"
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$API_PORT/execution/"
    "AIRFLOW__API__BASE_URL=http://127.0.0.1:$API_PORT"
    "AIRFLOW__API__HOST=127.0.0.1"
    "AIRFLOW__API__PORT=$API_PORT"
    "AIRFLOW__API__SECRET_KEY=$API_SECRET"
    "AIRFLOW__API_AUTH__JWT_SECRET=$JWT_SECRET"
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://airflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/airflow"
    "AIRFLOW__CELERY__BROKER_URL=redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"
    "AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql+psycopg2://airflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/airflow"
    # One machine: all task logs in one folder the api-server reads directly (workers on
    # separate machines would serve them on their log-server port instead).
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER=$STATE/task-logs"
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$WORKER_LOG_PORT"
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$TRIGGER_LOG_PORT"
    # A worker that dies mid-task (the fault test) is noticed after 60 s, not the default 300.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=60"
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=$USE_JOB_SCHEDULE"
    # The DAG files do not change while the cluster runs; re-parsing them every 30 s would
    # cost a core on a small machine.
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=600"
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1"
    "AIRFLOW_CONN_PRIVACY_BUDGET_DEFAULT={\"conn_type\": \"privacy_budget\", \"host\": \"postgresql+psycopg2://airflow@127.0.0.1:$PG_PORT/privacy\", \"password\": \"$PG_PASSWORD\"}"
    "AIRFLOW_PRIVACY_DEMO_ROOT=file://$STATE/demo-data"
    "AIRFLOW_PRIVACY_MAX_ACTIVE_RUNS=16"
  )
  # spark.sh's master as `spark_default`; a task driving it binds 127.0.0.1 like every service
  if [ -n "${AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER:-}" ]; then
    settings+=("AIRFLOW_CONN_SPARK_DEFAULT={\"conn_type\": \"spark\", \"host\": \"$AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER\"}"
               "SPARK_LOCAL_IP=127.0.0.1")
  fi
  printf '%s\0' "${settings[@]}"
}

cmd_settings() {  # common_settings, one a line, with <placeholders> for what `up` picks
  STATE="<state>" DAGS_FOLDER="$REPO/dags" USE_JOB_SCHEDULE=True FERNET_KEY="<fernet-key>"
  API_PORT="<api-port>" API_SECRET="<api-secret>" JWT_SECRET="<jwt-secret>"
  PG_PORT="<pg-port>" PG_PASSWORD="<pg-password>" REDIS_PORT="<redis-port>" REDIS_PASSWORD="<redis-password>"
  WORKER_LOG_PORT="<worker-log-port>" TRIGGER_LOG_PORT="<trigger-log-port>"
  AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER="spark://127.0.0.1:<spark-port>"
  common_settings | tr '\0' '\n'
}

# The whole environment of one service: started with `env -i`, so nothing leaks in from the
# caller (a test session's own key connections, AIRFLOW_HOME, ...).
service_env() {  # SERVICE [NODE]: NODE names the process (default SERVICE)
  local svc="$1" node="${2:-$1}" home="$STATE/homes/$1"
  mkdir -p "$home"
  local env=(
    "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    "HOME=$home" "LANG=C.UTF-8" "TZ=UTC" "PYTHONPATH=$HERE"
    "AIRFLOW_HOME=$home"
    "AIRFLOW_PRIVACY_CLUSTER_NODE=$node"
  )
  local kv
  while IFS= read -r -d '' kv; do env+=("$kv"); done < <(common_settings)
  local conn
  for conn in $(service_keys "$svc"); do env+=("$(conn_var "$conn")=$(cat "$STATE/keys/$conn.conn")"); done
  printf '%s\0' "${env[@]}"
}

run_airflow() {  # SERVICE ARGS... -- in the foreground (airflow-init)
  local svc="$1"; shift
  local env=()
  while IFS= read -r -d '' kv; do env+=("$kv"); done < <(service_env "$svc")
  env -i "${env[@]}" "$VENV/bin/airflow" "$@"
}

# SERVICE [NAME QUEUES]: NAME and QUEUES start a worker with SERVICE's environment under
# another name on other queues -- how tests/integration puts a worker without a site's key on
# that site's queue.
start_service() {
  local svc="$1" name="${2:-$1}" queues="${3:-}" args
  # shellcheck disable=SC2206
  args=($(service_command "$svc"))
  if [ -n "$queues" ]; then
    case "$svc" in airflow-worker|worker-*) args=(celery worker --queues "$queues") ;; *) die "--queues needs a worker" ;; esac
  fi
  case "$svc" in
    airflow-apiserver) args+=(--host 127.0.0.1 --port "$API_PORT" --workers 1) ;;
    airflow-triggerer) args+=(--skip-serve-logs) ;;
    airflow-worker) args+=(--celery-hostname "$name@%h" --concurrency "$WORKER_CONCURRENCY_DEFAULT" --skip-serve-logs) ;;
    worker-*) args+=(--celery-hostname "$name@%h" --concurrency "$WORKER_CONCURRENCY_SITE" --skip-serve-logs) ;;
  esac
  local env=()
  while IFS= read -r -d '' kv; do env+=("$kv"); done < <(service_env "$svc" "$name")
  echo "--- start $(date -u +%FT%TZ): ${args[*]}" >>"$STATE/logs/$name.log"
  launch "$name" env -i "${env[@]}" "$VENV/bin/airflow" "${args[@]}"
}

api_up() { "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=5)" \
             "http://127.0.0.1:$API_PORT/api/v2/version"; }

# /api/v2/monitor/health reports the scheduler, triggerer and dag-processor heartbeats.
components_healthy() {
  "$PY" - "http://127.0.0.1:$API_PORT/api/v2/monitor/health" <<'EOF'
import json, sys, urllib.request
health = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
sys.exit(0 if all(health.get(p, {}).get("status") == "healthy" for p in parts) else 1)
EOF
}

worker_ready() {  # celery prints "<node> ready." once it consumes its queues
  local since
  since="$(grep -n -- '^--- start' "$STATE/logs/$1.log" | tail -n 1 | cut -d: -f1)"
  tail -n +"${since:-1}" "$STATE/logs/$1.log" | grep -q "$1@.* ready\."
}

wait_service() {  # SERVICE [NAME]
  local svc="$1" name="${2:-$1}" pid
  pid="$(cat "$STATE/pids/$name.pid")"
  case "$svc" in
    airflow-apiserver) wait_for "$name" "$WAIT_API" "$pid" api_up ;;
    airflow-worker|worker-*) wait_for "$name" "$WAIT_WORKER" "$pid" worker_ready "$name" ;;
    *) sleep 1 ;;
  esac && alive "$pid" || { tail -n 30 "$STATE/logs/$name.log" >&2 || true; die "$name did not start; see $STATE/logs/$name.log"; }
}

start_watchdog() {  # stops the cluster when OWNER_PID is gone or after MAX_LIFETIME
  [ -n "$OWNER_PID" ] || [ -n "$MAX_LIFETIME" ] || return 0
  launch watchdog bash "$HERE/cluster.sh" _watch "$STATE" "${OWNER_PID:-0}" "${MAX_LIFETIME:-0}"
}

cmd_watch() {
  local owner="$1" lifetime="$2" start=$SECONDS
  while true; do
    if [ "$owner" != 0 ] && ! alive "$owner"; then log "owner $owner is gone: stopping the cluster"; break; fi
    if [ "$lifetime" != 0 ] && [ $((SECONDS - start)) -ge "$lifetime" ]; then log "max lifetime ${lifetime}s reached: stopping the cluster"; break; fi
    sleep 5
  done
  rm -f "$STATE/pids/watchdog.pid"
  do_down
}

stop_services() {  # NAME... -- SIGTERM to all at once, wait (bounded), SIGKILL what is left
  local name pid names=() deadline busy
  for name in "$@"; do
    [ -f "$STATE/pids/$name.pid" ] || continue
    pid="$(cat "$STATE/pids/$name.pid")"
    names+=("$name")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + WAIT_STOP))
  while [ $SECONDS -lt $deadline ]; do
    busy=""
    for name in "${names[@]}"; do
      pid="$(cat "$STATE/pids/$name.pid")"
      if alive "$pid" || [ -n "$(session_pids "$pid")" ]; then busy=1; break; fi
    done
    [ -n "$busy" ] || break
    sleep 0.5
  done
  for name in "${names[@]}"; do stop_pid "$name" KILL; done
}

do_down() {
  local f name extra=()
  [ -d "$STATE/pids" ] || return 0
  stop_pid watchdog TERM
  # Workers started with `start ... --name` too; the servers they need go last.
  for f in "$STATE"/pids/*.pid; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .pid)"
    case " ${SERVICES[*]} postgres redis " in *" $name "*) ;; *) extra+=("$name") ;; esac
  done
  stop_services "${extra[@]}" "${SERVICES[@]}"
  stop_services redis
  stop_postgres
}

# Also when STATE/pids/postgres.pid was never written: `pg_ctl -w -t` may time out while the
# postmaster it started keeps running (and records itself in postmaster.pid).
stop_postgres() {
  local data="$STATE/postgres/data" pid=""
  if [ ! -f "$STATE/pids/postgres.pid" ] && [ -f "$data/postmaster.pid" ]; then
    pid="$(head -n 1 "$data/postmaster.pid" 2>/dev/null | tr -d ' ')" || true
    # a stale file's PID may belong to another process by now: only a postgres is ours
    if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = postgres ]; then
      echo "$pid" >"$STATE/pids/postgres.pid"
    fi
  fi
  [ -f "$STATE/pids/postgres.pid" ] || return 0
  log "stopping postgres (pid $(cat "$STATE/pids/postgres.pid"))"
  as_pg "$(pg_bindir)/pg_ctl" -D "$data" -m fast -w -t "$WAIT_STOP" stop >/dev/null 2>&1 || true
  stop_pid postgres KILL
}

do_up() {
  local t0=$SECONDS
  ensure_packages
  [ -d "$DAGS_FOLDER" ] || die "no DAGs folder $DAGS_FOLDER"
  mkdir -p "$STATE"
  chmod 711 "$STATE"  # the postgres user must reach its data dir inside
  mkdir -p "$STATE/logs" "$STATE/pids" "$STATE/homes" "$STATE/auth" "$STATE/task-logs" "$STATE/demo-data"
  chmod 700 "$STATE/auth"
  write_state
  log "state in $STATE (api :$API_PORT, postgres :$PG_PORT, redis :$REDIS_PORT)"
  start_postgres
  start_redis
  start_spark
  make_keys
  log "migrating the metadata DB (airflow-init)"
  run_airflow airflow-init db migrate >>"$STATE/logs/airflow-init.log" 2>&1 \
    || { tail -n 30 "$STATE/logs/airflow-init.log" >&2; die "airflow db migrate failed"; }
  start_service airflow-apiserver
  wait_service airflow-apiserver
  local svc
  for svc in "${SERVICES[@]:1}"; do start_service "$svc"; done
  for svc in "${SERVICES[@]:1}"; do wait_service "$svc"; done
  wait_for "scheduler, triggerer and dag-processor heartbeats" "$WAIT_HEALTH" - components_healthy \
    || die "components not healthy; see $STATE/logs"
  start_watchdog
  log "up in $((SECONDS - t0))s: http://127.0.0.1:$API_PORT (user admin, password in $STATE/cluster.env)"
}

parse_up_options() {
  STATE="" DAGS_FOLDER="$REPO/dags" USE_JOB_SCHEDULE=True OWNER_PID="" MAX_LIFETIME=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --state) STATE="$2"; shift 2 ;;
      --dags-folder) DAGS_FOLDER="$(cd "$2" && pwd)"; shift 2 ;;
      --no-schedules) USE_JOB_SCHEDULE=False; shift ;;
      --owner-pid) OWNER_PID="$2"; shift 2 ;;
      --max-lifetime) MAX_LIFETIME="$2"; shift 2 ;;
      --) shift; REST=("$@"); return 0 ;;
      *) die "unknown option $1" ;;
    esac
  done
  REST=()
}

new_state_dir() {
  if [ -z "$STATE" ]; then
    STATE="$(mktemp -d "${TMPDIR:-/tmp}/airflow-privacy-cluster.XXXXXX")"
  elif [ -e "$STATE/cluster.env" ]; then
    die "$STATE already holds a cluster; \`cluster.sh down $STATE --purge\` first"
  fi
}

main() {
  local cmd="${1:-}"
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up)
      parse_up_options "$@"
      new_state_dir
      # A failed or interrupted start stops whatever it had started. The EXIT trap sees $? = 0
      # when bash dies of a signal, so each signal exits non-zero first (128 + its number).
      trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed (exit $rc): stopping what was started"; do_down; fi' EXIT
      trap 'exit 129' HUP
      trap 'exit 130' INT
      trap 'exit 143' TERM
      do_up
      trap - EXIT HUP INT TERM
      echo "$STATE"
      ;;
    run)
      parse_up_options "$@"
      [ ${#REST[@]} -gt 0 ] || die "usage: cluster.sh run [up options] -- COMMAND..."
      new_state_dir
      trap 'rc=$?; do_down; if [ "${AIRFLOW_PRIVACY_CLUSTER_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then log "state kept in $STATE"; else rm -rf "$STATE"; fi; exit $rc' EXIT
      trap 'exit 129' HUP
      trap 'exit 130' INT
      trap 'exit 143' TERM
      do_up
      set +e
      (set -a; . "$STATE/cluster.env"; set +a; export AIRFLOW_PRIVACY_CLUSTER_ENV="$STATE/cluster.env"; exec "${REST[@]}")
      local rc=$?
      set -e
      exit $rc
      ;;
    down)
      STATE="${1:?usage: cluster.sh down STATE [--purge]}"
      [ -d "$STATE" ] || { log "$STATE does not exist"; return 0; }
      do_down
      if [ "${2:-}" = --purge ]; then rm -rf "$STATE"; fi
      ;;
    kill | stop)  # kill: SIGKILL at once (fault injection); stop: SIGTERM, then SIGKILL
      STATE="${1:?usage: cluster.sh $cmd STATE NAME}"
      load_state
      [ -f "$STATE/pids/$2.pid" ] || die "$2 is not running"
      log "$cmd $2 (every process of session $(cat "$STATE/pids/$2.pid"))"
      if [ "$cmd" = kill ]; then stop_pid "$2" KILL; else stop_pid "$2" TERM; fi
      ;;
    start)
      STATE="${1:?usage: cluster.sh start STATE SERVICE [--name NAME --queues QUEUES]}"
      load_state
      local svc="$2" name="$2" queues=""
      shift 2
      while [ $# -gt 0 ]; do
        case "$1" in
          --name) name="$2"; shift 2 ;;
          --queues) queues="$2"; shift 2 ;;
          *) die "unknown option $1" ;;
        esac
      done
      service_command "$svc" >/dev/null
      [ ! -f "$STATE/pids/$name.pid" ] || ! alive "$(cat "$STATE/pids/$name.pid")" || die "$name is already running"
      start_service "$svc" "$name" "$queues"
      wait_service "$svc" "$name"
      log "$name started (pid $(cat "$STATE/pids/$name.pid"))"
      ;;
    status)
      STATE="${1:?usage: cluster.sh status STATE}"
      local f name
      for f in "$STATE"/pids/*.pid; do
        [ -e "$f" ] || continue
        name="$(basename "$f" .pid)"
        if alive "$(cat "$f")"; then echo "$name running (pid $(cat "$f"))"; else echo "$name dead"; fi
      done
      ;;
    topology) cmd_topology ;;
    settings) cmd_settings ;;
    _watch) STATE="$1"; load_state; cmd_watch "$2" "$3" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; [ -z "$cmd" ] || exit 2 ;;
  esac
}

# shellcheck source=scripts/cluster/spark.sh
. "$HERE/spark.sh"  # start_spark: the Spark master and worker (stopped by do_down like any recorded PID)
main "$@"
