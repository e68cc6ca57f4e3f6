//! The PostgreSQL backend (SPEC §10): things only Postgres has. Seeding
//! once under concurrent starts and 2,000 concurrent POSTs run on both
//! backends in `concurrency.rs`. The API
//! contract itself runs on both backends in `api.rs` and friends.
//!
//! Every test here runs the real binaries against the test process's
//! throwaway cluster (`helpers::postgres`), each on a database of its own.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::postgres::{self, PASSWORD, USER};
use crate::helpers::supervisor::Supervisor;
use crate::helpers::{
    ApiServer, ORIGINAL_POST, Proc, bin, client, free_port, wait_for, wait_until,
};

/// Starts `api-server --port 0 --name NAME [extra…]` on the database at
/// `url`, given in `DATABASE_URL` (as the supervisor gives it).
fn api_server(url: &str, name: &str, extra: &[&str]) -> ApiServer {
    let mut proc = Proc::spawn(name, api_command(url, name, extra));
    let port = proc.wait_for_port();
    ApiServer { proc, port }
}

fn api_command(url: &str, name: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(bin("api-server"));
    command
        .args(["--port", "0", "--name", name])
        .args(extra)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "info");
    command
}

/// `psql -c` as the test's superuser in `database`.
fn count(database: &postgres::Database, sql: &str) -> i64 {
    database.query(sql).parse().unwrap()
}

#[test]
fn the_throwaway_cluster_gives_each_test_a_database_of_its_own() {
    let first = postgres::database();
    let second = postgres::database();
    assert_ne!(first.name, second.name);
    first.query("CREATE TABLE only_here (x int)");
    assert_eq!(first.query("SELECT count(*) FROM only_here"), "0");
    assert_eq!(
        second.query("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"),
        "0"
    );
    assert!(first.url.starts_with("postgres://gallery:"));
}

/// A URL on the test cluster's host with `port`, `database` and `password`.
fn url_on(port: u16, database: &str, password: &str) -> String {
    format!("postgres://{USER}:{password}@127.0.0.1:{port}/{database}")
}

/// Checks one failed start: exit 1, one `error: ` line holding `needles`,
/// no panic, and none of `secrets` anywhere in the output.
fn one_clear_line(what: &str, proc: Proc, needles: &[&str], secrets: &[&str]) {
    let started = Instant::now();
    let (status, output) = proc.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{what}:\n{output}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what} took {:?}",
        started.elapsed()
    );
    assert!(!output.contains("panicked"), "{what}:\n{output}");
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line in:\n{output}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{what}: {needle:?} in {:?}",
            errors[0]
        );
    }
    for secret in secrets {
        assert!(!output.contains(secret), "{what}: {secret:?} in:\n{output}");
    }
}

/// Issue 10, done-when 7: an unreachable server, a wrong password and an
/// unknown database each stop `api-server` and `gallery-supervisor` with
/// one line naming the server, and never the password.
#[test]
fn a_bad_postgres_start_is_one_line_naming_the_server_and_never_the_password() {
    let database = postgres::database();
    let port = database.cluster().port;
    let nobody_there = free_port();
    let wrong = "Wr0ng-pass-word";
    let cases = [
        (
            "nothing listening",
            url_on(nobody_there, &database.name, PASSWORD),
            vec![
                format!("cannot connect to PostgreSQL at 127.0.0.1:{nobody_there}"),
                "connection refused".to_string(),
            ],
        ),
        (
            "a wrong password",
            url_on(port, &database.name, wrong),
            vec![
                format!("cannot connect to PostgreSQL at 127.0.0.1:{port}"),
                format!("password authentication failed for user \"{USER}\""),
            ],
        ),
        (
            "an unknown database",
            url_on(port, "no_such_gallery", PASSWORD),
            vec![
                format!("cannot connect to PostgreSQL at 127.0.0.1:{port}"),
                "database \"no_such_gallery\" does not exist".to_string(),
            ],
        ),
    ];
    for (what, url, needles) in &cases {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let secrets = [PASSWORD, wrong];

        // api-server, the URL in the environment and then as a flag.
        let mut command = api_command(url, "api", &[]);
        command.env_remove("RUST_LOG");
        let mut with_origin = needles.clone();
        with_origin.push("DATABASE_URL (from the environment)");
        one_clear_line(
            &format!("api-server, {what}"),
            Proc::spawn("api", command),
            &with_origin,
            &secrets,
        );
        let mut command = Command::new(bin("api-server"));
        command
            .args(["--port", "0", "--database", url])
            .env_remove("DATABASE_URL");
        let mut with_origin = needles.clone();
        with_origin.push("--database");
        one_clear_line(
            &format!("api-server --database, {what}"),
            Proc::spawn("api", command),
            &with_origin,
            &secrets,
        );

        // gallery-supervisor, before anything starts.
        let dir = Supervisor::temp_dir();
        let mut command = Supervisor::command(dir.path(), &[]);
        command.env("DATABASE_URL", url);
        let proc = Proc::spawn("supervisor", command);
        let mut with_origin = needles.clone();
        with_origin.push("DATABASE_URL (from the environment)");
        one_clear_line(
            &format!("gallery-supervisor, {what}"),
            proc,
            &with_origin,
            &secrets,
        );
    }
    assert_eq!(
        database.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0",
        "nothing was created"
    );
}

/// The command line of `pid`, as `ps` shows it to every user.
fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn a_supervisor_on_postgres_serves_the_site_and_keeps_the_password_out_of_argv_and_logs() {
    let database = postgres::database();
    let dir = Supervisor::temp_dir();
    let mut command = Supervisor::command(dir.path(), &["--api-workers", "2"]);
    command.env("DATABASE_URL", &database.url);
    let stack = Supervisor::start_command(dir, command);

    let images: Vec<Value> = crate::helpers::get_json(&stack.url("/api/images.json"));
    let titles: Vec<&str> = images
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Sunset", "Mountain", "Cat"]);
    let posted = crate::helpers::post_form(&stack.url("/api/images.json"), ORIGINAL_POST);
    assert_eq!(posted.status(), 200);
    assert_eq!(
        posted.text().unwrap(),
        "{\"id\":4,\"title\":\"Cat\",\"alt_text\":\"A cool cat\",\"url\":\"https://images.unsplash.com/photo-1533738363-b7f9aef128ce\"}\n"
    );
    // Every worker sees it at once, whichever answers.
    for _ in 0..6 {
        let images: Vec<Value> = crate::helpers::get_json(&stack.url("/api/images.json"));
        assert_eq!(images.len(), 4);
    }
    assert_eq!(count(&database, "SELECT count(*) FROM images"), 4);
    assert_eq!(stack.get_status("/api/health"), 200);
    assert_eq!(stack.get_status("/"), 200);

    // The workers have the URL in their environment, not their argv.
    for worker in ["api-1", "api-2"] {
        let pid = stack.pid_of(worker).expect("a running worker");
        let argv = cmdline(pid);
        assert!(argv.contains("api-server"), "{argv}");
        assert!(
            !argv.contains(PASSWORD) && !argv.contains("postgres://"),
            "{worker}: {argv}"
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.contains(&format!("DATABASE_URL={}", database.url)),
            "{worker}'s environment"
        );
    }
    let output = stack.proc.output.text();
    assert!(!output.contains(PASSWORD), "{output}");
    let shown = format!(
        "database: PostgreSQL postgres://{USER}@127.0.0.1:{}/{}",
        database.cluster().port,
        database.name
    );
    assert!(output.contains(&shown), "{shown:?} in:\n{output}");
}

/// A TCP forwarder to the cluster that a test can take away and bring
/// back, as a server that stops and starts (or a network that fails).
struct Forwarder {
    port: u16,
    state: Arc<Mutex<ForwarderState>>,
}

#[derive(Default)]
struct ForwarderState {
    open: bool,
    streams: Vec<TcpStream>,
}

impl Forwarder {
    fn start(target: u16) -> Forwarder {
        let forwarder = Forwarder {
            port: free_port(),
            state: Arc::default(),
        };
        forwarder.open(target);
        forwarder
    }

    /// Listens again (on the same port) and forwards every connection.
    fn open(&self, target: u16) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.state.lock().unwrap().open = true;
        let state = self.state.clone();
        std::thread::spawn(move || {
            while state.lock().unwrap().open {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut streams = state.lock().unwrap();
                        streams.streams.push(inbound.try_clone().unwrap());
                        streams.streams.push(outbound.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                            (outbound, inbound),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    // Not a sleep for timing: the accept loop's poll.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener is dropped here: connecting is refused.
        });
    }

    /// Stops listening and cuts every connection.
    fn close(&self) {
        let mut state = self.state.lock().unwrap();
        state.open = false;
        for stream in state.streams.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        drop(state);
        wait_until(
            Duration::from_secs(5),
            "the forwarder to stop listening",
            || TcpStream::connect(("127.0.0.1", self.port)).is_err(),
        );
    }
}

/// One request's answer: status, `Retry-After`, body, how long it took.
fn answer(request: reqwest::blocking::RequestBuilder) -> (u16, Option<String>, String, Duration) {
    let started = Instant::now();
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        response.text().unwrap(),
        started.elapsed(),
    )
}

/// Expects a quick JSON 503 with `Retry-After` whose body names nothing of
/// the database (host, port, name, user, password, SQL).
fn assert_unavailable(
    what: &str,
    (status, retry_after, body, took): (u16, Option<String>, String, Duration),
    database: &postgres::Database,
    within: Duration,
) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{what}");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: {body}"));
    assert!(json["error"].is_string(), "{what}: {body}");
    let port = database.cluster().port.to_string();
    for secret in [
        "127.0.0.1",
        &port[..],
        &database.name,
        USER,
        PASSWORD,
        "SELECT",
        "INSERT",
        "postgres",
        "images",
    ] {
        assert!(!body.contains(secret), "{what}: {secret:?} in {body}");
    }
    assert!(took < within, "{what} took {took:?}");
}

#[test]
fn the_server_gone_or_closed_to_connections_is_a_503_and_the_api_recovers_by_itself() {
    let database = postgres::database();
    let forwarder = Forwarder::start(database.cluster().port);
    let url = url_on(forwarder.port, &database.name, PASSWORD);
    let api = api_server(&url, "api-pg", &["--busy-timeout-ms", "2000"]);
    let list = api.url("/images.json");
    let client = client();
    let post = || {
        client
            .post(api.url("/images.json"))
            .body(r#"{"title": "During", "alt_text": "", "url": "/d"}"#)
    };
    assert_eq!(client.get(&list).send().unwrap().status(), 200);
    assert_eq!(post().send().unwrap().status(), 200);

    // The server goes away: every pooled connection is cut, and connecting
    // is refused.
    forwarder.close();
    let within = Duration::from_secs(2);
    assert_unavailable("GET", answer(client.get(&list)), &database, within);
    assert_unavailable("POST", answer(post()), &database, within);
    assert_unavailable(
        "page",
        answer(client.get(api.url("/images.json?limit=2"))),
        &database,
        within,
    );
    assert_unavailable(
        "health",
        answer(client.get(api.url("/health"))),
        &database,
        within,
    );

    // Back: served again without a restart.
    forwarder.open(database.cluster().port);
    wait_until(Duration::from_secs(15), "the API to serve again", || {
        client.get(&list).send().unwrap().status() == 200
    });
    assert_eq!(post().send().unwrap().status(), 200);
    assert_eq!(client.get(api.url("/health")).send().unwrap().status(), 200);

    // The database closed to connections and every session of it ended
    // (an administrator's command).
    let cluster = database.cluster();
    cluster.query(
        "postgres",
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", database.name),
    );
    cluster.query(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
            database.name
        ),
    );
    assert_unavailable("POST, closed", answer(post()), &database, within);
    assert_unavailable(
        "page, closed",
        answer(client.get(api.url("/images.json?limit=2"))),
        &database,
        within,
    );
    assert_unavailable(
        "health, closed",
        answer(client.get(api.url("/health"))),
        &database,
        within,
    );
    cluster.query(
        "postgres",
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", database.name),
    );
    wait_until(Duration::from_secs(15), "the API to serve again", || {
        post().send().unwrap().status() == 200
    });
    // Every session ended again, the database open: the dead pooled
    // connections are replaced on the way, and no request fails for it.
    assert_eq!(client.get(api.url("/health")).send().unwrap().status(), 200);
    cluster.query(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
            database.name
        ),
    );
    assert_eq!(
        client
            .get(api.url("/images.json?limit=1"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(post().send().unwrap().status(), 200);
    assert_eq!(client.get(&list).send().unwrap().status(), 200);
    assert_eq!(client.get(api.url("/health")).send().unwrap().status(), 200);
    let output = api.proc.output.text();
    assert!(!output.contains(PASSWORD), "{output}");
    assert!(output.contains("reachable again"), "{output}");
    // Nothing lost, nothing doubled: the four POSTs that were answered 200.
    assert_eq!(
        count(
            &database,
            "SELECT count(*) FROM images WHERE title = 'During'"
        ),
        4
    );
}

/// A `psql` session kept open, fed one statement at a time.
struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn open(database: &postgres::Database) -> Session {
        let mut child = database
            .cluster()
            .psql(&database.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Session {
            child,
            stdin,
            lines,
        }
    }

    /// Runs `sql` and waits until psql has done it.
    fn run(&mut self, sql: &str) {
        writeln!(self.stdin, "{sql}\nSELECT 'done';").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "done" => return,
                Ok(_) => {}
                Err(e) => panic!("psql did not run {sql:?}: {e}"),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_table_locked_by_someone_else_is_a_503_after_the_busy_timeout_and_health_stays_ok() {
    let database = postgres::database();
    let api = api_server(&database.url, "api-pg", &["--busy-timeout-ms", "300"]);
    let client = client();
    let post = || {
        client
            .post(api.url("/images.json"))
            .body(r#"{"title": "Locked out", "alt_text": "", "url": "/l"}"#)
    };
    // Unlocked, a write succeeds. On a loaded machine the first one (a
    // fresh connection, an fsync) can itself outlast the 300 ms timeout.
    wait_until(
        Duration::from_secs(20),
        "a POST to succeed while nothing holds the table",
        || post().send().is_ok_and(|r| r.status() == 200),
    );
    let mut holder = Session::open(&database);
    holder.run("BEGIN; LOCK TABLE images IN ACCESS EXCLUSIVE MODE;");
    let within = Duration::from_secs(3);
    let (status, retry_after, body, took) = answer(post());
    assert!(
        took >= Duration::from_millis(250),
        "waited for the lock: {took:?}"
    );
    assert_unavailable("POST", (status, retry_after, body, took), &database, within);
    assert_unavailable(
        "page",
        answer(client.get(api.url("/images.json?limit=5"))),
        &database,
        within,
    );
    // A worker whose table is locked is busy, not broken: no restart.
    assert_eq!(client.get(api.url("/health")).send().unwrap().status(), 200);
    holder.run("ROLLBACK;");
    assert_eq!(post().send().unwrap().status(), 200);
    assert_eq!(
        count(
            &database,
            "SELECT count(*) FROM images WHERE title = 'Locked out'"
        ),
        2,
        "the refused POST stored nothing"
    );
}

/// The list cache on PostgreSQL: a commit acknowledged by any worker, or
/// made by anyone else, is in the next list from every worker, even when
/// commits land out of id order.
#[test]
fn every_worker_lists_every_acknowledged_commit_even_out_of_id_order() {
    let database = postgres::database();
    let a = api_server(&database.url, "api-a", &[]);
    let b = api_server(&database.url, "api-b", &[]);
    let client = client();
    let ids = |worker: &ApiServer| -> Vec<i64> {
        let images: Vec<Value> = client
            .get(worker.url("/images.json"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        images.iter().map(|i| i["id"].as_i64().unwrap()).collect()
    };
    for n in 0..50 {
        // Both caches warm, then a POST to one is seen by the other.
        ids(&a);
        ids(&b);
        let posted: Value = client
            .post(a.url("/images.json"))
            .body(format!(
                r#"{{"title": "n{n}", "alt_text": "", "url": "/n"}}"#
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let id = posted["id"].as_i64().unwrap();
        assert_eq!(ids(&b).last(), Some(&id), "round {n}");
    }
    // An id taken by a transaction that commits after a later id did.
    let mut early = Session::open(&database);
    early.run("BEGIN; INSERT INTO images (title, alt_text, url) VALUES ('early', '', '/e');");
    let later: Value = client
        .post(a.url("/images.json"))
        .body(r#"{"title": "later", "alt_text": "", "url": "/l"}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let listed = ids(&b);
    assert_eq!(listed.last(), Some(&later["id"].as_i64().unwrap()));
    early.run("COMMIT;");
    let early_id = count(&database, "SELECT id FROM images WHERE title = 'early'");
    assert!(early_id < later["id"].as_i64().unwrap());
    for worker in [&a, &b] {
        assert!(
            ids(worker).contains(&early_id),
            "{}: the out-of-order commit is listed",
            worker.proc.name
        );
    }
    // An operator's update, through psql, too.
    database.query("UPDATE images SET title = 'Renamed' WHERE id = 1");
    let first: Vec<Value> = client
        .get(b.url("/images.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(first[0]["title"], "Renamed");
}

/// Two POSTs with one `Idempotency-Key` on two workers at the same moment:
/// one row, and the other answer replays it (same body) or refuses (other
/// body).
#[test]
fn one_idempotency_key_on_two_workers_at_once_stores_one_row() {
    let database = postgres::database();
    let workers = [
        api_server(&database.url, "api-1", &[]),
        api_server(&database.url, "api-2", &[]),
    ];
    let urls: Vec<String> = workers.iter().map(|w| w.url("/images.json")).collect();
    for round in 0..20 {
        let same_body = round % 2 == 0;
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<(u16, Option<String>, String)> = urls
            .iter()
            .enumerate()
            .map(|(k, url)| {
                let (url, barrier) = (url.clone(), barrier.clone());
                let alt = if same_body {
                    String::new()
                } else {
                    format!("from {k}")
                };
                std::thread::spawn(move || {
                    let body = format!(
                        r#"{{"title": "keyed {round}", "alt_text": "{alt}", "url": "/k"}}"#
                    );
                    let request = client()
                        .post(url)
                        .header("idempotency-key", format!("key-{round}"))
                        .body(body);
                    barrier.wait();
                    let response = request.send().unwrap();
                    let replayed = response
                        .headers()
                        .get("idempotent-replayed")
                        .map(|v| v.to_str().unwrap().to_string());
                    (
                        response.status().as_u16(),
                        replayed,
                        response.text().unwrap(),
                    )
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
        statuses.sort();
        if same_body {
            assert_eq!(statuses, [200, 200], "round {round}: {answers:?}");
            assert_eq!(answers[0].2, answers[1].2, "round {round}: the same image");
            let replays = answers
                .iter()
                .filter(|a| a.1.as_deref() == Some("true"))
                .count();
            assert_eq!(replays, 1, "round {round}: {answers:?}");
        } else {
            assert_eq!(statuses, [200, 422], "round {round}: {answers:?}");
        }
        assert_eq!(
            count(
                &database,
                &format!("SELECT count(*) FROM images WHERE title = 'keyed {round}'")
            ),
            1,
            "round {round}"
        );
    }
}

/// The same requests get the same answers, byte for byte, from a worker on
/// SQLite and a worker on PostgreSQL.
#[test]
fn both_backends_answer_the_same_requests_with_the_same_bytes() {
    let database = postgres::database();
    let (_dir, file) = crate::helpers::temp_db();
    let on_sqlite = ApiServer::start(&file, "api-same", &[]);
    let on_postgres = api_server(&database.url, "api-same", &[]);
    let client = client();
    let script: Vec<(&str, &str, Option<&str>, &str)> = vec![
        ("GET", "/images.json", None, ""),
        ("GET", "/images.json?indent=2", None, ""),
        ("POST", "/images.json", None, ORIGINAL_POST),
        (
            "POST",
            "/images.json?indent=3",
            None,
            r#"{"title": " Ünïcödé ✓ ", "alt_text": "\"quoted\" <b>", "url": "/a?b=c&d"}"#,
        ),
        (
            "POST",
            "/images.json",
            Some("k-1"),
            r#"{"title": "Keyed", "alt_text": "", "url": "/k"}"#,
        ),
        (
            "POST",
            "/images.json",
            Some("k-1"),
            r#"{"title": "Keyed", "alt_text": "", "url": "/k"}"#,
        ),
        (
            "POST",
            "/images.json",
            Some("k-1"),
            r#"{"title": "Other", "alt_text": "", "url": "/k"}"#,
        ),
        (
            "POST",
            "/images.json",
            None,
            r#"{"title": "", "alt_text": "", "url": "/x"}"#,
        ),
        (
            "POST",
            "/images.json",
            None,
            r#"{"title": "x", "alt_text": "", "url": "javascript:alert(1)"}"#,
        ),
        ("POST", "/images.json", None, "{"),
        ("GET", "/images.json", None, ""),
        ("GET", "/images.json?limit=2", None, ""),
        ("GET", "/images.json?limit=2&after=2", None, ""),
        ("GET", "/images.json?limit=500&after=9999", None, ""),
        ("GET", "/images.json?limit=0", None, ""),
        ("GET", "/images.json?indent=11", None, ""),
        ("GET", "/nope", None, ""),
        ("PUT", "/images.json", None, ""),
    ];
    for (method, path, key, body) in script {
        let answers: Vec<(u16, String, String)> = [&on_sqlite, &on_postgres]
            .iter()
            .map(|worker| {
                let mut request = client.request(method.parse().unwrap(), worker.url(path));
                if let Some(key) = key {
                    request = request.header("idempotency-key", key);
                }
                let response = request.body(body.to_string()).send().unwrap();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .map_or(String::new(), |v| v.to_str().unwrap().to_string());
                (
                    response.status().as_u16(),
                    content_type,
                    response.text().unwrap(),
                )
            })
            .collect();
        assert_eq!(answers[0], answers[1], "{method} {path} {key:?} {body}");
    }
}

/// A worker under the supervisor starts even while the server is down
/// (`--existing-database`): it answers 503 until it can connect.
#[test]
fn a_worker_that_need_not_migrate_starts_while_the_server_is_down_and_serves_once_it_is_up() {
    let database = postgres::database();
    drop(api_server(&database.url, "api-migrate", &[]));
    let forwarder = Forwarder::start(database.cluster().port);
    forwarder.close();
    let url = url_on(forwarder.port, &database.name, PASSWORD);
    let api = api_server(&url, "api-late", &["--existing-database"]);
    let client = client();
    assert_unavailable(
        "GET while down",
        answer(client.get(api.url("/images.json"))),
        &database,
        Duration::from_secs(2),
    );
    forwarder.open(database.cluster().port);
    let images: Vec<Value> = wait_for(Duration::from_secs(15), "the worker to serve", || {
        let response = client.get(api.url("/images.json")).send().ok()?;
        (response.status() == 200).then(|| response.json().unwrap())
    });
    assert_eq!(images.len(), 3);
}

/// Closing PostgreSQL connections blocks on each client's own runtime:
/// the last handle to the store goes away on the server's async thread
/// when it stops, and that must not panic.
#[test]
fn a_worker_on_postgres_stops_cleanly_on_sigterm() {
    let database = postgres::database();
    let api = api_server(&database.url, "api-stop", &[]);
    let client = client();
    for path in ["/images.json", "/images.json?limit=1", "/health"] {
        assert_eq!(client.get(api.url(path)).send().unwrap().status(), 200);
    }
    let posted = client
        .post(api.url("/images.json"))
        .body(ORIGINAL_POST)
        .send()
        .unwrap();
    assert_eq!(posted.status(), 200);
    let proc = api.proc;
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, output) = proc.finish(Duration::from_secs(20));
    assert!(!output.contains("panicked"), "{output}");
    assert_eq!(status.code(), Some(0), "{output}");
}
