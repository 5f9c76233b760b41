#!/usr/bin/env bash
# ROOM over TLS against ROOM in plaintext, on one chatd (issue 23), then TLS handshakes/s.
#
# One chatd, pinned to CPU 0, serves ROOM on a plaintext port and on a TLS port (the same
# room); the loadgen runs on CPU 1. At each rate `loadgen room` runs against the plaintext
# port and against the TLS port (`--tls --ca`) alternately, the order swapped every other run,
# and the script prints medians: p50 and p99 delivery latency, their TLS/plaintext ratio, and
# server CPU per delivery (utime + stime of chatd from /proc/PID/stat around the run, over
# every delivery of the run, ramp-up and drain included). Then `loadgen churn --tls` (ROOM
# only, full handshakes: the loadgen turns session resumption off) reports handshakes/s
# achieved, and chatd's CPU over that run gives the handshakes one core of chatd can do a
# second (handshakes / server CPU seconds; the loadgen's core, which verifies every server
# certificate, may be the ceiling of the achieved rate).
#
# Usage: scripts/tls-bench.sh [options]
#   --rates LIST        deliveries/s, comma-separated (default 100000,1000000)
#   --runs N            runs per rate and transport, medians reported (default 3, at most 20)
#   --duration D        measured duration of each run, loadgen syntax (default 10s, at most 2m)
#   --clients N         room members (default 100)
#   --senders N         senders (default 10)
#   --connects N        churn's connections (default 20000; 0 skips churn)
#   --connect-rate N    churn's connections started per second (default 2000: at 5000 the
#                       loadgen's core, verifying every certificate, falls behind)
#
# The certificates (an ECDSA P-256 CA and a server certificate for 127.0.0.1) are made at run
# time with openssl in a temp directory and removed at the end: no key is ever committed.
# Results: results/tls-bench-YYYYmmdd-HHMMSS/ (commands, machine, every run's JSON and text,
# summary.txt). Loopback only; every run is bounded by `timeout`.
set -euo pipefail

rates=100000,1000000
runs=3
duration=10s
clients=100
senders=10
connects=20000
connect_rate=2000

script_name=tls-bench
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) rates=$(option_value "$@"); shift 2 ;;
    --runs) runs=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --clients) clients=$(option_value "$@"); shift 2 ;;
    --senders) senders=$(option_value "$@"); shift 2 ;;
    --connects) connects=$(option_value "$@"); shift 2 ;;
    --connect-rate) connect_rate=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
is_count "$runs" && [ "$runs" -le 20 ] || usage_error "--runs must be 1 to 20"
is_count "$clients" || usage_error "--clients must be a positive integer"
is_count "$senders" || usage_error "--senders must be a positive integer"
[ "$connects" = 0 ] || is_count "$connects" || usage_error "--connects must be a count (0 skips churn)"
[ "$connects" -le 1000000 ] || usage_error "--connects at most 1000000 (the run must stay bounded)"
is_count "$connect_rate" || usage_error "--connect-rate must be a positive integer"
is_duration "$duration" || usage_error "--duration must look like 500ms, 10s or 1m"
duration_s() { case "$1" in *ms) echo $(( ${1%ms} / 1000 + 1 )) ;; *s) echo "${1%s}" ;; *m) echo $(( ${1%m} * 60 )) ;; esac; }
[ "$(duration_s "$duration")" -le 120 ] || usage_error "--duration at most 2m (the run must stay bounded)"
IFS=, read -r -a rate_list <<<"$rates"
for r in "${rate_list[@]}"; do
  is_count "$r" || usage_error "--rates: $r is not a positive integer"
  [ $(( r % clients )) -eq 0 ] || usage_error "--rates: $r is not a multiple of --clients ($clients): the message rate is deliveries/s / clients"
done

cd "$(dirname "$0")/.."
for tool in python3 taskset openssl; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs: chatd on CPU 0, the loadgen on CPU 1"

make_results_dir tls-bench
build_release

pki=$(mktemp -d)
data_dir=$(mktemp -d)
chatd_pid=
cleanup() {
  if [ -n "$chatd_pid" ]; then
    kill -TERM "$chatd_pid" 2>/dev/null || true
    timeout 10 tail --pid="$chatd_pid" -f /dev/null 2>/dev/null || true
  fi
  stop_chatd_hard
  wait 2>/dev/null || true
  rm -rf "$pki" "$data_dir"
}
trap cleanup EXIT

# The certificates, made here and removed at the end.
run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$pki/ca.key" -out "$pki/ca.pem" -subj "/CN=tls-bench CA" 2>/dev/null
run openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$pki/key.pem" -out "$pki/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$pki/san.ext"
run openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$pki/san.ext" -out "$pki/cert.pem" 2>/dev/null

room_port=$(free_port)
tls_port=$(free_port)
log="$results_dir/chatd.log"
echo "+ taskset -c 0 $chatd --room-port $room_port --room-tls-port $tls_port ... &" >&3
echo "taskset -c 0 $chatd --room-port $room_port --room-tls-port $tls_port --tls-cert CERT --tls-key KEY --bin24-port 0 --ccm-port 0 --matou-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 --data-dir DIR &" >>"$results_dir/commands.txt"
taskset -c 0 "$chatd" --room-port "$room_port" --room-tls-port "$tls_port" \
  --tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem" --bin24-port 0 --ccm-port 0 \
  --matou-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 \
  --data-dir "$data_dir" 2>"$log" &
chatd_pid=$!
wait_listening "$log" "$chatd_pid" 2

# One run: $1 label (plain, tls), $2 deliveries/s, $3 run number. Writes LABEL-RATE-N.json
# and .txt and appends "label rate n cpu_ticks" to runs.tsv.
one_run() {
  local label=$1 rate=$2 n=$3 port=$tls_port tls=() before after
  if [ "$label" = plain ]; then port=$room_port; else tls=(--tls --ca "$pki/ca.pem"); fi
  local base="$results_dir/$label-$rate-$n"
  before=$(cpu_ticks "$chatd_pid")
  run timeout $(( $(duration_s "$duration") + 60 )) taskset -c 1 "$loadgen" room "${tls[@]}" \
    --port "$port" --clients "$clients" --senders "$senders" --rate $(( rate / clients )) \
    --payload-bytes 64 --duration "$duration" --json "$base.json" >"$base.txt" 2>&1 || true
  after=$(cpu_ticks "$chatd_pid")
  echo "$label $rate $n $(( after - before ))" >>"$results_dir/runs.tsv"
}

: >"$results_dir/runs.tsv"
for rate in "${rate_list[@]}"; do
  for n in $(seq 1 "$runs"); do
    if [ $(( n % 2 )) -eq 1 ]; then order="plain tls"; else order="tls plain"; fi
    for label in $order; do one_run "$label" "$rate" "$n"; done
  done
done

if [ "$connects" -gt 0 ]; then
  before=$(cpu_ticks "$chatd_pid")
  run timeout $(( connects / connect_rate + 120 )) taskset -c 1 "$loadgen" churn --tls \
    --ca "$pki/ca.pem" --protocols room --room-port "$tls_port" --connects "$connects" \
    --connect-rate "$connect_rate" --json "$results_dir/churn.json" \
    >"$results_dir/churn.txt" 2>&1 || true
  after=$(cpu_ticks "$chatd_pid")
  echo "churn 0 1 $(( after - before ))" >>"$results_dir/runs.tsv"
fi

python3 - "$results_dir" "$clock_ticks_per_s" <<'EOF' | tee "$results_dir/summary.txt"
import json, os, statistics, sys
out, hz = sys.argv[1], int(sys.argv[2])
rows = {}
churn_ticks = None
for line in open(os.path.join(out, "runs.tsv")):
    label, rate, n, ticks = line.split()
    if label == "churn":
        churn_ticks = int(ticks)
        continue
    try:
        d = json.load(open(os.path.join(out, f"{label}-{rate}-{n}.json")))
    except (OSError, ValueError):
        rows.setdefault((int(rate), label), []).append(None)
        continue
    lat = d["latency_ms"]["delivery"]
    delivered = d["deliveries"]["delivered"]
    cpu_us = int(ticks) / hz * 1e6 / delivered if delivered else float("nan")
    ok = "VALID" if d["verdict"]["valid"] else "INVALID"
    if d["losses"]["total"] or any(d["errors"][k] for k in ("connect", "read", "write", "protocol")):
        ok = "LOSS/ERRORS"
    rows.setdefault((int(rate), label), []).append((lat["p50_ms"], lat["p99_ms"], cpu_us, ok))
print("rate/s   transport  p50 ms   p99 ms   server CPU/delivery  verdicts")
medians = {}
for (rate, label) in sorted(rows):
    runs = [r for r in rows[(rate, label)] if r]
    if not runs:
        print(f"{rate:<8} {label:<9}  (no result)")
        continue
    m = tuple(statistics.median(r[i] for r in runs) for i in range(3))
    medians[(rate, label)] = m
    print(f"{rate:<8} {label:<9}  {m[0]:<8.3f} {m[1]:<8.3f} {m[2]:<6.2f} us            {', '.join(r[3] for r in runs)}")
for rate in sorted({r for r, _ in medians}):
    if (rate, "plain") in medians and (rate, "tls") in medians:
        p, t = medians[(rate, "plain")], medians[(rate, "tls")]
        print(f"{rate}/s: TLS/plain p99 {t[1] / p[1]:.2f}x, server CPU per delivery {t[2] / p[2]:.2f}x")
if churn_ticks is not None:
    try:
        c = json.load(open(os.path.join(out, "churn.json")))
        done = c["tls_handshakes"]
        cpu_s = churn_ticks / hz
        per_core = done / cpu_s if cpu_s else float("nan")
        errors = sum(c["errors"][k] for k in ("connect", "read", "write", "protocol"))
        print(f"churn --tls: {done} full handshakes, {c['tls_handshakes_per_s']:.0f}/s achieved; "
              f"chatd CPU {cpu_s:.2f} s: {per_core:.0f} handshakes per chatd CPU second "
              f"(one core's capacity, sign-in included); errors {errors}")
    except (OSError, ValueError, KeyError) as e:
        print(f"churn: no result ({e})")
print("server CPU/delivery: chatd utime+stime over the whole run / every delivery of the run")
EOF
