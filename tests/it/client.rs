//! SPEC §10, "No single front door": `gallery-client` and the page, given
//! several front doors, talk to whichever answers, per request.
//!
//! - Against one stack: `list`, `add`, the API's 400 passed on, and every
//!   endpoint down in one line.
//! - Each way a front door can fail (refusing, hanging, answering 503) is
//!   passed over, and a POST carries the same key and bytes to each; a
//!   POST stored by a front door that never answered is replayed by the
//!   next one, not stored again.
//! - Two whole stacks sharing one database, the client looping over both
//!   while one stack's supervisor is SIGKILLed: no invocation fails and
//!   every acknowledged add is stored exactly once.
//! - The page with `?api=` naming an origin its policy refuses, a dead one,
//!   a busy one and two live front doors, one of which dies before an add.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::database::{Backend, TestDatabase};
use serde_json::{Value, json};

use crate::helpers::supervisor::{Supervisor, run_to_exit};
use crate::helpers::webdriver::Browser;
use crate::helpers::{Seen, free_port, heavy, read_request, wait_for, wait_until};

/// One `gallery-client` run, its streams kept apart.
#[derive(Debug)]
struct Ran {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Panics unless it exited 0; the parsed JSON it printed.
    fn json(&self) -> Value {
        assert!(
            self.status.success(),
            "gallery-client {:?} exited {}:\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }
}

/// Runs `gallery-client --endpoint E… ARGS` (with `env` set) and waits for
/// it, at most 60 s.
fn run_client_with(endpoints: &[&str], args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gallery-client"));
    command.env_remove("GALLERY_ENDPOINTS");
    for endpoint in endpoints {
        command.args(["--endpoint", endpoint]);
    }
    command.args(args).envs(env.iter().copied());
    let (status, stdout, stderr, took) = run_to_exit(&mut command, Duration::from_secs(60));
    let status =
        status.unwrap_or_else(|| panic!("gallery-client {args:?} did not exit within 60 s"));
    let mut all: Vec<String> = endpoints
        .iter()
        .flat_map(|e| ["--endpoint".to_string(), e.to_string()])
        .collect();
    all.extend(args.iter().map(|a| a.to_string()));
    Ran {
        args: all,
        status,
        stdout,
        stderr,
        took,
    }
}

fn run_client(endpoints: &[&str], args: &[&str]) -> Ran {
    run_client_with(endpoints, args, &[])
}

fn door(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn titles(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|image| image["title"].as_str().unwrap())
        .collect()
}

/// Rows of the SQLite file at `path`: (id, title) of every image, and every
/// stored Idempotency-Key.
fn sqlite_rows(path: &Path) -> (Vec<(i64, String)>, Vec<String>) {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let images = db
        .prepare("SELECT id, title FROM images ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let keys = db
        .prepare("SELECT key FROM idempotency_keys")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (images, keys)
}

/// The database both front doors share: one PostgreSQL, as two machines
/// would share it (SPEC §10).
struct SharedDatabase(TestDatabase);

impl SharedDatabase {
    fn new() -> SharedDatabase {
        SharedDatabase(TestDatabase::new(Backend::Postgres))
    }

    /// The value of `--database` for every stack.
    fn flag(&self) -> String {
        self.0.arg()
    }

    /// (id, title) of every image, and every stored Idempotency-Key.
    fn rows(&self) -> (Vec<(i64, String)>, Vec<String>) {
        let images = self
            .0
            .rows("SELECT id, title FROM images ORDER BY id")
            .into_iter()
            .map(|row| (row[0].parse().unwrap(), row[1].clone()))
            .collect();
        let keys = self
            .0
            .rows("SELECT key FROM idempotency_keys")
            .into_iter()
            .map(|row| row[0].clone())
            .collect();
        (images, keys)
    }
}

/// Two whole stacks (`--role all`, the default) on one shared database.
fn two_front_doors(database: &SharedDatabase) -> (Supervisor, Supervisor) {
    let flag = database.flag();
    let extra = ["--api-workers", "2", "--database", flag.as_str()];
    // One after the other: the first creates, migrates and seeds the file.
    let a = Supervisor::start(&extra);
    let b = Supervisor::start(&extra);
    (a, b)
}

/// Whether nothing accepts connections on `port` any more.
fn refuses(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Kills a stack's supervisor with SIGKILL (its children die with it) and
/// waits until its front door refuses connections.
fn kill_stack(stack: &mut Supervisor) {
    stack.proc.signal(Signal::SIGKILL);
    stack.proc.wait_timeout(Duration::from_secs(10));
    let port = stack.front_port;
    wait_until(
        Duration::from_secs(20),
        "the killed stack's front door to refuse connections",
        || refuses(port),
    );
}

/// What a [`FakeDoor`] does with a request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers nginx's JSON 503, as a front door whose workers are all
    /// busy (CORS allowed, preflights answered).
    Busy,
    /// Passes the request on to the front door on this port, waits for its
    /// answer, then hangs up without a word: a front door that stored a
    /// POST and died before answering.
    LoseTheAnswer(u16),
}

/// A stand-in front door on a free port that records what it was sent.
struct FakeDoor {
    port: u16,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl FakeDoor {
    fn start() -> FakeDoor {
        FakeDoor::behaving(Behaviour::Busy)
    }

    fn behaving(behaviour: Behaviour) -> FakeDoor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (connections, seen, stop) = (connections.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    std::thread::spawn(move || serve(stream, &seen, behaviour));
                }
            })
        };
        FakeDoor {
            port,
            connections,
            seen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn posts(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "POST")
            .cloned()
            .collect()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for FakeDoor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Seen>>, behaviour: Behaviour) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    if let Behaviour::LoseTheAnswer(port) = behaviour {
        let mut forward = crate::helpers::client().request(
            request.method.parse().unwrap(),
            format!("{}/api/images.json", door(port)),
        );
        for name in ["content-type", "idempotency-key"] {
            if let Some(value) = request.header(name) {
                forward = forward.header(name, value);
            }
        }
        let answered = forward.body(request.body.clone()).send().unwrap();
        assert_eq!(answered.status(), 200);
        seen.lock().unwrap().push(request);
        return; // dropping `stream`: the client gets no answer
    }
    let cors = "Access-Control-Allow-Origin: *\r\nConnection: close\r\n";
    let response = if request.method == "OPTIONS" {
        format!(
            "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Methods: GET, POST\r\n\
             Access-Control-Allow-Headers: content-type, idempotency-key\r\n\r\n"
        )
    } else {
        seen.lock().unwrap().push(request);
        let body = "{\"error\":\"no API worker is available; please retry shortly\"}\n";
        format!(
            "HTTP/1.1 503 Service Unavailable\r\n{cors}Retry-After: 1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = (&stream).write_all(response.as_bytes());
}

#[test]
fn client_lists_adds_and_passes_on_the_apis_refusal_through_one_front_door() {
    let stack = Supervisor::start(&["--api-workers", "1"]);
    let front = door(stack.front_port);

    let listed = run_client(&[&front], &["list"]);
    assert_eq!(titles(&listed.json()), ["Sunset", "Mountain", "Cat"]);
    assert_eq!(listed.stderr, "", "nothing to report");
    // --indent passes through; the front door's URL with /api is the same.
    let indented = run_client(&[&format!("{front}/api")], &["list", "--indent", "2"]);
    assert!(
        indented.stdout.starts_with("[\n  {\n    \"id\": 1,"),
        "{}",
        indented.stdout
    );
    assert_eq!(indented.json(), listed.json());

    let added = run_client(&[&front], &["add", "Dog", "A good dog", "/images/cat.svg"]);
    assert_eq!(
        added.json(),
        json!({"id": 4, "title": "Dog", "alt_text": "A good dog", "url": "/images/cat.svg"})
    );
    assert!(added.stdout.ends_with("}\n"), "{:?}", added.stdout);
    assert_eq!(added.stderr, "");
    // From the environment, comma-separated.
    let listed = run_client_with(&[], &["list"], &[("GALLERY_ENDPOINTS", &front)]);
    assert_eq!(titles(&listed.json()), ["Sunset", "Mountain", "Cat", "Dog"]);

    // A 4xx is final: the API's own message, exit 1, nothing on stdout.
    let refused = run_client(&[&front], &["add", "Bad", "", "javascript:alert(1)"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(refused.stdout, "");
    assert_eq!(
        refused.stderr_lines(),
        [format!(
            "error: {front} answered 400 Bad Request: `url` must be an absolute http(s) URL \
             or a site path starting with a single /"
        )]
    );
    let (images, keys) = sqlite_rows(&stack.dir.path().join("gallery.db"));
    assert_eq!(images.len(), 4, "{images:?}");
    assert_eq!(
        keys.len(),
        1,
        "the add carried an Idempotency-Key: {keys:?}"
    );
}

#[test]
fn every_front_door_down_is_one_error_line_and_exit_1() {
    let (a, b) = (door(free_port()), door(free_port()));
    for args in [vec!["list"], vec!["add", "Nowhere", "", "/images/cat.svg"]] {
        let ran = run_client(&[&a, &b], &args);
        assert_eq!(ran.status.code(), Some(1), "{ran:?}");
        assert_eq!(ran.stdout, "");
        assert_eq!(
            ran.stderr_lines(),
            [format!(
                "error: no front door answered: {a} refused the connection; \
                 {b} refused the connection"
            )]
        );
        assert!(ran.took < Duration::from_secs(5), "{ran:?}");
    }
    let ran = run_client(&[&a], &["list"]);
    assert_eq!(
        ran.stderr_lines(),
        [format!("error: the front door {a} refused the connection")]
    );
    assert_eq!(ran.status.code(), Some(1));
}

#[test]
fn a_request_passes_over_refusing_hanging_and_busy_front_doors_and_a_post_keeps_its_key() {
    let stack = Supervisor::start(&["--api-workers", "1"]);
    let live = door(stack.front_port);
    let dead = door(free_port());
    // Listening, never accepting: connections complete in its queue and
    // requests are sent, but no answer ever comes.
    let hanging_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging = door(hanging_listener.local_addr().unwrap().port());
    let busy_door = FakeDoor::start();
    let busy = door(busy_door.port);
    let timeout = ["--timeout", "1s"];

    let listed = run_client(
        &[&dead, &hanging, &busy, &live],
        &[&["list"], &timeout[..]].concat(),
    );
    assert_eq!(titles(&listed.json()), ["Sunset", "Mountain", "Cat"]);
    assert_eq!(
        listed.stderr_lines(),
        [
            format!("gallery-client: {dead} refused the connection; trying {hanging}"),
            format!("gallery-client: {hanging} did not answer within 1s; trying {busy}"),
            format!("gallery-client: {busy} answered 503 Service Unavailable; trying {live}"),
        ]
    );

    let args = [
        &["add", "Fox", "A red fox", "/images/cat.svg"],
        &timeout[..],
    ]
    .concat();
    let added = run_client(&[&hanging, &busy, &live], &args).json();
    assert_eq!(added["title"], "Fox");

    // The POST the hanging door was sent (read from its queue now), the one
    // the busy door refused and the one stored: the same key and bytes.
    let mut sent: Vec<Seen> = Vec::new();
    hanging_listener.set_nonblocking(true).unwrap();
    while let Ok((stream, _)) = hanging_listener.accept() {
        stream.set_nonblocking(false).unwrap();
        sent.extend(read_request(&stream).filter(|r| r.method == "POST"));
    }
    sent.extend(busy_door.posts());
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let key = sent[0].header("idempotency-key").unwrap_or_default();
    assert!(
        key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key:?}"
    );
    assert_eq!(sent[1].header("idempotency-key"), Some(key));
    assert_eq!(sent[0].body, sent[1].body);
    assert_eq!(
        serde_json::from_str::<Value>(&sent[0].body).unwrap(),
        json!({"title": "Fox", "alt_text": "A red fox", "url": "/images/cat.svg"})
    );
    let (images, keys) = sqlite_rows(&stack.dir.path().join("gallery.db"));
    assert_eq!(keys, [key]);
    assert_eq!(
        images.iter().filter(|(_, title)| title == "Fox").count(),
        1,
        "{images:?}"
    );
}

#[test]
fn a_post_one_front_door_stored_without_answering_is_replayed_by_the_other_not_stored_again() {
    let database = SharedDatabase::new();
    let (a, b) = two_front_doors(&database);
    // Through this door a POST reaches A and is stored, and the client
    // hears nothing back: as if A died between its commit and its answer.
    let lossy = FakeDoor::behaving(Behaviour::LoseTheAnswer(a.front_port));
    let (lossy_door, door_b) = (door(lossy.port), door(b.front_port));

    let ran = run_client(
        &[&lossy_door, &door_b],
        &["add", "Stored once", "", "/images/cat.svg"],
    );
    let printed = ran.json();
    assert_eq!(
        lossy.posts().len(),
        1,
        "the POST reached A through the door"
    );
    assert_eq!(
        ran.stderr_lines(),
        [format!(
            "gallery-client: {lossy_door} gave no answer (connection closed before message \
             completed); trying {door_b}"
        )]
    );
    // B answered with the image A stored (same id), and stored nothing.
    let (images, keys) = database.rows();
    let stored: Vec<&(i64, String)> = images.iter().filter(|(_, t)| t == "Stored once").collect();
    assert_eq!(stored.len(), 1, "{images:?}");
    assert_eq!(printed["id"], stored[0].0);
    assert_eq!(keys.len(), 1);
}

#[test]
fn the_client_loops_through_two_front_doors_while_one_is_killed_without_a_failure() {
    let _heavy = heavy();
    let database = SharedDatabase::new();
    let (mut a, b) = two_front_doors(&database);
    let (door_a, door_b) = (door(a.front_port), door(b.front_port));

    // Two loops alternate list and add (unique titles) until told to stop.
    let runs = Arc::new(Mutex::new(Vec::<(String, Ran)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|lane| {
            let (runs, count, stop) = (runs.clone(), count.clone(), stop.clone());
            let endpoints = [door_a.clone(), door_b.clone()];
            std::thread::spawn(move || {
                let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let title = format!("loop-{lane}-{n}");
                    let ran = if n % 2 == 0 {
                        run_client(&endpoints, &["list"])
                    } else {
                        run_client(&endpoints, &["add", &title, "", "/images/cat.svg"])
                    };
                    runs.lock().unwrap().push((title, ran));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let finish = |what: &str, at_least: usize| {
        wait_until(Duration::from_secs(120), what, || {
            count.load(Ordering::SeqCst) >= at_least
        });
    };

    finish("20 invocations before the kill", 20);
    kill_stack(&mut a);
    let after_kill = count.load(Ordering::SeqCst);
    finish("20 more invocations after it", after_kill + 20);
    stop.store(true, Ordering::SeqCst);
    for handle in loops {
        handle.join().unwrap();
    }

    let runs = runs.lock().unwrap();
    let failed: Vec<_> = runs
        .iter()
        .filter(|(_, ran)| !ran.status.success())
        .collect();
    assert!(failed.is_empty(), "failed invocations: {failed:#?}");
    // Every add was acknowledged: it is stored exactly once, and no other
    // loop title is stored.
    let mut acknowledged = BTreeMap::new();
    for (title, ran) in runs
        .iter()
        .filter(|(_, ran)| ran.args.contains(&"add".to_string()))
    {
        let stored = ran.json();
        assert_eq!(stored["title"], title.as_str());
        acknowledged.insert(title.clone(), stored["id"].as_i64().unwrap());
    }
    let (images, _) = database.rows();
    let mut stored: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, title) in images.into_iter().filter(|(_, t)| t.starts_with("loop-")) {
        stored.entry(title).or_default().push(id);
    }
    let doubled: Vec<_> = stored.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    let stored: BTreeMap<String, i64> = stored.into_iter().map(|(t, ids)| (t, ids[0])).collect();
    assert_eq!(stored, acknowledged);
    assert!(acknowledged.len() >= 20, "{} adds", acknowledged.len());
    // Each list is a whole JSON array; the client said when it switched.
    for (_, ran) in runs
        .iter()
        .filter(|(_, ran)| ran.args.contains(&"list".to_string()))
    {
        assert!(ran.json().is_array());
    }
    let switch = format!("gallery-client: {door_a} ");
    let switches: Vec<&str> = runs
        .iter()
        .flat_map(|(_, ran)| ran.stderr_lines())
        .filter(|line| line.starts_with(&switch))
        .collect();
    assert!(
        switches.len() >= 20,
        "the switch was reported only {} times",
        switches.len()
    );
    assert!(
        switches
            .iter()
            .all(|line| line.ends_with(&format!("; trying {door_b}"))),
        "{switches:#?}"
    );
    eprintln!(
        "{} invocations ({} adds), {} after the kill; switches: {:?}",
        runs.len(),
        acknowledged.len(),
        runs.len() - after_kill,
        switches
            .iter()
            .map(|l| l.trim_start_matches(&switch))
            .collect::<std::collections::BTreeSet<_>>()
    );
}

#[test]
fn the_page_passes_over_refused_dead_and_busy_origins_and_adds_through_a_live_front_door() {
    let _heavy = heavy();
    let database = SharedDatabase::new();
    let (mut a, b) = two_front_doors(&database);
    let dead = free_port();
    let busy = FakeDoor::start();
    // An origin the page's policy does not name: never contacted.
    let foreign = FakeDoor::start();
    let origins: Vec<String> = [dead, a.front_port, busy.port, b.front_port]
        .iter()
        .map(|&port| door(port))
        .collect();
    let site = crate::browser::start_site(&origins);
    let api = |port: u16| format!("{}/api", door(port));
    let apis = [
        door(foreign.port),
        api(dead),
        api(a.front_port),
        api(busy.port),
        api(b.front_port),
    ];
    let browser = Browser::start();
    // Every policy violation, and every message the status line shows
    // once the page's script has run.
    browser.on_new_document(
        "window.__violations = [];
         document.addEventListener('securitypolicyviolation',
             (e) => window.__violations.push(e.blockedURI));
         window.__statuses = [];
         document.addEventListener('DOMContentLoaded', () => {
             const status = document.getElementById('status');
             new MutationObserver(() => window.__statuses.push(status.textContent))
                 .observe(status, {childList: true, characterData: true, subtree: true});
         });",
    );
    browser.navigate(&site.url(&format!("/?api={}", apis.join(","))));
    wait_until(Duration::from_secs(20), "three cards", || {
        browser.find_all("#gallery figure.card").len() == 3
    });
    let texts = |css: &str| -> Vec<String> {
        browser
            .find_all(css)
            .iter()
            .map(|e| browser.text(e))
            .collect()
    };
    assert_eq!(texts(".card .title"), ["Sunset", "Mountain", "Cat"]);
    // The foreign origin was refused by the policy, the dead one could not
    // be reached, and A answered: no error shown.
    let status = wait_for(Duration::from_secs(20), "the status to settle", || {
        Some(browser.text(&browser.find("#status"))).filter(|s| s != "Loading images…")
    });
    assert_eq!(status, "");
    // The policy's refusal of one origin is not the page's failure while
    // others remain: never shown.
    let statuses = browser.execute("return window.__statuses;", &[]);
    assert!(!statuses.to_string().contains("may not call"), "{statuses}");
    assert_eq!(browser.text(&browser.find("#api-base")), api(a.front_port));
    assert_eq!(foreign.connections.load(Ordering::SeqCst), 0);
    let violations = browser.execute("return window.__violations;", &[]);
    let blocked: Vec<&str> = violations
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !blocked.is_empty() && blocked.iter().all(|b| b.starts_with(&door(foreign.port))),
        "{violations}"
    );
    assert_eq!(busy.requests(), 0, "A answered before the busy door's turn");

    // A dies; the form's POST starts with A (it answered last), is refused,
    // gets the busy door's 503, and is stored through B, once.
    kill_stack(&mut a);
    browser.send_keys(&browser.find("#title"), "Through B");
    browser.send_keys(&browser.find("#url"), "/images/cat.svg");
    browser.click(&browser.find("#add-submit"));
    let message = wait_for(Duration::from_secs(30), "the form's outcome", || {
        Some(browser.text(&browser.find("#form-message"))).filter(|m| !m.starts_with("Adding"))
    });
    assert_eq!(message, "Added “Through B”.");
    assert_eq!(
        texts(".card .title"),
        ["Sunset", "Mountain", "Cat", "Through B"]
    );
    assert_eq!(browser.text(&browser.find("#api-base")), api(b.front_port));
    let posts = busy.posts();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let key = posts[0].header("idempotency-key").unwrap().to_string();
    let (images, keys) = database.rows();
    assert_eq!(keys, [key]);
    assert_eq!(
        images.iter().filter(|(_, t)| t == "Through B").count(),
        1,
        "{images:?}"
    );
    assert_eq!(foreign.connections.load(Ordering::SeqCst), 0);

    // With none of its APIs reachable, the page names them all.
    browser.navigate(&site.url(&format!("/?api={},{}", api(dead), api(a.front_port))));
    let status = wait_for(Duration::from_secs(20), "the failure message", || {
        Some(browser.text(&browser.find("#status"))).filter(|s| s != "Loading images…")
    });
    assert_eq!(
        status,
        format!(
            "None of the APIs at {}, {} could be reached.",
            door(dead),
            door(a.front_port)
        )
    );
}
