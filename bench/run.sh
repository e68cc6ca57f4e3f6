#!/usr/bin/env bash
# Throughput benchmark: the same GETs measured side by side in one run —
# nginx's own ceiling (a `return 200` of the same size), through nginx to the
# workers, straight to one worker, and the static page direct vs through
# nginx. Prints requests/s and ratios; absolute numbers drift on a shared
# machine, the ratios are what to compare.
#
#   bash bench/run.sh [SECONDS_PER_CASE] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conns=${2:-25}
command -v wrk >/dev/null || { echo "bench: needs wrk (apt-get install wrk)" >&2; exit 1; }
nginx=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --quiet

work=$(mktemp -d)
chmod 755 "$work"
cleanup() { kill "$sup" 2>/dev/null || true; [ -n "${ceiling:-}" ] && kill "$ceiling" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

front=$(free_port)
./target/release/gallery-supervisor --port "$front" --static-port 0 --api-base-port 0 \
  --api-workers 3 --run-dir "$work/run" --database "$work/g.db" >"$work/stack.log" 2>&1 &
sup=$!
for _ in $(seq 300); do grep -q "gallery is up" "$work/stack.log" && break; sleep 0.1; done
grep -q "gallery is up" "$work/stack.log" || { cat "$work/stack.log"; exit 1; }
state=$(./target/release/gallery-supervisor status --json --run-dir "$work/run")
port_of() { python3 -c "import json,sys; print([c['port'] for c in json.load(sys.stdin)['children'] if c['name']=='$1'][0])" <<<"$state"; }
api1=$(port_of api-1); static=$(port_of static)

# nginx's own ceiling: the same nginx build answering a same-sized body itself.
body=$(curl -s "http://127.0.0.1:$api1/images.json")
ceil_port=$(free_port)
mkdir -p "$work/ceil/tmp"
cat >"$work/ceil/nginx.conf" <<CONF
daemon off; worker_processes 2; pid nginx.pid; error_log stderr warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp;
  uwsgi_temp_path tmp; scgi_temp_path tmp;
  server { listen 127.0.0.1:$ceil_port; location / { default_type application/json; return 200 '$body'; } } }
CONF
"$nginx" -p "$work/ceil/" -c nginx.conf -e stderr &
ceiling=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ceil_port/" >/dev/null && break; sleep 0.05; done

rate() { wrk -t2 -c"$conns" -d"${secs}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
ceil=$(rate "http://127.0.0.1:$ceil_port/")
via=$(rate "http://127.0.0.1:$front/api/images.json")
direct=$(rate "http://127.0.0.1:$api1/images.json")
static_via=$(rate "http://127.0.0.1:$front/")
static_direct=$(rate "http://127.0.0.1:$static/")

printf '\n%-46s %12s %10s\n' "case ($conns connections, ${secs}s each)" "requests/s" "vs ceiling"
row() { printf '%-46s %12.0f %9.2fx\n' "$1" "$2" "$(echo "$2 / $ceil" | bc -l)"; }
row "nginx ceiling (return 200, same body)" "$ceil"
row "GET /api/images.json via nginx, 3 workers" "$via"
row "GET /images.json straight to one worker" "$direct"
row "GET / (page) via nginx" "$static_via"
row "GET / (page) straight to static-server" "$static_direct"
printf '\nvia nginx / one worker direct: %.2f   static via nginx / direct: %.2f\n' \
  "$(echo "$via / $direct" | bc -l)" "$(echo "$static_via / $static_direct" | bc -l)"
