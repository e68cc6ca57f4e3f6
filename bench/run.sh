#!/usr/bin/env bash
# The benchmark (SPEC §12), one command: builds the release binaries and the
# trivial upstream (examples/trivial_upstream.rs) as `bash scripts/run` does, then runs bench/bench.py,
# which starts a fresh stack and its ceilings on free ports, measures them
# side by side with wrk, prints the table and writes JSON.
#
#   bash bench/run.sh [--smoke] [--seconds N] [--rounds N] [--connections N] [--json FILE] [--keep]
#                     [--database postgres://USER:PASS@HOST:PORT/DB] [--debug-build]
#
# --smoke: 1 s per case and 5 connections, for CI. Exits non-zero when a case
# cannot run or the POST accounting finds a lost or duplicated row; the
# ratios themselves are reported, not judged. --debug-build builds and
# measures the debug binaries instead (CI: minutes less to build; its
# figures mean nothing, and the table says so). Every process it starts is
# stopped on exit, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench: needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: needs python3" >&2; exit 1; }
case " $* " in *" -h "* | *" --help "*) exec python3 bench/bench.py --help ;; esac
# The release binaries are those of `bash scripts/run` (scripts/release-build).
built=$(mktemp)
# Its own process group, so that a Ctrl-C or SIGTERM stops cargo under it too.
set -m
case " $* " in
  *" --debug-build "*) { cargo build --locked --quiet --bins --examples && echo target/debug; } >"$built" & ;;
  *) bash scripts/release-build --locked --quiet --bins --examples >"$built" & ;;
esac
build=$!
set +m
trap 'kill -- -"$build" 2>/dev/null; rm -f "$built"; exit 130' INT
trap 'kill -- -"$build" 2>/dev/null; rm -f "$built"; exit 143' TERM HUP
wait "$build" || { rm -f "$built"; exit 1; }
trap - INT TERM HUP
binaries=$(cat "$built")
rm -f "$built"
# The driver stops whatever it started, on any exit (it handles SIGTERM,
# SIGHUP and Ctrl-C itself); exec, so those signals reach it directly.
exec python3 bench/bench.py --binaries "$binaries" "$@"
