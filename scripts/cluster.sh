#!/usr/bin/env bash
# A chatd cluster on this machine (issue 20, docs/CLUSTER.md): a redis-server and N chatd
# nodes, each with --reuse-port and --cluster, all on the default ports (the kernel spreads new
# connections among the nodes: one node per core). Prints every command it runs; Ctrl-C or
# SIGTERM stops every process it started (by pid) and removes its temporary directory.
#
# Usage: scripts/cluster.sh N [options]
#   N                   nodes to start, 1 to 16
#   --redis-port P      the port redis-server listens on (default 6379)
#   --admin-base-port P give node i the admin port P+i-1 (default: no admin port); an admin
#                       port is never shared, so each node's metrics stay its own
#   --all-protocols     also serve BIN24 and OCM (off by default). Both cross nodes: BIN24's
#                       live messages and offline store (in Redis, whose append-only file is
#                       fsynced on every write), OCM's rooms (a token is checked by whichever
#                       node a datagram reaches); OCM's stage-1 relay stays per node
#   --log-level LEVEL   chatd's --log-level (default info)
#   --cluster-lease-ms MS  each node's --cluster-lease-ms (default: chatd's, 3000): a node
#                       silent this long is taken for dead and its lobby members are
#                       announced gone (at least 4)
#
# Builds the release chatd first (cargo build --release). Nodes are named node-1..node-N;
# their logs and data directories are in a temporary directory printed at start. Loopback
# only: Redis binds 127.0.0.1, with no snapshots but an append-only file fsynced on every write
# (--save '' --appendonly yes --appendfsync always: BIN24's "300" means on Redis's disk).
set -euo pipefail

nodes=
redis_port=6379
admin_base_port=
all_protocols=0
log_level=info
lease_ms=

script_name=cluster
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --redis-port) redis_port=$(option_value "$@"); shift 2 ;;
    --admin-base-port) admin_base_port=$(option_value "$@"); shift 2 ;;
    --all-protocols) all_protocols=1; shift ;;
    --log-level) log_level=$(option_value "$@"); shift 2 ;;
    --cluster-lease-ms) lease_ms=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) usage_error "unknown option $1" ;;
    *)
      [ -z "$nodes" ] || usage_error "one N only, not $nodes and $1"
      nodes=$1; shift ;;
  esac
done
[ -n "$nodes" ] || usage_error "N (the number of nodes) is missing"
is_count "$nodes" && [ "$nodes" -le 16 ] || usage_error "N $nodes: must be 1 to 16"
is_count "$redis_port" && [ "$redis_port" -le 65535 ] || usage_error "--redis-port $redis_port is not a port"
if [ -n "$admin_base_port" ]; then
  is_count "$admin_base_port" && [ $((admin_base_port + nodes - 1)) -le 65535 ] \
    || usage_error "--admin-base-port $admin_base_port: node ports would not fit below 65536"
fi
if [ -n "$lease_ms" ]; then
  is_count "$lease_ms" && [ "$lease_ms" -ge 4 ] || usage_error "--cluster-lease-ms $lease_ms: a count of milliseconds, at least 4"
fi
case "$log_level" in error|warn|info|debug|trace) ;; *) usage_error "--log-level $log_level" ;; esac

cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || die "redis-server is needed (apt-get install redis-server)"
build_release

work=$(mktemp -d -t chatd-cluster.XXXXXX)
pids=()
stop_all() {
  trap - INT TERM EXIT
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  echo "$script_name: stopped" >&2
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a command and starts it in the background, so that $! is the process itself (not a
# subshell around `run`) and stop_all signals what it started.
start() {
  echo "+ $(printf '%q ' "$@")" >&3
  "$@" &
  pids+=($!)
}

echo "$script_name: logs and data in $work" >&2
start redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
  --dir "$work" >"$work/redis.log" 2>&1
for _ in $(seq 1 100); do
  if grep -q "Ready to accept connections" "$work/redis.log"; then break; fi
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/redis.log" >&2; die "redis-server exited"; }
  sleep 0.05
done
grep -q "Ready to accept connections" "$work/redis.log" || die "redis-server not ready within 5 s"

protocol_args=()
if [ "$all_protocols" = 0 ]; then
  protocol_args=(--bin24-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0)
fi
for i in $(seq 1 "$nodes"); do
  args=(--reuse-port --cluster "redis://127.0.0.1:$redis_port" --node-name "node-$i"
    --data-dir "$work/node-$i" --log-level "$log_level" "${protocol_args[@]}")
  if [ -n "$admin_base_port" ]; then args+=(--admin-port $((admin_base_port + i - 1))); fi
  if [ -n "$lease_ms" ]; then args+=(--cluster-lease-ms "$lease_ms"); fi
  start "$chatd" "${args[@]}" 2>"$work/node-$i.log"
  for _ in $(seq 1 100); do
    if grep -q "subscribed to switchboard:lobby" "$work/node-$i.log" \
      && grep -q "listening on" "$work/node-$i.log"; then break; fi
    kill -0 "${pids[$i]}" 2>/dev/null || { cat "$work/node-$i.log" >&2; die "node-$i exited"; }
    sleep 0.05
  done
  grep -q "subscribed to switchboard:lobby" "$work/node-$i.log" || die "node-$i did not join within 5 s"
done
echo "$script_name: $nodes node(s) up; Ctrl-C stops them all" >&2
# Until a signal, or until any process started here exits.
wait -n "${pids[@]}" || true
echo "$script_name: a process exited; stopping the others" >&2
