//! The nginx in front: [`render`] turns a [`Plan`] into the config text (a
//! pure function, the only place that text is written), and [`install`]
//! writes it beside the live config, runs `nginx -t` on it and only then
//! puts it in place, so a refused config never replaces a good one.
//!
//! Every path in the config is relative to nginx's prefix (`-p RUN_DIR`), so
//! the text is the same in every checkout and nginx never reaches for
//! `/var/lib/nginx` or `/run`: pid, temp directories, and logs (stdout and
//! stderr) are all set explicitly. Failover: the API upstream has
//! `max_fails`/`fail_timeout` and keepalive connections (which need HTTP/1.1
//! and an empty `Connection` header), and `proxy_next_upstream` retries a
//! request that failed to reach a worker on the next one, but never replays a
//! POST once it was sent (no `non_idempotent`). POSTs go to the same workers
//! over fresh connections (a second upstream without keepalive): a worker
//! that is being replaced closes its idle keepalive connections, and a POST
//! written onto one at that moment could not be retried. nginx's own errors
//! under `/api/` are JSON like the workers', with the same CORS origins.
//!
//! Balancing: the upstream lists the local workers, then other hosts'
//! (`--upstream`, with their weights), all with the same failover settings
//! and the same backup entries; `--lb-method` adds `least_conn;` or
//! `ip_hash;`. nginx refuses backup servers beside `ip_hash`, so with it
//! failover rests on `max_fails` and `proxy_next_upstream` alone. POSTs go
//! to one local worker (SQLite) or, when the workers share a database
//! across hosts (remote workers, PostgreSQL), are balanced like the reads.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;

use crate::api::MAX_BODY_BYTES;
use crate::plan::{LbMethod, Plan, Writes};
use crate::supervisor::probe::PROBE_HEADER;

/// The config file name inside the run directory.
pub const CONFIG_FILE: &str = "nginx.conf";

/// Renders the nginx config for `plan`, with the access log on stdout (as
/// under foreman, and as `gallery-supervisor nginx-config` prints it).
pub fn render(plan: &Plan) -> String {
    render_with_access_log(plan, "/dev/stdout")
}

/// The config the supervisor runs: the access log goes to the supervisor
/// as UDP datagrams to `collector` on loopback (nginx's syslog output),
/// never through a pipe. nginx opens `/dev/stdout` as a file of its own, in
/// blocking mode, so with a pipe there every nginx worker would stall
/// whenever the supervisor could not drain it; a datagram that finds the
/// queue full is dropped instead.
///
/// It also answers `stub_status` (nginx's connection counters, for the
/// supervisor's `/metrics`) on the unix socket `status_socket` only: no
/// port, nothing a client can reach.
pub fn render_supervised(
    plan: &Plan,
    collector: std::net::SocketAddr,
    status_socket: &std::path::Path,
) -> String {
    let target = format!("syslog:server={collector},nohostname,tag=nginx");
    let mut text = render_with_access_log(plan, &target);
    let status_server = format!(
        "
    # nginx's counters for the supervisor's /metrics, on a unix socket only.
    server {{
        listen unix:{socket};
        access_log off;
        location = /stub_status {{
            stub_status;
        }}
        location / {{
            return 404;
        }}
    }}
",
        socket = status_socket.display()
    );
    let end = text.rfind('}').expect("the http block closes");
    text.insert_str(end, &status_server);
    text
}

fn render_with_access_log(plan: &Plan, access_log: &str) -> String {
    let bind = host(plan.connect_ip());
    // Every worker nginx balances over: the local ones, then other hosts'.
    let servers: Vec<(String, u16)> = plan
        .api_ports
        .iter()
        .map(|port| (format!("{bind}:{port}"), 1))
        .chain(plan.remote.iter().map(|r| (r.address(), r.weight)))
        .collect();
    let balanced = balanced_servers(plan, &servers);
    let api_servers = balanced.clone();
    let write_servers = match plan.writes {
        Writes::Balanced => balanced,
        Writes::OneWriter => one_writer(&servers),
    };
    let writes_comment = match plan.writes {
        Writes::OneWriter => {
            "# POSTs, over fresh connections: to the first worker, the others as
    # backups (one writer: SQLite has one write lock; it commits in groups)."
        }
        Writes::Balanced => {
            "# POSTs, over fresh connections, balanced like the reads: the
    # workers share a database that takes writers from every host."
        }
    };
    // nginx's own answers carry the origins the workers allow.
    let (cors_map, allow_origin) = match crate::api::CorsPolicy::parse(&plan.cors_origins) {
        Ok(crate::api::CorsPolicy::Origins(origins)) => {
            let mut map = String::from(
                "    map $http_origin $gallery_cors_origin {\n        default \"\";\n",
            );
            for origin in origins.iter().filter_map(|o| o.to_str().ok()) {
                writeln!(map, "        \"{origin}\" \"{origin}\";").unwrap();
            }
            map.push_str("    }\n\n");
            (map, "$gallery_cors_origin")
        }
        _ => (String::new(), "*"),
    };
    let api_error = |status: u16, message: &str| {
        // Trouble on our side is worth a retry; a malformed request is not.
        let retry = if status >= 500 {
            "\n            add_header Retry-After 1 always;"
        } else {
            ""
        };
        format!(
            "        location @api_{status} {{
            default_type application/json;
            add_header Access-Control-Allow-Origin {allow_origin} always;{retry}
            return {status} '{{\"error\":\"{message}\"}}\\n';
        }}\n"
        )
    };
    let max_body_kib = MAX_BODY_BYTES / 1024;
    let error_locations = [
        api_error(400, "the request is malformed"),
        api_error(408, "the request took too long to arrive"),
        api_error(
            413,
            &format!("request body is larger than {max_body_kib} KiB"),
        ),
        api_error(414, "the request URI is too long"),
        api_error(502, "no API worker could answer; please retry shortly"),
        api_error(503, "no API worker is available; please retry shortly"),
        api_error(504, "the API worker took too long to answer; please retry"),
    ]
    .concat();
    let header_timeout = crate::http::HEADER_READ_TIMEOUT.as_secs();
    format!(
        "# Generated by `gallery-supervisor nginx-config`: edit the generator, not this file.
# Paths are relative to the prefix: nginx -p RUN_DIR -c nginx.conf -e stderr
daemon off;
worker_processes 2;
# Room for thousands of (slow) clients and their upstream connections.
worker_rlimit_nofile 16384;
pid nginx.pid;
error_log stderr warn;

events {{
    worker_connections 8192;
}}

http {{
    server_tokens off;
    default_type application/octet-stream;
    log_format gallery '$remote_addr \"$request\" $status $body_bytes_sent '
                       '${{request_time}}s upstream=$upstream_addr';
    access_log {access_log} gallery;

    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    # Slow clients are cut: headers and each body read within the servers'
    # header timeout, idle keep-alive connections closed after 30 s.
    client_header_timeout {header_timeout}s;
    client_body_timeout {header_timeout}s;
    keepalive_timeout 30s;
    send_timeout 30s;
    reset_timedout_connection on;
    client_max_body_size {max_body_kib}k;
    # Bodies up to the limit stay in memory and large responses are passed
    # through rather than spooled to disk: nothing depends on the temp paths
    # being writable by nginx's (unprivileged) workers.
    client_body_buffer_size {max_body_kib}k;
    proxy_max_temp_file_size 0;

    gzip on;
    gzip_proxied any;
    gzip_min_length 256;
    gzip_types application/json text/css application/javascript text/javascript image/svg+xml;

{cors_map}    upstream gallery_api {{
{api_servers}        # Idle connections kept per nginx worker: enough for every client
        # connection a worker serves at once, so none opens a new one.
        keepalive 64;
        # Shorter than the workers' idle timeout: nginx closes first.
        keepalive_timeout 5s;
    }}

    {writes_comment}
    upstream gallery_api_writes {{
{write_servers}    }}

    map $request_method $gallery_api_upstream {{
        default gallery_api;
        POST gallery_api_writes;
    }}

    upstream gallery_static {{
        server {bind}:{static_port} max_fails=0;
        keepalive 64;
        keepalive_timeout 5s;
    }}

    server {{
        listen {listen}:{front_port} backlog=4096;
{include}
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        # The supervisor's probe header is the supervisor's alone.
        proxy_set_header {PROBE_HEADER} \"\";
        proxy_connect_timeout 2s;
        proxy_read_timeout 30s;
        proxy_next_upstream error timeout http_502 http_504;
        proxy_next_upstream_tries 0;
        proxy_next_upstream_timeout 10s;
        # nginx's own answers to malformed or slow requests are JSON too
        # (a URI, not a named location: a bad request line has no URI).
        error_page 400 /_gallery_error/400;
        error_page 408 /_gallery_error/408;
        error_page 414 /_gallery_error/414;
        location ^~ /_gallery_error/ {{
            internal;
            location = /_gallery_error/400 {{ try_files /nonexistent @api_400; }}
            location = /_gallery_error/408 {{ try_files /nonexistent @api_408; }}
            location = /_gallery_error/414 {{ try_files /nonexistent @api_414; }}
        }}

        location /api/ {{
            rewrite ^/api/(.*)$ /$1 break;
            proxy_pass http://$gallery_api_upstream;
            # Room for a whole large list (1,000 rows: ~215 KB) in memory,
            # read from the worker in a few large reads.
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            error_page 400 @api_400;
            error_page 408 @api_408;
            error_page 413 @api_413;
            error_page 414 @api_414;
            error_page 502 @api_502;
            error_page 503 @api_503;
            error_page 504 @api_504;
        }}

{error_locations}
        location / {{
            proxy_pass http://gallery_static;
        }}
    }}
}}
",
        static_port = plan.static_port,
        front_port = plan.front_port,
        listen = host(plan.bind),
        include = plan.nginx_include.as_ref().map_or(String::new(), |file| {
            format!(
                "        # --nginx-include\n        include {};\n",
                file.display()
            )
        }),
    )
}

/// The `server` lines of an upstream that balances over `servers` (address,
/// weight) with the plan's method.
fn balanced_servers(plan: &Plan, servers: &[(String, u16)]) -> String {
    let mut text = String::new();
    match plan.lb_method {
        LbMethod::RoundRobin => {}
        LbMethod::LeastConn => text.push_str("        least_conn;\n"),
        LbMethod::IpHash => text.push_str(
            "        # Each client address sticks to one worker. nginx allows no backup
        # servers here: failover is max_fails and proxy_next_upstream alone.
        ip_hash;\n",
        ),
    }
    for (address, weight) in servers {
        let weight = match weight {
            1 => String::new(),
            w => format!(" weight={w}"),
        };
        writeln!(
            text,
            "        server {address}{weight} max_fails=3 fail_timeout=1s;"
        )
        .unwrap();
    }
    // The same workers again as backups that are never marked down: a
    // SIGKILLed worker resets a burst of connections and gets marked down
    // although its next generation answers within milliseconds on the same
    // socket; should every worker be marked down at once, nginx tries these
    // instead of answering 502 "no live upstreams".
    if plan.lb_method.allows_backup_servers() {
        for (address, _) in servers {
            writeln!(text, "        server {address} backup max_fails=0;").unwrap();
        }
    }
    text
}

/// Writes to one worker while it answers: SQLite has one write lock per
/// file, and one worker committing every POST in groups (one fsync for all
/// waiting) outpaces three taking the lock in turn. The others are backups,
/// tried when it refuses connections (killed, restarting).
fn one_writer(servers: &[(String, u16)]) -> String {
    let mut text = String::new();
    if let Some((first, _)) = servers.first() {
        writeln!(text, "        server {first} max_fails=3 fail_timeout=1s;").unwrap();
    }
    for (address, _) in servers {
        writeln!(text, "        server {address} backup max_fails=0;").unwrap();
    }
    text
}

/// An address as nginx writes it (IPv6 in brackets).
fn host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The arguments that run nginx on `RUN_DIR/nginx.conf` with `RUN_DIR` as prefix.
pub fn args(run_dir: &Path) -> Vec<std::ffi::OsString> {
    let mut prefix = run_dir.as_os_str().to_owned();
    prefix.push("/");
    vec![
        "-p".into(),
        prefix,
        "-c".into(),
        CONFIG_FILE.into(),
        "-e".into(),
        "stderr".into(),
    ]
}

/// Puts `config` in place as `RUN_DIR/nginx.conf` once `nginx -t` accepts
/// it; the error carries nginx's words and the live config is untouched.
pub fn install(nginx: &Path, run_dir: &Path, config: &str) -> anyhow::Result<()> {
    let candidate = format!("{CONFIG_FILE}.new");
    std::fs::write(run_dir.join(&candidate), config)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", run_dir.join(&candidate).display()))?;
    let mut args = args(run_dir);
    args[3] = candidate.clone().into();
    let output = Command::new(nginx)
        .args(args)
        .arg("-t")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {} -t: {e}", nginx.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .find(|line| line.contains("[emerg]"))
            .or_else(|| stderr.lines().next())
            .unwrap_or("no message");
        anyhow::bail!("nginx rejected the generated config: {}", reason.trim());
    }
    std::fs::rename(run_dir.join(&candidate), run_dir.join(CONFIG_FILE))
        .map_err(|e| anyhow::anyhow!("cannot put the nginx config in place: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            bind: "127.0.0.1".parse().unwrap(),
            front_port: 8080,
            static_port: 8082,
            api_ports: vec![8083, 8084, 8085],
            cors_origins: Vec::new(),
            nginx_include: None,
            role: crate::plan::HostRole::All,
            remote: Vec::new(),
            lb_method: LbMethod::RoundRobin,
            writes: Writes::OneWriter,
            worker_prefix: String::new(),
        }
    }

    /// The `server` lines of upstream `name`, and its other lines.
    fn upstream(text: &str, name: &str) -> (Vec<String>, Vec<String>) {
        let block = text
            .split(&format!("    upstream {name} {{\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no upstream {name} in {text}"));
        let block = &block[..block.find("\n    }").unwrap()];
        let lines = block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string);
        lines.partition(|l| l.starts_with("server "))
    }

    fn remote_plan(method: LbMethod) -> Plan {
        let mut plan = plan();
        plan.api_ports = vec![8083];
        plan.remote = vec![
            "127.0.0.2:9001".parse().unwrap(),
            "workers-b.example:9002,weight=5".parse().unwrap(),
        ];
        plan.lb_method = method;
        plan.writes = Writes::Balanced;
        plan
    }

    #[test]
    fn a_user_file_is_included_in_the_server_block() {
        let mut plan = plan();
        assert!(!render(&plan).contains("include /"));
        plan.nginx_include = Some("/etc/gallery/tls.conf".into());
        let text = render(&plan);
        let server = text.find("    server {").unwrap();
        let include = text.find("        include /etc/gallery/tls.conf;").unwrap();
        let first_location = text[server..].find("location").unwrap() + server;
        assert!(server < include && include < first_location, "{text}");
    }

    #[test]
    fn every_worker_is_in_the_upstream_with_failover_settings() {
        let text = render(&plan());
        for port in [8083, 8084, 8085] {
            assert!(
                text.contains(&format!(
                    "server 127.0.0.1:{port} max_fails=3 fail_timeout=1s;"
                )),
                "{port}"
            );
        }
        assert!(text.contains("keepalive 64;"));
        assert!(text.contains("proxy_http_version 1.1;"));
        assert!(text.contains("proxy_set_header Connection \"\";"));
        assert!(text.contains("proxy_next_upstream error timeout"));
        assert!(!text.contains("non_idempotent"), "POSTs are never replayed");
    }

    #[test]
    fn api_prefix_is_stripped_and_the_rest_goes_to_the_static_server() {
        let text = render(&plan());
        assert!(text.contains("location /api/ {\n            rewrite ^/api/(.*)$ /$1 break;"));
        assert!(text.contains("server 127.0.0.1:8082 max_fails=0;"));
        assert!(text.contains("location / {\n            proxy_pass http://gallery_static;"));
        assert!(text.contains("listen 127.0.0.1:8080 backlog=4096;"));
    }

    #[test]
    fn forwarding_headers_and_hardening_are_set() {
        let text = render(&plan());
        for needle in [
            "X-Real-IP $remote_addr",
            "X-Forwarded-For $proxy_add_x_forwarded_for",
            "X-Forwarded-Proto $scheme",
            "server_tokens off;",
            "gzip_types application/json text/css application/javascript",
            "access_log /dev/stdout",
            "error_log stderr",
            "client_body_buffer_size 64k;",
            "proxy_max_temp_file_size 0;",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
    }

    #[test]
    fn every_path_is_relative_to_the_prefix() {
        let text = render(&plan());
        for line in text
            .lines()
            .filter(|l| l.contains("_path ") || l.starts_with("pid "))
        {
            let path = line.split_whitespace().nth(1).unwrap();
            assert!(!path.starts_with('/'), "{line}");
        }
        assert!(!text.contains("/var/") && !text.contains("/run/"));
    }

    #[test]
    fn nginx_errors_under_api_are_json() {
        let text = render(&plan());
        for status in [400, 408, 413, 414, 502, 503, 504] {
            assert!(text.contains(&format!("error_page {status} @api_{status};")));
            assert!(text.contains(&format!("return {status} '{{\"error\":")));
        }
    }

    #[test]
    fn binding_every_interface_listens_there_and_proxies_to_loopback() {
        let mut plan = plan();
        plan.bind = "0.0.0.0".parse().unwrap();
        let text = render(&plan);
        assert!(text.contains("listen 0.0.0.0:8080 backlog=4096;"));
        assert!(text.contains("server 127.0.0.1:8083 max_fails"));
        assert!(text.contains("server 127.0.0.1:8082 max_fails=0;"));
    }

    #[test]
    fn posts_use_fresh_connections_and_other_methods_keepalive() {
        let text = render(&plan());
        assert!(text.contains("POST gallery_api_writes;"));
        assert!(text.contains("proxy_pass http://$gallery_api_upstream;"));
        let writes = text.split("upstream gallery_api_writes {").nth(1).unwrap();
        let writes = &writes[..writes.find('}').unwrap()];
        assert!(!writes.contains("keepalive"), "{writes}");
        // One writer (api-1), every worker as a backup.
        assert_eq!(writes.matches("server 127.0.0.1:808").count(), 4);
        assert_eq!(writes.matches("backup").count(), 3);
        assert!(
            writes.contains("server 127.0.0.1:8083 max_fails=3"),
            "{writes}"
        );
    }

    #[test]
    fn nginx_errors_carry_the_configured_cors_origins() {
        assert!(render(&plan()).contains("Access-Control-Allow-Origin * always;"));
        let mut plan = plan();
        plan.cors_origins = vec!["http://127.0.0.1:8082".into(), "https://a.example".into()];
        let text = render(&plan);
        assert!(!text.contains("Access-Control-Allow-Origin *"), "{text}");
        assert!(text.contains("Access-Control-Allow-Origin $gallery_cors_origin always;"));
        assert!(text.contains("\"https://a.example\" \"https://a.example\";"));
    }

    #[test]
    fn the_body_limit_is_the_api_limit() {
        let text = render(&plan());
        assert!(text.contains(&format!("client_max_body_size {}k;", MAX_BODY_BYTES / 1024)));
    }

    #[test]
    fn under_the_supervisor_the_access_log_goes_to_its_collector() {
        let socket = std::path::Path::new("/run/g/nginx-status.sock");
        let text = render_supervised(&plan(), "127.0.0.1:5140".parse().unwrap(), socket);
        assert!(
            text.contains("listen unix:/run/g/nginx-status.sock;"),
            "{text}"
        );
        let target = "syslog:server=127.0.0.1:5140,nohostname,tag=nginx";
        assert!(text.contains(&format!("access_log {target} gallery;")));
        // Otherwise the same config, plus the status server inside `http`.
        let status = text.find("\n    # nginx's counters").unwrap();
        let (front, status_server) = text.split_at(status);
        assert_eq!(
            format!("{front}}}\n").replace(target, "/dev/stdout"),
            render(&plan())
        );
        assert!(status_server.ends_with("    }\n}\n"), "{status_server}");
    }

    #[test]
    fn ipv6_binds_are_bracketed() {
        let mut plan = plan();
        plan.bind = "::1".parse().unwrap();
        assert!(render(&plan).contains("listen [::1]:8080 backlog=4096;"));
    }

    #[test]
    fn round_robin_is_the_default_and_adds_no_directive() {
        let text = render(&plan());
        for directive in ["least_conn", "ip_hash", "weight="] {
            assert!(!text.contains(directive), "{directive}");
        }
        let (servers, other) = upstream(&text, "gallery_api");
        assert_eq!(servers.len(), 6, "{servers:?}");
        assert_eq!(other, ["keepalive 64;", "keepalive_timeout 5s;"]);
    }

    #[test]
    fn remote_workers_join_the_local_ones_with_their_weights_and_backups() {
        let text = render(&remote_plan(LbMethod::RoundRobin));
        let (servers, _) = upstream(&text, "gallery_api");
        assert_eq!(
            servers,
            [
                "server 127.0.0.1:8083 max_fails=3 fail_timeout=1s;",
                "server 127.0.0.2:9001 max_fails=3 fail_timeout=1s;",
                "server workers-b.example:9002 weight=5 max_fails=3 fail_timeout=1s;",
                "server 127.0.0.1:8083 backup max_fails=0;",
                "server 127.0.0.2:9001 backup max_fails=0;",
                "server workers-b.example:9002 backup max_fails=0;",
            ]
        );
    }

    #[test]
    fn a_front_balances_over_the_remote_workers_only() {
        let mut plan = remote_plan(LbMethod::RoundRobin);
        plan.role = crate::plan::HostRole::Front;
        plan.api_ports = Vec::new();
        let text = render(&plan);
        for name in ["gallery_api", "gallery_api_writes"] {
            let (servers, _) = upstream(&text, name);
            assert_eq!(servers.len(), 4, "{name}: {servers:?}");
            assert!(
                servers.iter().all(|s| !s.contains("127.0.0.1:")),
                "{servers:?}"
            );
        }
        assert!(
            text.contains("server 127.0.0.1:8082 max_fails=0;"),
            "the static server"
        );
    }

    #[test]
    fn least_conn_comes_first_and_keeps_the_backups() {
        let text = render(&remote_plan(LbMethod::LeastConn));
        for name in ["gallery_api", "gallery_api_writes"] {
            let (servers, other) = upstream(&text, name);
            assert_eq!(
                other.first().map(String::as_str),
                Some("least_conn;"),
                "{name}"
            );
            assert_eq!(servers.iter().filter(|s| s.contains(" backup ")).count(), 3);
        }
    }

    #[test]
    fn ip_hash_renders_no_backup_servers() {
        let text = render(&remote_plan(LbMethod::IpHash));
        for name in ["gallery_api", "gallery_api_writes"] {
            let (servers, other) = upstream(&text, name);
            assert_eq!(
                other.first().map(String::as_str),
                Some("ip_hash;"),
                "{name}"
            );
            assert_eq!(servers.len(), 3, "{name}: {servers:?}");
            assert!(
                servers.iter().all(|s| s.contains("max_fails=3")),
                "{servers:?}"
            );
        }
        assert!(!text.contains(" backup "), "{text}");
        assert!(text.contains("proxy_next_upstream error timeout"));
    }

    #[test]
    fn posts_are_balanced_like_the_reads_when_the_database_is_shared() {
        let mut plan = plan();
        plan.lb_method = LbMethod::LeastConn;
        let one = render(&plan);
        let (servers, other) = upstream(&one, "gallery_api_writes");
        assert_eq!(servers.iter().filter(|s| !s.contains("backup")).count(), 1);
        assert!(other.is_empty(), "one writer needs no method: {other:?}");
        let shared = render(&plan.with_database("postgres://g@db/g"));
        let (reads, _) = upstream(&shared, "gallery_api");
        let (writes, other) = upstream(&shared, "gallery_api_writes");
        assert_eq!(writes, reads);
        assert_eq!(other, ["least_conn;"], "and no keepalive");
    }
}
