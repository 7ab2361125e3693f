# shellcheck shell=bash
# The native cluster's Spark standalone master and one worker, for DPAggregateOperator(
# engine="spark", spark_conn_id=...). Sourced by cluster.sh (uses its launch, wait_for, log,
# die, STATE, REPO, PY). Both run from the pyspark package's own launcher (bin/spark-class:
# pyspark ships no sbin/start-master.sh), on 127.0.0.1 only, with small memory; each is its
# own session recorded in STATE/pids (spark-master, spark-worker), so cluster.sh's `down`
# stops them by PID like every other service. Java: scripts/install_java.sh when missing.
#
# `up` appends to STATE/cluster.env: AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER=spark://127.0.0.1:PORT,
# and every Airflow service gets it as the connection `spark_default` (cluster.sh's
# common_settings), so DPAggregateOperator(engine="spark", spark_conn_id="spark_default") runs
# its release on this cluster -- dags/dp_spark_statistics.py, tests/integration/
# test_cluster_spark.py. Without Java, and when scripts/install_java.sh cannot install it, the
# cluster starts without Spark (a warning; no connection, no master URL), since nothing else
# needs it.

SPARK_WORKER_MEMORY=1g SPARK_WORKER_CORES=1 SPARK_DAEMON_MEMORY=256m

spark_env() {  # the daemons' whole environment (env -i: nothing leaks in from the caller)
  local home="$1"
  printf '%s\0' "PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin" "HOME=$STATE/spark" "LANG=C.UTF-8" \
    "SPARK_HOME=$home" "SPARK_LOCAL_IP=127.0.0.1" "SPARK_LOG_DIR=$STATE/spark/logs" \
    "SPARK_WORKER_DIR=$STATE/spark/work" "SPARK_DAEMON_MEMORY=$SPARK_DAEMON_MEMORY" "SPARK_NO_DAEMONIZE=1"
}

spark_registered() { grep -q "Registering worker" "$STATE/logs/spark-master.log"; }
port_open() { "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2).close()" "$1"; }

start_spark() {
  AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER=""  # set once the master runs (never one inherited from the caller)
  if ! bash "$REPO/scripts/install_java.sh"; then
    log "WARNING: no Java runtime, and scripts/install_java.sh could not install one: the cluster runs without Spark"
    return 0
  fi
  if ! "$PY" -c "import pyspark" 2>/dev/null; then
    log "installing the spark extra (pyspark)"
    timeout 900 "$PY" -m pip install -q -e "$REPO[spark]" || die "pyspark is needed in $VENV"
  fi
  local home ports env=() kv
  home="$("$PY" -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")"
  read -r SPARK_PORT SPARK_UI_PORT SPARK_WORKER_UI_PORT < <("$PY" -c "
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))")
  mkdir -p "$STATE/spark/logs" "$STATE/spark/work"
  while IFS= read -r -d '' kv; do env+=("$kv"); done < <(spark_env "$home")
  launch spark-master env -i "${env[@]}" "$home/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$SPARK_PORT" --webui-port "$SPARK_UI_PORT"
  wait_for "spark-master" "$WAIT_DB" "$(cat "$STATE/pids/spark-master.pid")" port_open "$SPARK_PORT" \
    || die "the Spark master did not start; see $STATE/logs/spark-master.log"
  launch spark-worker env -i "${env[@]}" "$home/bin/spark-class" org.apache.spark.deploy.worker.Worker \
    --host 127.0.0.1 --cores "$SPARK_WORKER_CORES" --memory "$SPARK_WORKER_MEMORY" \
    --webui-port "$SPARK_WORKER_UI_PORT" "spark://127.0.0.1:$SPARK_PORT"
  wait_for "spark-worker" "$WAIT_WORKER" "$(cat "$STATE/pids/spark-worker.pid")" spark_registered \
    || die "the Spark worker did not register; see $STATE/logs/spark-worker.log"
  AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER="spark://127.0.0.1:$SPARK_PORT"
  echo "AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER=$AIRFLOW_PRIVACY_CLUSTER_SPARK_MASTER" >>"$STATE/cluster.env"
  log "spark master spark://127.0.0.1:$SPARK_PORT with one worker ($SPARK_WORKER_CORES core, $SPARK_WORKER_MEMORY)"
}
