#!/usr/bin/env bash
# A single Apache Kafka broker in KRaft mode (broker + controller in one JVM), on 127.0.0.1.
#
#   deploy/kafka/kafka.sh jars                      fetch the broker jars with Maven into .cache/kafka/libs
#   deploy/kafka/kafka.sh start DIR [PORT [CTRL]]   format DIR once, start the broker, wait until it listens
#   deploy/kafka/kafka.sh stop DIR                  stop the broker started on DIR (SIGTERM, then SIGKILL)
#   deploy/kafka/kafka.sh status DIR                print its pid and ports, exit 1 if it is not running
#
# PORT defaults to 9092 (clicklake's kafka.bootstrap_servers default), CTRL (the controller's port)
# to PORT+1; 0 picks free ports. DIR keeps server.properties, the logs, broker.pid and broker.log,
# so a stopped broker starts again with its data. Environment: KAFKA_HEAP (default -Xmx512m),
# KAFKA_LIBS (default .cache/kafka/libs), MVN (default mvn).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LIBS="${KAFKA_LIBS:-$ROOT/.cache/kafka/libs}"
HEAP="${KAFKA_HEAP:--Xmx512m -Xms128m}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

jars() {
  if compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then return 0; fi
  if ! command -v java >/dev/null || ! command -v "${MVN:-mvn}" >/dev/null; then
    # A bare Debian machine: Java (17+) and Maven from Debian, when we may install them.
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless maven >&2
    fi
    command -v java >/dev/null || die "java (17+) is needed: apt-get install -y default-jre-headless"
    command -v "${MVN:-mvn}" >/dev/null || die "maven is needed: apt-get install -y maven"
  fi
  mkdir -p "$LIBS"
  "${MVN:-mvn}" -q -B -f "$HERE/pom.xml" -Dmaven.repo.local="$ROOT/.cache/m2" \
    -Dlibs.dir="$LIBS" dependency:copy-dependencies >&2
}

java_cp() { echo "$LIBS/*"; }

running() {  # running DIR -> 0 if the broker of DIR is alive
  local pidfile="$1/broker.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {
  local dir="${1:?usage: kafka.sh start DIR [PORT [CTRL]]}" port="${2:-9092}" ctrl="${3:-}"
  jars
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if running "$dir"; then echo "kafka.sh: already running (pid $(cat "$dir/broker.pid"))" >&2; status "$dir"; return 0; fi
  local props="$dir/server.properties"
  if [[ ! -f "$props" ]]; then
    if [[ -z "$ctrl" ]]; then
      if [[ "$port" == 0 ]]; then ctrl=0; else ctrl=$((port + 1)); fi
    fi
    [[ "$port" == 0 ]] && port="$(free_port)"
    [[ "$ctrl" == 0 ]] && ctrl="$(free_port)"
    cat >"$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  fi
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local cluster
    cluster="$(java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
    java -cp "$(java_cp)" kafka.tools.StorageTool format -t "$cluster" -c "$props" >>"$dir/broker.log" 2>&1 \
      || die "formatting $dir/data failed; see $dir/broker.log"
  fi
  local log4j="$HERE/log4j2.properties" mark
  mark="$(stat -c %s "$dir/broker.log" 2>/dev/null || echo 0)"
  # setsid: the broker gets its own process group, so a Ctrl-C in the starting shell does not reach it.
  setsid java $HEAP -XX:+UseG1GC -Djava.awt.headless=true -Dlog4j2.configurationFile="$log4j" \
    -Dkafka.logs.dir="$dir" -cp "$(java_cp)" kafka.Kafka "$props" >>"$dir/broker.log" 2>&1 </dev/null &
  echo $! >"$dir/broker.pid"
  port="$(sed -n 's#^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*#\1#p' "$props")"
  for _ in $(seq 1 600); do
    if ! running "$dir"; then tail -20 "$dir/broker.log" >&2; die "the broker exited; see $dir/broker.log"; fi
    # Only this start's lines count: a restart appends to broker.log.
    if tail -c "+$((mark + 1))" "$dir/broker.log" | grep -q "Kafka Server started" \
       && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      status "$dir"; return 0
    fi
    sleep 0.2
  done
  die "the broker did not start within 120 s; see $dir/broker.log"
}

stop() {
  local dir="${1:?usage: kafka.sh stop DIR}"
  [[ -f "$dir/broker.pid" ]] || { echo "kafka.sh: no broker.pid in $dir" >&2; return 0; }
  local pid; pid="$(cat "$dir/broker.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/broker.pid"
}

status() {
  local dir="${1:?usage: kafka.sh status DIR}"
  running "$dir" || { echo "not running"; return 1; }
  local props="$dir/server.properties"
  echo "pid=$(cat "$dir/broker.pid") bootstrap=$(sed -n 's#^advertised.listeners=PLAINTEXT://##p' "$props")"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  jars) jars ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) status "$@" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
