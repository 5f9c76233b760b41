#!/usr/bin/env bash
# Loadgen smoke run against a real chatd: short ROOM, BIN24 (with offline users, so the
# durable store is used), CCM (with silent users, so the keepalive closes them), MATOU, OCM
# and WEB (WebSocket clients in the lobby) runs, a short `loadgen lobby` (ROOM, MATOU, CCM and OCM members in the switchboard's one
# lobby), then a short `loadgen mix` of all five at once, each failing on any lost or duplicated
# message, then SIGTERM, which must make chatd exit 0.
#
# Usage: scripts/smoke.sh [CLIENTS] [SENDERS] [RATE_PER_S] [DURATION]
# Builds release binaries if needed. Loopback only; bounded in time; stops by itself.
set -euo pipefail
script_name=smoke
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

case ${1:-} in -h | --help) usage; exit 0 ;; -*) usage_error "unknown option $1" ;; esac
[ $# -le 4 ] || usage_error "at most four arguments, CLIENTS SENDERS RATE_PER_S DURATION"
clients=${1:-200}
senders=${2:-10}
rate=${3:-2000}
duration=${4:-3s}
is_count "$clients" || usage_error "CLIENTS $clients is not a positive integer"
is_count "$senders" || usage_error "SENDERS $senders is not a positive integer"
is_count "$rate" || usage_error "RATE_PER_S $rate is not a positive integer"
is_duration "$duration" || usage_error "DURATION $duration: expected e.g. 3s, 500ms, 1m"

cd "$(dirname "$0")/.."
build_release

port=$(free_port)
bin24_port=$(free_port)
ccm_port=$(free_port)
matou_port=$(free_port)
ocm_tcp_port=$(free_port)
ocm_udp_port=$(free_udp_port)
ocm_relay_port=$(free_udp_port)
web_port=$(free_port)
data_dir=$(mktemp -d)
log=$(mktemp)
echo "+ $chatd --room-port $port --bin24-port $bin24_port --ccm-port $ccm_port --matou-port $matou_port --ocm-tcp-port $ocm_tcp_port --ocm-udp-port $ocm_udp_port --ocm-relay-port $ocm_relay_port --web-port $web_port --ccm-keepalive-idle-ms 500 --ccm-keepalive-answer-ms 300 --data-dir $data_dir --stats-interval-ms 1000"
"$chatd" --room-port "$port" --bin24-port "$bin24_port" --ccm-port "$ccm_port" \
  --matou-port "$matou_port" --ocm-tcp-port "$ocm_tcp_port" --ocm-udp-port "$ocm_udp_port" \
  --ocm-relay-port "$ocm_relay_port" --web-port "$web_port" \
  --ccm-keepalive-idle-ms 500 --ccm-keepalive-answer-ms 300 --data-dir "$data_dir" \
  --stats-interval-ms 1000 2>"$log" &
chatd_pid=$!
cleanup() { kill -9 "$chatd_pid" 2>/dev/null || true; rm -rf "$log" "$data_dir"; }
trap cleanup EXIT

# Every protocol listens: six TCP listeners, two UDP sockets.
wait_listening "$log" "$chatd_pid" 8

echo "+ $loadgen room --port $port --clients $clients --senders $senders --rate $rate --duration $duration"
status=0
timeout 120 "$loadgen" room --port "$port" --clients "$clients" --senders "$senders" \
  --rate "$rate" --duration "$duration" || status=$?

echo "+ $loadgen bin24 --port $bin24_port --users 100 --rate 1000 --duration $duration"
bin24_status=0
timeout 120 "$loadgen" bin24 --port "$bin24_port" --users 100 --rate 1000 \
  --duration "$duration" || bin24_status=$?

echo "+ $loadgen ccm --port $ccm_port --users 100 --rate 1000 --duration $duration --silent-share 0.1"
ccm_status=0
timeout 120 "$loadgen" ccm --port "$ccm_port" --users 100 --rate 1000 \
  --duration "$duration" --silent-share 0.1 || ccm_status=$?

echo "+ $loadgen matou --port $matou_port --users 100 --rate 500 --duration $duration --private-rate 20"
matou_status=0
timeout 120 "$loadgen" matou --port "$matou_port" --users 100 --rate 500 \
  --duration "$duration" --private-rate 20 || matou_status=$?

echo "+ $loadgen ocm --tcp-port $ocm_tcp_port --udp-port $ocm_udp_port --rooms 10 --members 10 --rate 1000 --duration $duration"
ocm_status=0
timeout 120 "$loadgen" ocm --tcp-port "$ocm_tcp_port" --udp-port "$ocm_udp_port" --rooms 10 \
  --members 10 --rate 1000 --duration "$duration" || ocm_status=$?

# 10 senders at 10 messages/s each: within chatd's default 20/s per web user.
echo "+ $loadgen web --port $web_port --clients 50 --senders 10 --rate 100 --duration $duration"
web_status=0
timeout 120 "$loadgen" web --port "$web_port" --clients 50 --senders 10 --rate 100 \
  --duration "$duration" || web_status=$?

echo "+ $loadgen lobby --room 10 --matou 10 --ccm 10 --ocm 10 --rate 200 --duration $duration"
lobby_status=0
timeout 120 "$loadgen" lobby --room-port "$port" --matou-port "$matou_port" --ccm-port "$ccm_port" \
  --ocm-tcp-port "$ocm_tcp_port" --ocm-udp-port "$ocm_udp_port" --room 10 --matou 10 --ccm 10 \
  --ocm 10 --rate 200 --duration "$duration" || lobby_status=$?

echo "+ $loadgen mix --clients 200 --duration $duration (all five protocols at once)"
mix_status=0
timeout 120 "$loadgen" mix --clients 200 --duration "$duration" --room-port "$port" \
  --bin24-port "$bin24_port" --ccm-port "$ccm_port" --matou-port "$matou_port" \
  --ocm-tcp-port "$ocm_tcp_port" --ocm-udp-port "$ocm_udp_port" || mix_status=$?

echo "+ kill -TERM $chatd_pid"
kill -TERM "$chatd_pid"
chatd_status=0
timeout 10 tail --pid="$chatd_pid" -f /dev/null || { echo "smoke: chatd did not exit after SIGTERM" >&2; exit 1; }
wait "$chatd_pid" || chatd_status=$?
echo "--- chatd log (last lines)"
tail -n 5 "$log"
trap - EXIT
rm -rf "$log" "$data_dir"

if [ "$status" -ne 0 ]; then
  echo "smoke: loadgen failed (exit $status): messages lost or duplicated, or errors" >&2
  exit 1
fi
if [ "$bin24_status" -ne 0 ]; then
  echo "smoke: loadgen bin24 failed (exit $bin24_status): messages lost, or errors" >&2
  exit 1
fi
if [ "$ccm_status" -ne 0 ]; then
  echo "smoke: loadgen ccm failed (exit $ccm_status): messages lost, silent users not closed, or errors" >&2
  exit 1
fi
if [ "$matou_status" -ne 0 ]; then
  echo "smoke: loadgen matou failed (exit $matou_status): messages lost, links not brokered, or errors" >&2
  exit 1
fi
if [ "$ocm_status" -ne 0 ]; then
  echo "smoke: loadgen ocm failed (exit $ocm_status): datagrams lost, leave texts missing, or errors" >&2
  exit 1
fi
if [ "$web_status" -ne 0 ]; then
  echo "smoke: loadgen web failed (exit $web_status): lobby messages lost or duplicated, or errors" >&2
  exit 1
fi
if [ "$lobby_status" -ne 0 ]; then
  echo "smoke: loadgen lobby failed (exit $lobby_status): lobby messages lost or duplicated, or errors" >&2
  exit 1
fi
if [ "$mix_status" -ne 0 ]; then
  echo "smoke: loadgen mix failed (exit $mix_status): see the summary table above" >&2
  exit 1
fi
if [ "$chatd_status" -ne 0 ]; then
  echo "smoke: chatd exited $chatd_status after SIGTERM, expected 0" >&2
  exit 1
fi
echo "smoke: ok"
