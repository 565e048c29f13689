#!/usr/bin/env bash
# A throwaway local cluster for the failover tests and CI, on loopback only:
#   - RabbitMQ: gpuq1@localhost, gpuq2@localhost, gpuq3@localhost (AMQP 5681..5683),
#     clustered so quorum queues have three replicas;
#   - Redis: primary 6391, replica 6392, sentinels 26391..26393 (master name `gpuq`).
# It never touches the shared RabbitMQ (rabbit@localhost, 5672) or Redis (6379):
# every process it starts runs in its own directory under the state dir, and it
# signals a recorded pid only while that pid's working directory is still there.
# (An epmd that a node may spawn, when none runs yet, is shared by every Erlang
# node on the machine and is left running.)
#
# Usage: scripts/cluster.sh up | down | status
#                           stop-node N | start-node N | forget-node N
#                           kill-redis-primary | start-redis PORT
#                           quorum-leader QUEUE | ctl N ARGS...
# State (configs, data, logs, pids, env) lives in ${GPUQ_CLUSTER_DIR:-/tmp/gpuq-cluster};
# after `up`, $DIR/env holds GPUQ_CLUSTER_AMQP=... and GPUQ_CLUSTER_REDIS=... lines
# (`set -a; . $DIR/env; set +a` exports them). Exit 3: RabbitMQ or Redis is not installed.
set -euo pipefail

DIR=${GPUQ_CLUSTER_DIR:-/tmp/gpuq-cluster}
# The upstream scripts, not /usr/sbin's wrappers: those `su rabbitmq`, which
# resets HOME (so the cookie) and needs the state dir owned by rabbitmq.
RMQ_BIN=${GPUQ_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
NODES=(1 2 3)
REDIS_PRIMARY=6391
REDIS_REPLICA=6392
SENTINELS=(26391 26392 26393)
# Bounds on every wait, so a broken node fails `up` instead of hanging CI.
BOOT_TIMEOUT_S=60
CTL_TIMEOUT_S=60

log() { echo "cluster: $*"; }
die() { echo "cluster: $1" >&2; exit "${2:-1}"; } # message [exit code]

node_name() { echo "gpuq$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
# Erlang distribution ports, next to the shared node's 25672 but distinct.
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$DIR/rabbit$1"; }
pid_file() { echo "$DIR/pids/$1.pid"; }

reachable() { # port
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when pid is alive and was started by this cluster: a recorded pid may
# have been reused since. Its working directory tells (an environment marker
# would not: Redis overwrites its environ block to set its process title).
ours() { # pid
  local pid=$1 cwd
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ $cwd == "$DIR"/* ]]
}

recorded_pid() { cat "$(pid_file "$1")" 2>/dev/null || true; } # name

# The environment a node's VM and our rabbitmqctl share: HOME holds the cookie,
# and an empty env file keeps /etc/rabbitmq/rabbitmq-env.conf (NODENAME) out.
RABBIT_ENV=("HOME=$DIR/home" "RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf")

ctl() { # N args...: rabbitmqctl against node N, bounded in time
  env "${RABBIT_ENV[@]}" timeout "$CTL_TIMEOUT_S" "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$1")" "${@:2}"
}

# rabbitmqctl for its effect: its output is shown only when it fails, since
# 3.10's CLI logs harmless "[error] ... tracked connection table" lines on
# stop_app/start_app.
ctl_quiet() { # N args...
  local out
  out=$(ctl "$@" 2>&1) || { echo "$out" >&2; return 1; }
}

# The shared node's cookie when we can read it, so /usr/sbin/rabbitmqctl (which
# runs as rabbitmq with that cookie) can talk to our nodes too; else a fresh one.
write_cookie() {
  mkdir -p "$DIR/home"
  local shared=/var/lib/rabbitmq/.erlang.cookie
  if [[ -r $shared ]]; then
    cat "$shared" >"$DIR/home/.erlang.cookie"
  else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
  fi
  chmod 400 "$DIR/home/.erlang.cookie"
}

start_rabbit_node() { # N
  local n=$1 nd
  nd=$(node_dir "$n")
  mkdir -p "$nd/mnesia" "$nd/log"
  # Our own config file replaces /etc/rabbitmq/rabbitmq.conf (whose listener
  # is 5672). The listener is on loopback only, so letting guest in over any
  # connection (loopback_users = none) exposes nothing.
  cat >"$nd/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
EOF
  # No plugins: management would collide with the shared node's 15672.
  echo '[].' >"$nd/enabled_plugins"
  (
    cd "$nd"
    exec env "${RABBIT_ENV[@]}" \
      RABBITMQ_NODENAME="$(node_name "$n")" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
      RABBITMQ_DIST_PORT="$(dist_port "$n")" \
      RABBITMQ_CONFIG_FILE="$nd/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$nd/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$nd/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$nd/mnesia" \
      RABBITMQ_LOG_BASE="$nd/log" \
      RABBITMQ_PID_FILE="$nd/beam.pid" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      ERL_CRASH_DUMP="$nd/erl_crash.dump" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
      setsid "$RMQ_BIN/rabbitmq-server" >"$nd/stdout.log" 2>&1 </dev/null 9>&-
  ) &
  echo $! >"$(pid_file "rabbit$n")"
}

# Cheap poll for the distribution port first: each rabbitmqctl call boots a VM
# (~0.6 s of CPU), too dear to spin on while three nodes boot on two cores.
wait_rabbit_node() { # N
  local n=$1 deadline=$((SECONDS + BOOT_TIMEOUT_S))
  until reachable "$(dist_port "$n")"; do
    ours "$(recorded_pid "rabbit$n")" || die "$(node_name "$n") exited; see $(node_dir "$n")/log"
    ((SECONDS < deadline)) || die "$(node_name "$n") did not open its distribution port in ${BOOT_TIMEOUT_S} s"
    sleep 0.5
  done
  # The port can open while the node is still in its prelaunch phase, under
  # another name (epmd: gpuqN_prelaunch_PID), and await_startup gives up at
  # once on a node that is "not running at all": ask again until the deadline.
  local out
  until out=$(ctl "$n" -q await_startup -t "$BOOT_TIMEOUT_S" 2>&1); do
    ours "$(recorded_pid "rabbit$n")" || die "$(node_name "$n") exited; see $(node_dir "$n")/log"
    if ((SECONDS >= deadline)); then
      echo "$out" >&2
      die "$(node_name "$n") did not start; see $(node_dir "$n")/log"
    fi
    sleep 1
  done
}

join_rabbit_node() { # N
  local n=$1
  ctl_quiet "$n" -q stop_app
  ctl_quiet "$n" -q join_cluster "$(node_name 1)"
  ctl_quiet "$n" -q start_app
}

# Nodes whose app is running, as seen by the first node that answers.
running_nodes() {
  local n out
  for n in "${NODES[@]}"; do
    if out=$(ctl "$n" -q cluster_status --formatter json 2>/dev/null); then
      grep -o '"running_nodes":\[[^]]*\]' <<<"$out" | grep -o 'gpuq[0-9]@localhost' | sort | tr '\n' ' '
      return 0
    fi
  done
  return 1
}

start_redis() { # name(redis-PORT|sentinel-PORT) port conf-lines...
  local name=$1 port=$2 rd="$DIR/$1" flags=()
  shift 2
  [[ $name == sentinel-* ]] && flags=(--sentinel)
  mkdir -p "$rd"
  printf '%s\n' "bind 127.0.0.1" "port $port" "dir $rd" "daemonize no" "$@" >"$rd/redis.conf"
  (
    cd "$rd"
    exec setsid redis-server "$rd/redis.conf" "${flags[@]}" >"$rd/redis.log" 2>&1 </dev/null 9>&-
  ) &
  echo $! >"$(pid_file "$name")"
}

start_redis_all() {
  local s
  start_redis "redis-$REDIS_PRIMARY" "$REDIS_PRIMARY" "appendonly yes"
  start_redis "redis-$REDIS_REPLICA" "$REDIS_REPLICA" "appendonly yes" \
    "replicaof 127.0.0.1 $REDIS_PRIMARY"
  for s in "${SENTINELS[@]}"; do
    # A sentinel rewrites its own config file, so each needs its own.
    start_redis "sentinel-$s" "$s" "sentinel monitor gpuq 127.0.0.1 $REDIS_PRIMARY 2" \
      "sentinel down-after-milliseconds gpuq 2000" \
      "sentinel failover-timeout gpuq 10000" \
      "sentinel parallel-syncs gpuq 1"
  done
}

sentinel_field() { # port field: one field of `sentinel master gpuq`
  redis-cli -p "$1" sentinel master gpuq 2>/dev/null | awk -v f="$2" 'prev == f { print; exit } { prev = $0 }'
}

# The replica has synced and every sentinel sees the master, its replica and
# the two other sentinels, so a failover can happen as soon as a test wants one.
wait_redis() {
  local deadline=$((SECONDS + BOOT_TIMEOUT_S)) s ok
  while ((SECONDS < deadline)); do
    ok=1
    redis-cli -p "$REDIS_REPLICA" info replication 2>/dev/null | grep -q 'master_link_status:up' || ok=0
    for s in "${SENTINELS[@]}"; do
      [[ $(sentinel_field "$s" num-slaves) == 1 && $(sentinel_field "$s" num-other-sentinels) == 2 ]] || ok=0
    done
    ((ok)) && return 0
    sleep 0.5
  done
  die "redis replica or sentinels not ready in ${BOOT_TIMEOUT_S} s; see $DIR/redis-*/redis.log"
}

all_pid_names() {
  printf 'rabbit%s\n' "${NODES[@]}"
  printf 'redis-%s\n' "$REDIS_PRIMARY" "$REDIS_REPLICA"
  printf 'sentinel-%s\n' "${SENTINELS[@]}"
}

# Counts recorded processes that are still ours and alive: "alive total".
count_alive() {
  local name alive=0 total=0
  for name in $(all_pid_names); do
    total=$((total + 1))
    ours "$(recorded_pid "$name")" && alive=$((alive + 1))
  done
  echo "$alive $total"
}

write_env() {
  local n s amqp=() sentinels=() IFS=, # IFS joins the lists with commas
  for n in "${NODES[@]}"; do amqp+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"); done
  for s in "${SENTINELS[@]}"; do sentinels+=("127.0.0.1:$s"); done
  printf '%s\n' "GPUQ_CLUSTER_AMQP=${amqp[*]}" "GPUQ_CLUSTER_REDIS=redis+sentinel://${sentinels[*]}/gpuq/0" >"$DIR/env"
}

require_tools() {
  [[ -x $RMQ_BIN/rabbitmq-server && -x $RMQ_BIN/rabbitmqctl ]] ||
    die "rabbitmq-server is not installed (no $RMQ_BIN/rabbitmq-server; Debian package rabbitmq-server); cannot start the cluster" 3
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
    die "redis-server/redis-cli are not installed (Debian package redis-server); cannot start the cluster" 3
}

# Refuse to start over anything else listening on our ports.
require_free_ports() {
  local n p ports=("$REDIS_PRIMARY" "$REDIS_REPLICA" "${SENTINELS[@]}")
  for n in "${NODES[@]}"; do ports+=("$(amqp_port "$n")" "$(dist_port "$n")"); done
  for p in "${ports[@]}"; do
    ! reachable "$p" || die "port $p is already in use; is another cluster up (GPUQ_CLUSTER_DIR)?"
  done
}

# A failed `up` stops what it started, so a test run never leaks a cluster.
on_up_failure() {
  local rc=$? f
  ((rc != 0)) || return 0
  [[ -z ${GPUQ_CLUSTER_KEEP_ON_FAILURE:-} ]] || { log "up failed; state kept in $DIR" && exit "$rc"; }
  # The logs go with the state dir, so show their ends first (for CI).
  for f in "$DIR"/rabbit*/stdout.log "$DIR"/*/redis.log; do
    [[ -f $f ]] && tail -n 5 "$f" | sed "s|^|${f#"$DIR"/}: |" >&2
  done
  log "up failed; stopping what it started (GPUQ_CLUSTER_KEEP_ON_FAILURE=1 keeps it)"
  cmd_down >/dev/null 2>&1 || true
  exit "$rc"
}

cmd_up() {
  require_tools
  local start=$SECONDS alive total n running
  read -r alive total < <(count_alive)
  if ((alive == total)) && [[ -f $DIR/env ]]; then
    log "already up (state in $DIR)"
    cat "$DIR/env"
    return 0
  fi
  ((alive == 0)) || die "partly up ($alive of $total processes alive); run '$0 down' first"
  # Stale state from a crashed run: nothing of it is alive, so it can go.
  [[ -d $DIR ]] && remove_state_dir
  require_free_ports
  mkdir -p "$DIR/pids" && touch "$DIR/.gpuq-cluster"
  echo "# empty: the nodes take their settings from the environment, not /etc/rabbitmq" >"$DIR/rabbitmq-env.conf"
  write_cookie
  trap on_up_failure EXIT
  start_redis_all
  for n in "${NODES[@]}"; do start_rabbit_node "$n"; done
  for n in "${NODES[@]}"; do wait_rabbit_node "$n"; done
  log "rabbitmq nodes running after $((SECONDS - start)) s; clustering"
  for n in "${NODES[@]:1}"; do join_rabbit_node "$n"; done
  # start_app returns once the app runs, so one look at the cluster suffices.
  running=$(running_nodes || true)
  [[ $(wc -w <<<"$running") -eq ${#NODES[@]} ]] || die "rabbitmq cluster not formed; running: ${running:-none}"
  wait_redis
  trap - EXIT
  write_env
  log "up in $((SECONDS - start)) s (state in $DIR)"
  cat "$DIR/env"
}

# Stops a recorded process if it is still ours: TERM, then KILL after 10 s.
stop_pid() { # pid
  local pid=$1 i
  ours "$pid" && kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 20; i++)); do
    ours "$pid" || return 0
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}

remove_state_dir() {
  # Only a directory this script made; a typo in GPUQ_CLUSTER_DIR must not rm -rf it.
  [[ -f $DIR/.gpuq-cluster ]] || die "$DIR is not a cluster state dir (no .gpuq-cluster); not removing it"
  rm -rf "$DIR"
}

cmd_down() {
  [[ -d $DIR ]] || { log "not up (no $DIR)" && return 0; }
  local n name
  for n in "${NODES[@]}"; do
    ! ours "$(recorded_pid "rabbit$n")" || ctl "$n" -q stop >/dev/null 2>&1 ||
      log "$(node_name "$n") did not stop cleanly; killing it"
    stop_pid "$(recorded_pid "rabbit$n")"
    # The VM itself, in case the wrapper shell died before it.
    [[ -f $(node_dir "$n")/beam.pid ]] && stop_pid "$(cat "$(node_dir "$n")/beam.pid")"
  done
  for name in $(all_pid_names); do
    [[ $name == rabbit* ]] || stop_pid "$(recorded_pid "$name")"
  done
  remove_state_dir
  log "down"
}

# One line per process, then the cluster's view; exit 1 unless all is up.
cmd_status() {
  [[ -d $DIR ]] || { log "not up (no $DIR)" && return 1; }
  local n p name state running healthy=0
  running=$(running_nodes || true)
  for n in "${NODES[@]}"; do
    state="down"
    if ours "$(recorded_pid "rabbit$n")"; then
      state="vm up, app stopped"
      [[ " $running" == *" $(node_name "$n") "* ]] && state="up (app running)"
    fi
    [[ $state == up* ]] || healthy=1
    printf 'rabbitmq %-16s port %-5s pid %-7s %s\n' "$(node_name "$n")" "$(amqp_port "$n")" "$(recorded_pid "rabbit$n")" "$state"
  done
  echo "rabbitmq cluster: running nodes: ${running:-none (no node answered)}"
  for p in "$REDIS_PRIMARY" "$REDIS_REPLICA" "${SENTINELS[@]}"; do
    name=redis-$p
    ((p < 10000)) || name=sentinel-$p
    state="down"
    # The role tells which one sentinel has promoted.
    ours "$(recorded_pid "$name")" &&
      state="up ($(redis-cli -p "$p" role 2>/dev/null | head -1 || true))"
    [[ $state == up* ]] || healthy=1
    printf 'redis    %-16s port %-5s pid %-7s %s\n' "$name" "$p" "$(recorded_pid "$name")" "$state"
  done
  echo "redis sentinel master gpuq: $(sentinel_master | tr '\n' ' ')"
  return "$healthy"
}

# The master address from the first sentinel that answers: "host\nport".
sentinel_master() {
  local s out
  for s in "${SENTINELS[@]}"; do
    out=$(redis-cli -p "$s" sentinel get-master-addr-by-name gpuq 2>/dev/null) || continue
    [[ -n $out ]] && echo "$out" && return 0
  done
  return 1
}

check_node_arg() { # N
  [[ ${1:-} =~ ^[123]$ ]] || die "expected a node number 1, 2 or 3, got '${1:-}'"
}

cmd_stop_node() { # N
  check_node_arg "${1:-}"
  ctl_quiet "$1" -q stop_app
  log "$(node_name "$1") app stopped"
}

cmd_start_node() { # N
  check_node_arg "${1:-}"
  ctl_quiet "$1" -q start_app
  ctl_quiet "$1" -q await_startup -t "$BOOT_TIMEOUT_S"
  log "$(node_name "$1") app running"
}

# Node N's app stays stopped afterwards: it would need `reset` and
# `join_cluster` to come back.
cmd_forget_node() { # N
  check_node_arg "${1:-}"
  local n=$1 other out=""
  ctl_quiet "$n" -q stop_app
  for other in "${NODES[@]}"; do
    [[ $other == "$n" ]] && continue
    if out=$(ctl "$other" -q forget_cluster_node "$(node_name "$n")" 2>&1); then
      log "$(node_name "$n") forgotten by $(node_name "$other")"
      return 0
    fi
  done
  die "no other node could forget $(node_name "$n"): $out"
}

cmd_kill_redis_primary() {
  local addr port pid
  addr=$(sentinel_master) || die "no sentinel answered"
  port=$(sed -n 2p <<<"$addr")
  [[ $port == "$REDIS_PRIMARY" || $port == "$REDIS_REPLICA" ]] || die "sentinel names $port, which is not ours"
  pid=$(recorded_pid "redis-$port")
  ours "$pid" || die "redis on $port (pid ${pid:-none}) is not running or not ours"
  kill -KILL "$pid"
  echo "$port"
  log "killed redis primary on 127.0.0.1:$port (pid $pid)" >&2
}

# Starts a Redis of ours that is down (the primary `kill-redis-primary`
# killed) with its config and data: it comes back as a primary of its own,
# and the sentinels make it a replica of the current primary (Sentinel waits
# about 8 s before it reconfigures an old primary).
cmd_start_redis() { # PORT
  local port=${1:-} rd deadline=$((SECONDS + BOOT_TIMEOUT_S))
  [[ $port == "$REDIS_PRIMARY" || $port == "$REDIS_REPLICA" ]] ||
    die "expected port $REDIS_PRIMARY or $REDIS_REPLICA, got '$port'"
  rd="$DIR/redis-$port"
  [[ -f $rd/redis.conf ]] || die "no $rd/redis.conf; is the cluster up?"
  ! ours "$(recorded_pid "redis-$port")" || die "redis on $port is already running"
  (
    cd "$rd"
    exec setsid redis-server "$rd/redis.conf" >>"$rd/redis.log" 2>&1 </dev/null 9>&-
  ) &
  echo $! >"$(pid_file "redis-$port")"
  until reachable "$port"; do
    ((SECONDS < deadline)) || die "redis on $port did not start in ${BOOT_TIMEOUT_S} s; see $rd/redis.log"
    sleep 0.2
  done
  log "redis on 127.0.0.1:$port started again"
}

cmd_quorum_leader() { # QUEUE
  local queue=${1:-} n out
  [[ -n $queue ]] || die "usage: $0 quorum-leader QUEUE"
  # Any running node answers for the whole cluster; node 1's app may be stopped.
  for n in "${NODES[@]}"; do
    if out=$(ctl "$n" -q list_queues -p / name leader --no-table-headers 2>/dev/null); then
      out=$(awk -F'\t' -v q="$queue" '$1 == q { print $2; exit }' <<<"$out")
      [[ -n $out ]] || die "no quorum queue '$queue' in vhost /"
      echo "$out"
      return 0
    fi
  done
  die "no node answered"
}

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Tests may call `up` concurrently; one at a time, so the second sees "already
# up". The lock sits beside the state dir because `down` removes the dir. The
# processes we start get fd 9 closed, else they (or an epmd a node spawns)
# would hold the lock for as long as they live.
with_lock() { # command...
  exec 9>"$DIR.lock"
  flock -w 180 9 || die "another '$0' holds $DIR.lock for over 180 s"
  "$@"
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    up) with_lock cmd_up ;;
    down) with_lock cmd_down ;;
    status) cmd_status ;;
    stop-node) cmd_stop_node "$@" ;;
    start-node) cmd_start_node "$@" ;;
    forget-node) cmd_forget_node "$@" ;;
    kill-redis-primary) cmd_kill_redis_primary ;;
    start-redis) cmd_start_redis "$@" ;;
    quorum-leader) cmd_quorum_leader "$@" ;;
    ctl) check_node_arg "${1:-}" && ctl "$@" ;;
    *) usage ;;
  esac
}

main "$@"
