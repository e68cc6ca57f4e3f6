#!/usr/bin/env python3
"""The gallery benchmark (SPEC §12): the stack and its ceilings, side by side.

Run through `bash bench/run.sh`, which builds the release binaries first.
Python 3 standard library only; needs `wrk` and nginx.

In one run, on free ports, everything started fresh in a temporary directory:

  the stack   gallery-supervisor with 3 API workers (nginx in front, one
              static server, one SQLite file; or, with --database
              postgres://..., a fresh PostgreSQL database made for the run)
  ceilings    nginx answering the same bytes itself (`return 200`, or a
              static file for the 1,000-row body), and nginx in front of
              `examples/trivial_upstream`s (fixed bytes, any method) with the
              stack's own generated nginx.conf: the same directives, the same
              upstream blocks with one trivial upstream for each of their
              servers (3 API workers, their backups, the static server), the
              same access log (sent to a port the bench holds and never
              reads), each trivial upstream on the threads the supervisor
              gave the server it stands for; plus one trivial upstream
              measured straight

Each case is `wrk -t2 -cC -dDs --latency`, run beside its ceiling so the two
see the same machine load: a GET case and its ceilings are measured in turn,
--rounds times over (default 2), and each keeps its best round. The POST case checks, row by row, that every
acknowledged POST is in the database exactly once. Prints a table (req/s, p50,
p99, errors, the ratio to the ceiling, the CPU steal during the case), each
process's RSS, and writes JSON; a case during which the hypervisor took 10% or
more of the CPUs marks the run as noisy.

Exit status: 0 when every case ran and the POST accounting holds; 1
otherwise. Ratios are reported, never judged (the numbers depend on the
machine).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the binaries are: the release build, or the debug build with
# --debug-build (CI's smoke run, which checks that everything runs, not how fast).
BINARIES = os.path.join(ROOT, "target", "release")
POST_BODY = b'{"title":"bench","alt_text":"","url":"/images/cat.svg"}'
BIG_ROWS = 1000
# CPU steal (in % of the machine's CPU time during a case) from which the
# run is reported as noisy: its ratios then say more about the neighbours.
NOISY_STEAL_PERCENT = 10.0
# Which bytes the trivial upstreams standing in for each upstream block of
# the stack's nginx.conf answer, when the proxy ceiling is derived from it
# (one trivial upstream per server of the block).
UPSTREAM_STAND_INS = {"gallery_api": "json", "gallery_api_writes": "post", "gallery_static": "page"}


class BenchError(Exception):
    """A failure of the harness or of the stack: the run cannot be trusted."""


def say(*parts):
    print("bench:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Processes:
    """Every process this run started, stopped in reverse order at the end."""

    def __init__(self):
        self.started = []  # (name, Popen, stop signal)
        self.indirect = []  # (name, pid, executable basename): the supervisor's children

    def start(self, name, argv, stop_signal=signal.SIGTERM, **kwargs):
        proc = subprocess.Popen(argv, **kwargs)
        self.started.append((name, proc, stop_signal))
        return proc

    def stop_all(self):
        for name, proc, stop_signal in reversed(self.started):
            if proc.poll() is None:
                try:
                    proc.send_signal(stop_signal)
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    say(f"{name} (pid {proc.pid}) did not stop in 15 s: SIGKILL")
                    proc.kill()
                    proc.wait()
        # Should the supervisor have died without stopping its children, they
        # are ours to stop: by pid, and only if the pid still runs that program.
        for name, pid, exe in self.indirect:
            if process_exe(pid) == exe:
                say(f"{name} (pid {pid}) outlived the supervisor: SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def process_exe(pid):
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def children_of(pid):
    """Direct children of `pid` (nginx's workers), from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, condition, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: the process exited with status {proc.returncode}")
        time.sleep(0.05)
    raise BenchError(f"{what}: not within {timeout} s")


# ---------------------------------------------------------------- HTTP


def http(method, url, body=None, headers=None):
    """Returns (status, content type, body bytes)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read()


def fetch_ok(method, url, body=None, headers=None):
    status, content_type, data = http(method, url, body, headers)
    if not 200 <= status < 300:
        raise BenchError(f"{method} {url}: status {status}: {data[:200]!r}")
    return content_type, data


# ---------------------------------------------------------------- wrk


LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"wrk: cannot read the latency {text!r}")
    return float(match.group(1)) * LATENCY_UNITS[match.group(2)]


def parse_wrk(output):
    def number(pattern, default=None):
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            if default is None:
                raise BenchError(f"wrk: no {pattern!r} in its output:\n{output}")
            return default
        return match.groups()

    requests, duration = number(r"^\s*(\d+) requests in ([\d.]+\w+)")
    (rps,) = number(r"^Requests/sec:\s*([\d.]+)")
    p50, = number(r"^\s*50(?:\.000)?%\s+(\S+)")
    p99, = number(r"^\s*99(?:\.000)?%\s+(\S+)")
    socket_errors = dict(zip(
        ("connect", "read", "write", "timeout"),
        map(int, number(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
            ("0", "0", "0", "0"))),
    ))
    (non2xx,) = number(r"Non-2xx or 3xx responses: (\d+)", ("0",))
    non2xx = int(non2xx)
    return {
        "requests": int(requests),
        "duration": duration,
        "rps": float(rps),
        "p50_ms": to_ms(p50),
        "p99_ms": to_ms(p99),
        "socket_errors": socket_errors,
        "non2xx": non2xx,
        "errors": sum(socket_errors.values()) + non2xx,
    }


def cpu_times():
    """The machine's CPU time so far, from /proc/stat's first line: (steal,
    total) in ticks. Steal is time the hypervisor gave this VM's CPUs to
    someone else; during a case it slows both sides of a ratio, unevenly."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest times are
    # already counted in user and nice)
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_percent(before, after):
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


class Wrk:
    def __init__(self, processes, seconds, connections, threads, work):
        self.processes = processes
        self.seconds = seconds
        self.connections = connections
        self.threads = threads
        self.work = work

    def run(self, url, script=None, env=None):
        argv = ["wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{self.seconds}s",
                "--latency"]
        if script:
            argv += ["-s", script]
        argv.append(url)
        proc = self.processes.start("wrk", argv, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, **(env or {})})
        cpu_before = cpu_times()
        output, _ = proc.communicate()
        steal = steal_percent(cpu_before, cpu_times())
        if proc.returncode != 0:
            raise BenchError(f"wrk {url} exited with {proc.returncode}:\n{output}")
        result = parse_wrk(output)
        result["wrk_output"] = output
        result["steal_percent"] = round(steal, 1)
        return result


# ---------------------------------------------------------------- the stack


class Stack:
    def __init__(self, processes, work, database):
        self.processes = processes
        self.database = database
        self.run_dir = os.path.join(work, "run")
        self.log_path = os.path.join(work, "stack.log")
        self.proc = None
        self.state = None

    def start(self):
        supervisor = os.path.join(BINARIES, "gallery-supervisor")
        argv = [supervisor, "--port", "0", "--static-port", "0", "--api-base-port", "0", "--admin-port", "0",
                "--api-workers", "3", "--run-dir", self.run_dir, "--database", self.database.arg]
        self.log = open(self.log_path, "w")
        self.proc = self.processes.start("gallery-supervisor", argv, stdout=self.log,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_until("the stack says it is up", lambda: "gallery is up" in self.log_text(),
                       60, self.proc)
        except BenchError:
            say("the stack's log:\n" + self.log_text())
            raise
        self.state = self.status()
        for child in self.state["children"]:
            exe = {"static": "static-server", "api": "api-server", "nginx": "nginx"}.get(
                child["role"])
            self.processes.indirect.append((child["name"], child["pid"], exe))

    def log_text(self):
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def status(self):
        out = subprocess.run(
            [os.path.join(BINARIES, "gallery-supervisor"), "status", "--json", "--run-dir",
             self.run_dir], check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def child(self, name):
        for child in self.state["children"]:
            if child["name"] == name:
                return child
        raise BenchError(f"no child {name} in the stack's status")

    def port(self, name):
        return self.child(name)["port"]

    def threads(self, name):
        """The `--threads` the supervisor gave child `name` (0: none given)."""
        with open(f"/proc/{self.child(name)['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if b"--threads" in argv:
            return int(argv[argv.index(b"--threads") + 1])
        return 0


def sqlite_connect(path):
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def as_db_owner(database, work):
    """Runs `work()` (which opens the database) as the database file's owner.

    As root, the servers run as nobody and the file is theirs. A connection
    of root's that closes last-but-holding-no-lock may checkpoint and delete
    `-wal` and `-shm`, which nobody cannot create again in a root-owned
    directory: the workers then fail with "readonly database". Opened as the
    owner, SQLite cannot unlink them either, and anything it creates is
    theirs. `work()` runs in a forked child; its result comes back as JSON.
    """
    owner = os.stat(database)
    if os.geteuid() != 0 or owner.st_uid == 0:
        return work()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(owner.st_gid)
            os.setuid(owner.st_uid)
            result = {"ok": work()}
        except BaseException as error:  # noqa: BLE001 - reported by the parent
            result = {"error": f"{type(error).__name__}: {error}"}
        try:
            with os.fdopen(write_end, "w") as out:
                json.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    result = json.loads(text) if text else {"error": "the child said nothing"}
    if "error" in result:
        raise BenchError(f"database {database}: {result['error']}")
    return result["ok"]


def big_row(k):
    """Row k of the 1,000-row table: ~215 bytes of JSON, like a real photo."""
    return (f"Benchmark photograph number {k:04d} of the set",
            f"A quiet harbour at dusk, boats at anchor and lights on the water (row {k:04d})",
            f"https://images.example.com/bench/harbour-{k:04d}.jpg")


class SqliteDatabase:
    """The stack's SQLite file, read and filled straight (WAL mode: the
    workers see each commit)."""

    kind = "sqlite"

    def __init__(self, work):
        self.path = os.path.join(work, "g.db")
        self.arg = self.path

    def _run(self, work):
        def opened():
            db = sqlite_connect(self.path)
            try:
                return work(db)
            finally:
                db.close()
        return as_db_owner(self.path, opened)

    def count_rows(self):
        return self._run(lambda db: db.execute("SELECT count(*) FROM images").fetchone()[0])

    def fill_to_big(self):
        def work(db):
            with db:
                db.execute("DELETE FROM images WHERE id > 3")
                db.executemany("INSERT INTO images (title, alt_text, url) VALUES (?, ?, ?)",
                               [big_row(k) for k in range(4, BIG_ROWS + 1)])
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
        return self._run(work)

    def titles_like(self, prefix):
        """{title: rows} for titles starting with `prefix`."""
        return self._run(lambda db: dict(db.execute(
            "SELECT title, count(*) FROM images WHERE title LIKE ? GROUP BY title",
            (prefix + "%",)).fetchall()))

    def drop(self):
        pass


class PostgresDatabase:
    """A fresh database created for this run beside the one `--database`
    names (the account needs CREATEDB), reached with psql, dropped at the end."""

    kind = "postgres"

    def __init__(self, url, run_id):
        self.psql = shutil.which("psql")
        if self.psql is None:
            raise BenchError("--database postgres://... needs psql (apt-get install postgresql-client)")
        match = re.match(r"^(postgres(?:ql)?://[^/]*/)([^?]*)(\?.*)?$", url)
        if not match:
            raise BenchError("--database: expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        self.admin_url = url
        self.name = "gallery_bench_" + re.sub(r"[^0-9a-z]", "_", run_id.lower())
        self.arg = match.group(1) + self.name + (match.group(3) or "")
        self._sql(self.admin_url, f"CREATE DATABASE {self.name}")
        self.created = True

    def _sql(self, url, sql):
        # On stdin: the 1,000-row fill is longer than an argument may be.
        done = subprocess.run([self.psql, url, "-X", "-q", "-A", "-t", "-F", "\t",
                               "-v", "ON_ERROR_STOP=1"],
                              input=sql, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"psql: {done.stderr.strip()}")
        return done.stdout

    def sql(self, sql):
        return self._sql(self.arg, sql)

    def count_rows(self):
        return int(self.sql("SELECT count(*) FROM images").strip())

    def fill_to_big(self):
        values = ",".join("('%s','%s','%s')" % row for row in (big_row(k) for k in range(4, BIG_ROWS + 1)))
        self.sql("BEGIN; DELETE FROM images WHERE id > 3; "
                 f"INSERT INTO images (title, alt_text, url) VALUES {values}; COMMIT")
        return self.count_rows()

    def titles_like(self, prefix):
        out = self.sql("SELECT title, count(*) FROM images WHERE title LIKE '%s%%' GROUP BY title"
                       % prefix.replace("'", "''"))
        return {title: int(n) for title, n in (line.split("\t") for line in out.splitlines() if line)}

    def drop(self):
        if self.created:
            self._sql(self.admin_url, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            self.created = False


# ---------------------------------------------------------------- ceilings


def nginx_quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def upstream_servers(stack_conf):
    """The servers of each upstream block of the stack's nginx.conf:
    {block: [port, ...]}, each port once, in order."""
    servers = {}
    for match in re.finditer(r"^\s*upstream\s+(\w+)\s*\{([^}]*)\}", stack_conf, flags=re.M):
        name, inner = match.group(1), match.group(2)
        if name not in UPSTREAM_STAND_INS:
            raise BenchError(f"the stack's nginx.conf has an upstream {name!r} the bench "
                             "cannot stand in for (update UPSTREAM_STAND_INS in bench/bench.py)")
        ports = []
        for port in re.findall(r"^\s*server\s+[^\s;]*:(\d+)", inner, flags=re.M):
            if int(port) not in ports:
                ports.append(int(port))
        servers[name] = ports
    if not servers:
        raise BenchError("no upstream block in the stack's nginx.conf")
    return servers


def ceiling_config(stack_conf, ports, stand_ins, access_log_sink, alone_dir, bodies):
    """The stack's own nginx.conf, turned into the ceilings' config.

    The proxy server keeps every directive the stack's nginx runs with (proxy
    settings, keepalive, the upstreams' servers with their backups and
    failure settings, the POST upstream without keepalive, gzip, buffers,
    the access log); only each upstream server becomes a trivial upstream of
    its own (`stand_ins`: {(block, port): trivial port}), the access log's
    datagrams go to `access_log_sink` (a port the bench holds and never
    reads, so nginx pays for sending them and nothing else does) and the
    listen port is ours. A second server answers the same bytes as the
    stack from nginx itself.
    """
    text = stack_conf

    def upstream(match):
        name, inner = match.group(1), match.group(2)

        def server(line):
            return re.sub(r"^(\s*server\s+)[^\s;]*:(\d+)",
                          lambda m: "%s127.0.0.1:%d" % (m.group(1), stand_ins[(name, int(m.group(2)))]),
                          line)

        lines = [server(line) for line in inner.splitlines() if line.strip()]
        return "\n    upstream %s {\n%s\n    }" % (name, "\n".join(lines))

    text, count = re.subn(r"^\s*upstream\s+(\w+)\s*\{([^}]*)\}", upstream, text, flags=re.M)
    if count == 0:
        raise BenchError("no upstream block in the stack's nginx.conf")
    text, count = re.subn(r"(access_log\s+syslog:server=)[^,\s;]+",
                          r"\g<1>127.0.0.1:%d" % access_log_sink, text, flags=re.M)
    if count == 0:
        raise BenchError("the stack's nginx.conf has no syslog access log to keep")
    # The supervisor's stub_status server (a unix socket) has no place here.
    text = re.sub(r"^\s*server\s*\{\s*listen unix:[^;]*;.*?^    \}\n", "", text,
                  flags=re.M | re.S)
    text = re.sub(r"^\s*# nginx's counters for the supervisor's /metrics.*\n", "", text, flags=re.M)
    text, count = re.subn(r"^(\s*listen\s+)[^\s;]+", r"\g<1>127.0.0.1:%d" % ports["proxy"],
                          text, flags=re.M)
    if count != 1:
        raise BenchError(f"expected one listen directive in the stack's nginx.conf, found {count}")
    # Anything the stack's config includes from its run directory is not ours.
    text = re.sub(r"^\s*include\s[^;]*;", "", text, flags=re.M)
    text = re.sub(r"^\s*user\s[^;]*;", "", text, flags=re.M)

    locations = []
    for k, (path, (content_type, body)) in enumerate(bodies.items()):
        try:
            body_text = body.decode("utf-8")
        except UnicodeDecodeError:
            body_text = None
        if body_text is None or "$" in body_text:
            # `return` would expand the `$`: the same bytes from a file instead.
            body_file = os.path.join(alone_dir, f"body-{k}")
            with open(body_file, "wb") as f:
                f.write(body)
            answer = f"types {{ }}\n            alias {body_file};"
        else:
            answer = f"return 200 {nginx_quote(body_text)};"
        locations.append(
            f"        location = {path} {{\n"
            f"            default_type {nginx_quote(content_type)};\n"
            f"            {answer}\n"
            f"        }}")
    alone = (
        "\n    # nginx answering the same bytes as the stack, itself.\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports['alone']};\n"
        f"        root {alone_dir};\n"
        + "\n".join(locations) + "\n"
        f"        location = /api/images-{BIG_ROWS}.json {{\n"
        "            types { }\n"
        "            default_type application/json;\n"
        "        }\n"
        "    }\n")
    end = text.rstrip().rfind("}")
    return text[:end] + alone + "}\n"


def start_trivial_upstream(processes, work, name, body, content_type, threads):
    body_file = os.path.join(work, f"trivial-{name}.body")
    with open(body_file, "wb") as f:
        f.write(body)
    out_path = os.path.join(work, f"trivial-{name}.out")
    out = open(out_path, "w")
    proc = processes.start(
        f"trivial_upstream ({name})",
        [os.path.join(BINARIES, "examples", "trivial_upstream"), "--port", "0",
         "--body-file", body_file, "--content-type", content_type, "--threads", str(threads)],
        stdout=out, stderr=subprocess.STDOUT)

    def port():
        with open(out_path) as f:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        return int(match.group(1)) if match else None

    wait_until(f"trivial_upstream ({name}) listens", lambda: port() is not None, 10, proc)
    return proc, port()


def start_lone_worker(processes, work, database, counting):
    """A lone api-server on the stack's database, counting its requests for
    /metrics or not (--no-request-stats): the same worker, metrics on/off."""
    name = "api-counted" if counting else "api-uncounted"
    out_path = os.path.join(work, f"{name}.out")
    out = open(out_path, "w")
    argv = [os.path.join(BINARIES, "api-server"), "--port", "0", "--database", database,
            "--name", name, "--existing-database", "--quiet-requests"]
    if not counting:
        argv.append("--no-request-stats")
    proc = processes.start(f"api-server ({name})", argv, stdout=out, stderr=subprocess.STDOUT)

    def port():
        with open(out_path) as f:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        return int(match.group(1)) if match else None

    wait_until(f"{name} listens", lambda: port() is not None, 10, proc)
    return proc, port()


def start_ceiling_nginx(processes, nginx, work, stack_conf, stand_ins, access_log_sink, bodies):
    prefix = os.path.join(work, "ceiling")
    alone_dir = os.path.join(work, "alone")
    os.makedirs(os.path.join(alone_dir, "api"), exist_ok=True)
    os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
    for attempt in range(3):
        ports = dict(proxy=free_port(), alone=free_port())
        config = ceiling_config(stack_conf, ports, stand_ins, access_log_sink, alone_dir, bodies)
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(config)
        log = open(os.path.join(prefix, "nginx.log"), "w")
        proc = processes.start("nginx (ceilings)", [nginx, "-p", prefix + "/", "-c", "nginx.conf",
                                                    "-e", "stderr"],
                               stop_signal=signal.SIGQUIT, stdout=log, stderr=subprocess.STDOUT)

        def answers():
            try:
                return http("GET", f"http://127.0.0.1:{ports['alone']}/")[0] == 200
            except OSError:
                return False

        try:
            wait_until("the ceilings' nginx answers", answers, 10, proc)
            return proc, ports, alone_dir
        except BenchError:
            with open(os.path.join(prefix, "nginx.log")) as f:
                text = f.read()
            if proc.poll() is not None and "Address already in use" in text and attempt < 2:
                continue  # a free port was taken in between: new ports
            say("the ceilings' nginx:\n" + text)
            raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- the run


def fill_to_big(database):
    """Leaves exactly BIG_ROWS rows: the three samples and BIG_ROWS - 3
    realistic ones (~215 bytes of JSON each), whatever the POST case added."""
    count = database.fill_to_big()
    if count != BIG_ROWS:
        raise BenchError(f"the table has {count} rows, not {BIG_ROWS}, after the fill")


def check_posts(database, run_id, result, acked_path, connections, rows_before):
    """Every acknowledged POST is stored exactly once; nothing else was stored."""
    with open(acked_path) as f:
        acked = [line.rstrip("\n") for line in f if line.strip()]

    rows_after = database.count_rows()
    stored = database.titles_like(f"bench {run_id} ")
    ok_responses = result["requests"] - result["non2xx"]
    acked_set = set(acked)
    check = {
        "rows_before": rows_before,
        "rows_after": rows_after,
        "rows_added": rows_after - rows_before,
        "responses_2xx": ok_responses,
        "acknowledged_titles": len(acked),
        "stored_titles": len(stored),
        "lost": sorted(acked_set - set(stored))[:20],
        "stored_twice": sorted(t for t, n in stored.items() if n > 1)[:20],
        "acknowledged_twice": len(acked) - len(acked_set),
        # Requests on the wire when wrk stopped: the server may still store
        # them, but wrk never reads their answers. At most one per connection.
        "stored_unanswered": len(set(stored) - acked_set),
    }
    problems = []
    if len(acked) != ok_responses:
        problems.append(f"wrk counted {ok_responses} 2xx answers but the script saw {len(acked)}")
    if "?" in acked_set:
        problems.append("a 2xx answer did not echo the title it was sent")
    if check["lost"]:
        problems.append(f"acknowledged POSTs missing from the database: {check['lost']}")
    if check["stored_twice"] or check["acknowledged_twice"]:
        problems.append(f"rows stored twice: {check['stored_twice']}, "
                        f"titles acknowledged twice: {check['acknowledged_twice']}")
    if check["rows_added"] != sum(stored.values()):
        problems.append(f"{check['rows_added']} rows were added but {sum(stored.values())} "
                        "carry this run's titles")
    if check["stored_unanswered"] > connections:
        problems.append(f"{check['stored_unanswered']} rows stored without an answer, more than "
                        f"the {connections} requests that can be in flight when wrk stops")
    check["problems"] = problems
    check["ok"] = not problems
    return check


def run(args):
    if shutil.which("wrk") is None:
        raise BenchError("needs wrk (apt-get install wrk)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        raise BenchError("needs nginx (apt-get install nginx)")
    for exe in ("gallery-supervisor", "api-server", "static-server",
                os.path.join("examples", "trivial_upstream")):
        if not os.access(os.path.join(BINARIES, exe), os.X_OK):
            raise BenchError(f"no {BINARIES}/{exe}: run `bash bench/run.sh`, which builds it")

    processes = Processes()
    work = tempfile.mkdtemp(prefix="gallery-bench-")
    # As root the servers run as nobody, and they need to reach the database.
    os.chmod(work, 0o755)
    run_id = f"{os.getpid()}-{int(time.time())}"
    results = {
        "command": sys.argv,
        "config": {
            "seconds": args.seconds, "connections": args.connections, "threads": args.threads,
            "rounds": args.rounds,
            "smoke": args.smoke, "build": "debug" if args.debug_build else "release",
            "binaries": os.path.relpath(BINARIES, ROOT),
            "cpus": os.cpu_count(), "api_workers": 3,
            "nginx": subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip(),
            "wrk": subprocess.run(["wrk", "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True).stdout.splitlines()[0].split(" Copyright")[0],
            "loadavg_before": open("/proc/loadavg").read().split()[:3],
        },
        "cases": [],
    }
    problems = []
    database = None
    try:
        wrk = Wrk(processes, args.seconds, args.connections, args.threads, work)
        database = (PostgresDatabase(args.database, run_id) if args.database
                    else SqliteDatabase(work))
        results["config"]["database"] = database.kind
        stack = Stack(processes, work, database)
        stack.start()
        front = f"http://127.0.0.1:{stack.port('nginx')}"
        static = f"http://127.0.0.1:{stack.port('static')}"
        api1 = f"http://127.0.0.1:{stack.port('api-1')}"
        say(f"the stack is up: nginx {front}, static {static}, api-1 {api1} (work dir {work})")

        # The bytes each case answers, for the ceilings to answer the same.
        page_type, page = fetch_ok("GET", front + "/")
        json_type, json3 = fetch_ok("GET", front + "/api/images.json")
        if len(json.loads(json3)) != 3:
            raise BenchError(f"a fresh database should list 3 images: {json3[:200]!r}")
        if fetch_ok("GET", static + "/")[1] != page or fetch_ok("GET", api1 + "/images.json")[1] != json3:
            raise BenchError("the servers straight and through nginx answer different bytes")
        post_type, post_answer = fetch_ok("POST", front + "/api/images.json", POST_BODY,
                                          {"Content-Type": "application/json"})

        # One trivial upstream for each server of each upstream block, so
        # the ceiling's nginx spreads its requests as the stack's does.
        with open(os.path.join(stack.run_dir, "nginx.conf")) as f:
            stack_conf = f.read()
        # Each runs on the threads the supervisor gave the server it stands
        # in for (`--threads`), so both sides have the same runtime shape.
        threads = {"static": stack.threads("static"), "api": stack.threads("api-1")}
        answers = {"page": (page, page_type, threads["static"]),
                   "json": (json3, json_type, threads["api"]),
                   "post": (post_answer, post_type, threads["api"])}
        results["config"]["server_threads"] = threads
        say("the servers' --threads (0: one per core), given to their trivial stand-ins too: "
            f"{results['config']['server_threads']}")
        trivial, stand_ins = {}, {}
        for block, upstream_ports in upstream_servers(stack_conf).items():
            kind = UPSTREAM_STAND_INS[block]
            for k, upstream_port in enumerate(upstream_ports):
                name = f"{kind}-{k + 1}"
                trivial[name] = start_trivial_upstream(processes, work, name, *answers[kind])
                stand_ins[(block, upstream_port)] = trivial[name][1]
        # nginx's access log datagrams: sent, queued, never read.
        access_log_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        access_log_sink.bind(("127.0.0.1", 0))
        ceiling, ports, alone_dir = start_ceiling_nginx(
            processes, nginx, work, stack_conf, stand_ins, access_log_sink.getsockname()[1],
            {"/": (page_type, page), "/api/images.json": (json_type, json3)})
        proxy = f"http://127.0.0.1:{ports['proxy']}"
        alone = f"http://127.0.0.1:{ports['alone']}"
        for url, want in ((proxy + "/", page), (proxy + "/api/images.json", json3),
                          (alone + "/", page), (alone + "/api/images.json", json3)):
            if fetch_ok("GET", url)[1] != want:
                raise BenchError(f"the ceiling {url} does not answer the stack's bytes")
        if fetch_ok("POST", proxy + "/api/images.json", POST_BODY,
                    {"Content-Type": "application/json"})[1] != post_answer:
            raise BenchError("the POST ceiling does not answer the stack's bytes")

        cases = results["cases"]
        by_id = {}

        def measure(case_id, name, url, kind, script=None, env=None, body_bytes=None):
            say(f"{case_id}: {name} ({args.seconds} s)")
            result = wrk.run(url, script, env)
            result.update(id=case_id, name=name, url=url, kind=kind, body_bytes=body_bytes,
                          method="POST" if script else "GET")
            if result["requests"] == 0:
                problems.append(f"{case_id} {name}: no request was answered")
            cases.append(result)
            by_id[case_id] = result
            return result

        def measure_in_turn(group, rounds_wanted=None):
            """GET cases measured in turn, `args.rounds` times over (or
            `rounds_wanted`), each
            keeping its best round: a case and its ceilings alternate, so a
            slow spell of the (shared, noisy) machine falls on both sides
            rather than on one of them. Every round's req/s is in the JSON."""
            rounds_wanted = rounds_wanted or args.rounds
            rounds = {case[0]: [] for case in group}
            for round_ in range(1, rounds_wanted + 1):
                for case_id, name, url, kind, body_bytes in group:
                    say(f"{case_id}: {name} ({args.seconds} s, round {round_} of {rounds_wanted})")
                    result = wrk.run(url, None, None)
                    result.update(id=case_id, name=name, url=url, kind=kind,
                                  body_bytes=body_bytes, method="GET")
                    rounds[case_id].append(result)
            for case_id, name, *_ in group:
                best = max(rounds[case_id], key=lambda r: r["rps"])
                best["rounds_rps"] = [r["rps"] for r in rounds[case_id]]
                best["rounds_steal_percent"] = [r["steal_percent"] for r in rounds[case_id]]
                if best["requests"] == 0:
                    problems.append(f"{case_id} {name}: no request was answered")
                cases.append(best)
                by_id[case_id] = best

        # Each case beside its ceilings, so that they share the machine's mood.
        measure_in_turn([
            ("1", "GET / via nginx", front + "/", "stack", len(page)),
            ("P1", "nginx -> trivial upstreams, GET /", proxy + "/", "ceiling", len(page)),
            ("N1", "nginx alone, the page's bytes", alone + "/", "ceiling", len(page)),
        ])
        measure_in_turn([
            ("2", "GET / straight to static-server", static + "/", "stack", len(page)),
            ("T2", "trivial upstream straight, the page's bytes",
             f"http://127.0.0.1:{trivial['page-1'][1]}/", "ceiling", len(page)),
        ])
        measure_in_turn([
            ("3", "GET /api/images.json (3 rows) via nginx", front + "/api/images.json",
             "stack", len(json3)),
            ("P3", "nginx -> trivial upstreams, GET /api/images.json",
             proxy + "/api/images.json", "ceiling", len(json3)),
            ("N3", "nginx alone, the 3-row JSON", alone + "/api/images.json", "ceiling",
             len(json3)),
        ])
        measure_in_turn([
            ("4", "GET /images.json straight to api-1", api1 + "/images.json", "stack",
             len(json3)),
            ("T4", "trivial upstream straight, the 3-row JSON",
             f"http://127.0.0.1:{trivial['json-1'][1]}/images.json", "ceiling", len(json3)),
        ])
        # Metrics on vs off: two lone workers alike but for counting,
        # measured in turn twice; each keeps its better round.
        _, counted_port = start_lone_worker(processes, work, stack.database.arg, True)
        _, uncounted_port = start_lone_worker(processes, work, stack.database.arg, False)
        measure_in_turn([
            (case_id, f"GET /images.json straight to a lone worker {what} (best of 2)",
             f"http://127.0.0.1:{port_}/images.json", "metrics", len(json3))
            for case_id, port_, what in (("4c", counted_port, "counting requests"),
                                         ("4u", uncounted_port, "not counting requests"))
        ], rounds_wanted=2)

        script = os.path.join(ROOT, "bench", "post.lua")
        rows_before = stack.database.count_rows()
        acked_path = os.path.join(work, "acked.txt")
        post = measure("5", "POST /api/images.json via nginx", front + "/api/images.json",
                       "stack", script, {"BENCH_RUN": run_id, "BENCH_ACKED": acked_path},
                       body_bytes=len(post_answer))
        check = check_posts(stack.database, run_id, post, acked_path, args.connections,
                            rows_before)
        results["post_check"] = check
        problems += [f"5 POST: {p}" for p in check["problems"]]
        measure("P5", "nginx -> trivial upstreams, POST", proxy + "/api/images.json", "ceiling",
                script, {"BENCH_RUN": run_id, "BENCH_ACKED": os.path.join(work, "acked-ceiling.txt")},
                body_bytes=len(post_answer))

        fill_to_big(stack.database)
        _, big = fetch_ok("GET", front + "/api/images.json")
        if len(json.loads(big)) != BIG_ROWS:
            raise BenchError(f"GET /api/images.json lists {len(json.loads(big))} rows, "
                             f"not {BIG_ROWS}")
        big_path = os.path.join(alone_dir, "api", f"images-{BIG_ROWS}.json")
        with open(big_path, "wb") as f:
            f.write(big)
        os.chmod(big_path, 0o644)
        for d in (alone_dir, os.path.join(alone_dir, "api")):
            os.chmod(d, 0o755)
        big_alone = f"{alone}/api/images-{BIG_ROWS}.json"
        if fetch_ok("GET", big_alone)[1] != big:
            raise BenchError("nginx alone does not answer the 1,000-row bytes")
        measure_in_turn([
            ("6", f"GET /api/images.json ({BIG_ROWS:,} rows) via nginx",
             front + "/api/images.json", "stack", len(big)),
            ("N6", f"nginx alone, the {BIG_ROWS:,}-row JSON (a file)", big_alone, "ceiling",
             len(big)),
            ("6d", f"GET /images.json ({BIG_ROWS:,} rows) straight to api-1",
             api1 + "/images.json", "stack", len(big)),
        ])

        # Memory after the run, and whether any child was restarted during it.
        final = stack.status()
        rss = [{"name": "gallery-supervisor", "pid": stack.proc.pid,
                "rss_kib": rss_kib(stack.proc.pid)}]
        for child in final["children"]:
            rss.append({"name": child["name"], "pid": child["pid"], "rss_kib": rss_kib(child["pid"])})
            if child["role"] == "nginx":
                for k, worker in enumerate(children_of(child["pid"]), 1):
                    rss.append({"name": f"nginx worker {k}", "pid": worker,
                                "rss_kib": rss_kib(worker)})
            if child["restarts"] or child["state"] != "running":
                problems.append(f"{child['name']} was restarted or is not running during the "
                                f"run: state {child['state']}, restarts {child['restarts']}, "
                                f"last exit {child['last_exit']}")
        results["rss"] = rss
        ceiling_rss = [{"name": f"trivial_upstream ({name})", "pid": proc.pid,
                        "rss_kib": rss_kib(proc.pid)} for name, (proc, _) in trivial.items()]
        ceiling_rss.append({"name": "nginx (ceilings) master", "pid": ceiling.pid,
                            "rss_kib": rss_kib(ceiling.pid)})
        for k, worker in enumerate(children_of(ceiling.pid), 1):
            ceiling_rss.append({"name": f"nginx (ceilings) worker {k}", "pid": worker,
                                "rss_kib": rss_kib(worker)})
        results["rss_ceilings"] = ceiling_rss

        results["ratios"] = ratios(by_id)
        results["config"]["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    finally:
        processes.stop_all()
        if database is not None and not args.keep:
            database.drop()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results["problems"] = problems
    results["ok"] = not problems
    return results


# What each stack case is judged against (issue 9's "Done when").
CEILINGS = [
    ("1", "P1", "GET / via nginx vs nginx -> trivial upstreams"),
    ("3", "P3", "GET /api/images.json via nginx vs nginx -> trivial upstreams"),
    ("4", "T4", "one worker straight vs the trivial upstream straight"),
    ("4c", "4u", "a lone worker counting requests (metrics on) vs not (off)"),
    ("2", "T2", "static-server straight vs the trivial upstream straight"),
    ("5", "P5", "POST via nginx vs nginx -> trivial upstreams, POST"),
    ("6", "N6", f"{BIG_ROWS:,}-row GET via nginx vs nginx alone, same bytes"),
]
# And, for the GETs through nginx, against nginx answering the bytes itself.
NGINX_ALONE = {"1": "N1", "3": "N3", "6": "N6", "6d": "N6"}


def ratios(by_id):
    out = []
    for case, ceiling, what in CEILINGS:
        rps, top = by_id[case]["rps"], by_id[ceiling]["rps"]
        ratio = rps / top if top else None
        # A case's first line is its ceiling; later ones are extra ratios.
        if "ceiling" not in by_id[case]:
            by_id[case]["ceiling"] = ceiling
            by_id[case]["ratio"] = ratio
        out.append({"case": case, "ceiling": ceiling, "what": what, "ratio": ratio})
    for case, alone in NGINX_ALONE.items():
        top = by_id[alone]["rps"]
        by_id[case]["ratio_nginx_alone"] = by_id[case]["rps"] / top if top else None
    return out


# ---------------------------------------------------------------- report


def fmt_ms(ms):
    return f"{ms * 1000:.0f}us" if ms < 1 else f"{ms:.2f}ms" if ms < 100 else f"{ms:.0f}ms"


def fmt_ratio(value):
    return "" if value is None else f"{value:.2f}"


def noisy_cases(results):
    """The cases during which the hypervisor took the CPUs for long enough
    that the run's ratios cannot be trusted."""
    return [c for c in results["cases"] if c.get("steal_percent", 0) >= NOISY_STEAL_PERCENT]


def report(results):
    config = results["config"]
    lines = [
        "",
        f"gallery benchmark: wrk -t{config['threads']} -c{config['connections']} "
        f"-d{config['seconds']}s per case, GETs best of {config.get('rounds', 1)} rounds in turn, "
        f"{config['cpus']} CPUs, {config['nginx']}, "
        f"database {config.get('database', 'sqlite')}, "
        f"load {' '.join(config['loadavg_before'])} before"
        + (", DEBUG BUILD (not figures)" if config.get("build") == "debug" else ""),
        "",
        f"{'':3} {'case':48} {'req/s':>9} {'p50':>8} {'p99':>8} {'errors':>7} "
        f"{'vs ceiling':>15} {'vs nginx alone':>14} {'steal':>6}",
    ]
    for case in results["cases"]:
        if case.get("ceiling"):
            vs = f"{fmt_ratio(case['ratio'])} of {case['ceiling']}"
        else:
            vs = ""
        alone = fmt_ratio(case.get("ratio_nginx_alone"))
        lines.append(
            f"{case['id']:>3} {case['name']:48} {case['rps']:>9,.0f} {fmt_ms(case['p50_ms']):>8} "
            f"{fmt_ms(case['p99_ms']):>8} {case['errors']:>7} {vs:>15} {alone:>14} "
            f"{case.get('steal_percent', 0):>5.1f}%")
    lines += ["", "ratios to the ceilings (req/s of the case / req/s of its ceiling):"]
    for ratio in results.get("ratios", []):
        lines.append(f"  {fmt_ratio(ratio['ratio']):>5}  {ratio['case']:>2} / {ratio['ceiling']:<3} "
                     f"{ratio['what']}")
    check = results.get("post_check")
    if check:
        lines += ["", (
            f"POST accounting: {check['rows_added']} rows added, {check['responses_2xx']} answered "
            f"2xx, {len(check['lost'])} acknowledged but missing, "
            f"{len(check['stored_twice'])} stored twice, {check['stored_unanswered']} stored while "
            f"their answer was in flight when wrk stopped: "
            + ("OK" if check["ok"] else "MISMATCH"))]
    for title, key in (("RSS after the run (the stack):", "rss"),
                       ("RSS of the ceilings:", "rss_ceilings")):
        if results.get(key):
            lines += ["", title]
            for proc in results[key]:
                rss = "gone" if proc["rss_kib"] is None else f"{proc['rss_kib'] / 1024:.1f} MiB"
                lines.append(f"  {proc['name']:28} pid {proc['pid']:>7}  {rss:>10}")
    stolen = noisy_cases(results)
    if stolen:
        lines += ["", (
            f"NOISY RUN: the hypervisor took {NOISY_STEAL_PERCENT:.0f}% or more of the CPUs during "
            + ", ".join(f"{c['id']} ({c['steal_percent']:.0f}%)" for c in stolen)
            + "; ratios from this run are not comparable, run again in a quiet spell")]
    errors = [c for c in results["cases"] if c["errors"]]
    for case in errors:
        lines.append(f"WARNING: {case['id']} {case['name']}: {case['non2xx']} non-2xx, socket "
                     f"errors {case['socket_errors']}")
    for problem in results["problems"]:
        lines.append(f"FAILED: {problem}")
    print("\n".join(lines), flush=True)


def main():
    parser = argparse.ArgumentParser(
        description="The gallery benchmark: the stack beside its ceilings, in one run.")
    parser.add_argument("--smoke", action="store_true",
                        help="1 s per case and 5 connections (CI: checks that it all runs)")
    parser.add_argument("--seconds", type=int, help="seconds per case (default 5; smoke 1)")
    parser.add_argument("--connections", type=int, help="wrk connections (default 25; smoke 5)")
    parser.add_argument("--rounds", type=int,
                        help="rounds of each GET case and its ceilings, measured in turn; each "
                             "keeps its best (default 2; smoke 1)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results.json"),
                        help="where to write the results (default bench/results.json)")
    parser.add_argument("--database", metavar="postgres://USER:PASS@HOST:PORT/DB",
                        help="run the stack on PostgreSQL: a fresh database is created beside "
                             "this one for the run and dropped after (default: a fresh SQLite file)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--debug-build", action="store_true",
                        help="measure the debug binaries (target/debug), which bench/run.sh then "
                             "builds instead of the release ones: for checking that the bench "
                             "runs (CI), never for figures")
    parser.add_argument("--binaries", metavar="DIR",
                        help="where the built binaries are (bench/run.sh says; default "
                             "target/release, or target/debug with --debug-build)")
    args = parser.parse_args()
    global BINARIES
    if args.binaries:
        BINARIES = os.path.join(ROOT, args.binaries)
    elif args.debug_build:
        BINARIES = os.path.join(ROOT, "target", "debug")
    args.seconds = args.seconds or (1 if args.smoke else 5)
    args.connections = args.connections or (5 if args.smoke else 25)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.seconds < 1 or args.connections < args.threads or args.threads < 1:
        parser.error("--seconds must be >= 1 and --connections >= --threads >= 1")

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        results = run(args)
    except BenchError as error:
        say(f"FAILED: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped")
        return 130
    report(results)
    results["noisy_cases"] = [c["id"] for c in noisy_cases(results)]
    for case in results["cases"]:
        case.pop("wrk_output", None)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    say(f"results in {args.json}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
