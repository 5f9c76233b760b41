#!/usr/bin/env bash
# The two memory attacks on BIN24's offline store, against a real chatd, with its resident
# memory sampled from /proc: the figures of docs/RELIABILITY.md, "BIN24 custody".
set -euo pipefail
script_name=bin24-attack.sh

usage() {
  cat <<'TXT'
Usage: scripts/bin24-attack.sh flood|storm [SECONDS] [CHATD]

  flood   4 senders send 1024-byte BIN24 frames as fast as they can to 30,000 offline
          users for SECONDS (default 15), reading the answers; reports the frames sent and
          answered, chatd's resident memory before, at its peak and 10 s after, and the
          store's size on disk.
  storm   stores 20,000 frames (20 MB) for bob, then 100 logins as bob 10 ms apart, each
          sending one frame and closing at once; then bob logs in and reads everything.
          Reports the resident memory peak and after, and frames received, distinct and
          missing (must be 0). SECONDS is not used.

CHATD is a chatd binary to attack (default: the release build of this checkout, built
first). Runs on 127.0.0.1 only, on free ports, with a fresh data directory; stops by itself.
Needs python3.
TXT
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  flood|storm) mode=$1 ;;
  *) usage >&2; exit 2 ;;
esac
seconds=${2:-15}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ] || [ "$seconds" -gt 600 ]; then
  echo "$script_name: SECONDS must be a whole number from 1 to 600, not '$seconds'" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
if [ -n "${3:-}" ]; then
  chatd=$3
else
  build_release
fi

port=$(free_port)
data=$(mktemp -d)
log=$(mktemp)
"$chatd" --room-port 0 --ccm-port 0 --matou-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 \
  --ocm-relay-port 0 --web-port 0 --bin24-port "$port" --data-dir "$data" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data" "$log"' EXIT
wait_listening "$log" "$pid" 1
rss() { awk '/VmRSS/{print $2}' "/proc/$pid/status"; }
echo "chatd resident before: $(rss) kB"

python3 - "$mode" "$port" "$seconds" <<'PY' &
import socket, struct, sys, threading, time
mode, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def name(s): return s.encode().ljust(8, b'\0')
def frame(kind, mid, src, dst, body):
    return struct.pack('<HHI', 24 + len(body), kind, mid & 0xffffffff) + name(src) + name(dst) + body
body = b'x' * 1000
if mode == 'flood':
    stop = time.time() + seconds
    sent = [0] * 4; answered = [0] * 4
    def sender(i):
        s = socket.create_connection(('127.0.0.1', port))
        def reader():
            while True:
                try: data = s.recv(65536)
                except OSError: return
                if not data: return
                answered[i] += len(data) // 27
        threading.Thread(target=reader, daemon=True).start()
        mid = 0
        while time.time() < stop:
            s.sendall(b''.join(frame(0, mid + k, f's{i}', f'u{(mid + k) % 30000}', body) for k in range(64)))
            mid += 64; sent[i] += 64
        deadline = time.time() + 30
        while answered[i] < sent[i] and time.time() < deadline: time.sleep(0.1)
        s.close()
    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    print(f'frames sent {sum(sent)}, answered {sum(answered)}')
else:
    n = 20000
    a = socket.create_connection(('127.0.0.1', port))
    for i in range(0, n, 100):
        a.sendall(b''.join(frame(0, k, 'alice', 'bob', body) for k in range(i, min(n, i + 100))))
    answers, buf = 0, b''
    while answers < n:
        buf += a.recv(65536)
        answers += len(buf) // 27; buf = buf[len(buf) // 27 * 27:]
    for i in range(100):
        s = socket.create_connection(('127.0.0.1', port))
        s.sendall(frame(0, i, 'bob', 'nobody', b''))
        time.sleep(0.01)
        s.close()
    time.sleep(2)
    s = socket.create_connection(('127.0.0.1', port))
    s.sendall(frame(1, 0xffffffff, 'bob', 'nobody', b'200'))
    s.settimeout(5); ids, buf = [], b''
    try:
        while True:
            data = s.recv(1 << 20)
            if not data: break
            buf += data
            while len(buf) >= 24:
                length = struct.unpack('<H', buf[:2])[0]
                if len(buf) < length: break
                ids.append(struct.unpack('<I', buf[4:8])[0]); buf = buf[length:]
    except socket.timeout:
        pass
    missing = n - len(set(ids) & set(range(n)))
    print(f'bob received {len(ids)}, distinct {len(set(ids))}, missing {missing}')
PY
client=$!
peak=0
while kill -0 "$client" 2>/dev/null; do
  now=$(rss)
  [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.2
done
wait "$client"
echo "chatd resident peak (sampled): $peak kB; $(grep VmHWM "/proc/$pid/status" | tr -s ' \t' ' ')"
sleep 10
echo "chatd resident 10 s after: $(rss) kB; store on disk: $(du -sh "$data" | cut -f1)"
