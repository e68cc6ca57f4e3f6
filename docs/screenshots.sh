#!/usr/bin/env bash
# Takes the screenshots in docs/: the gallery page, page-desktop.png
# (1280x900) and page-390.png (390x844, a phone), and the supervisor's status
# page, status-page.png (1280x900), after some traffic and one killed worker.
#
# Starts the whole stack (gallery-supervisor: nginx, the static server, one
# API worker) on free ports over a fresh database in a temporary directory,
# adds the README's sample image (an Unsplash URL, which this offline stack
# cannot load, so the placeholder shows) and one more of the site's own,
# photographs the front door with headless Chromium, and stops the stack.
#
#   bash docs/screenshots.sh
#
# Uses ./target/release/gallery-supervisor when built, else the debug build
# (built when missing); GALLERY_SUPERVISOR=path picks another. Needs nginx,
# curl and chromium.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

supervisor=${GALLERY_SUPERVISOR:-}
if [[ -z $supervisor ]]; then
  if [[ -x target/release/gallery-supervisor ]]; then
    supervisor=target/release/gallery-supervisor
  else
    [[ -x target/debug/gallery-supervisor ]] || cargo build --bins
    supervisor=target/debug/gallery-supervisor
  fi
fi
chromium=$(command -v chromium || command -v chromium-browser) || {
  echo "screenshots.sh: chromium not found (apt-get install chromium)" >&2
  exit 1
}

work=$(mktemp -d)
chmod 755 "$work"
# Run as root, the servers run as nobody: let them have the database's
# directory, as an operator would.
if [[ $(id -u) == 0 ]]; then chown nobody "$work"; fi
log=$work/supervisor.log
pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Port 0 everywhere: any free ports; the supervisor says which.
"$supervisor" --port 0 --static-port 0 --api-base-port 0 --admin-port 0 --api-workers 3 \
  --database "$work/gallery.db" --run-dir "$work/run" --assets "$repo/assets" \
  >"$log" 2>&1 &
pid=$!

url=
for _ in $(seq 300); do
  url=$(grep -o 'gallery is up: open http://[^ ]*' "$log" | sed 's/.*open //') || true
  [[ -n $url ]] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log" >&2
    echo "screenshots.sh: the stack did not start" >&2
    exit 1
  fi
  sleep 0.1
done
[[ -n $url ]] || { cat "$log" >&2; echo "screenshots.sh: no 'gallery is up' after 30 s" >&2; exit 1; }
echo "stack up at $url"

add() {
  curl -fsS "${url}api/images.json" -H 'Content-Type: application/json' --data "$1" >/dev/null
}
add '{"title": "Cat", "alt_text": "A cool cat", "url": "https://images.unsplash.com/photo-1533738363-b7f9aef128ce"}'
add '{"title": "Another sunset", "alt_text": "The sun going down once more", "url": "/images/sunset.svg"}'

shoot() { # FILE WIDTH HEIGHT
  "$chromium" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --no-first-run --disable-background-networking --user-data-dir="$work/profile" \
    --virtual-time-budget=5000 \
    --screenshot="$repo/docs/$1" --window-size="$2,$3" "$url" 2>/dev/null
  echo "wrote docs/$1 (${2}x$3)"
}
shoot page-desktop.png 1280 900
shoot page-390.png 390 844

# The status page: ~20 s of traffic (two samples a worker every 2 s make the
# charts), one worker killed so that its restart shows, then a photo.
admin=$(grep -o 'admin: http://[^ ]*' "$log" | sed 's/admin: //')
end=$((SECONDS + 20))
while ((SECONDS < end)); do
  for _ in $(seq 20); do curl -s -o /dev/null "${url}api/images.json" & done
  wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
  sleep 0.1
done
api2=$(curl -fsS "${admin}status.json" | python3 -c 'import json,sys; print([c["pid"] for c in json.load(sys.stdin)["children"] if c["name"]=="api-2"][0])')
kill -9 "$api2"
sleep 3
url=$admin
shoot status-page.png 1280 900
