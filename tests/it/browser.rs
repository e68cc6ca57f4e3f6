//! SPEC §5 and §13 in a real browser: headless Chromium loads the page from
//! `static-server` with the API on another origin (CORS, allowed by
//! `--api-origin`), renders the seeded images, adds one through the form
//! without a reload, pages through more than 50 images, retries a failed
//! POST under the same `Idempotency-Key`, and runs under the page's
//! Content-Security-Policy, which refuses an API origin it does not name.
//! When something fails the page says what: an unreachable API, one that
//! refuses the page's origin, a server error with its status, the page
//! opened on the static server without `?api=`, a form field to fix; and an
//! image that cannot be loaded gives way to a placeholder.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::webdriver::Browser;
use crate::helpers::{
    ApiServer, Proc, Seen, StaticServer, assets_dir, bin, client, free_port, read_request, temp_db,
    wait_for, wait_until,
};

fn titles(browser: &Browser) -> Vec<String> {
    browser
        .find_all("#gallery .card .title")
        .iter()
        .map(|e| browser.text(e))
        .collect()
}

/// `static-server` for the repository's page on a free port, its policy
/// allowing `api_origins` (`--api-origin`).
pub(crate) fn start_site(api_origins: &[String]) -> StaticServer {
    let mut command = Command::new(bin("static-server"));
    command.args(["--port", "0", "--path"]).arg(assets_dir());
    for origin in api_origins {
        command.args(["--api-origin", origin]);
    }
    let mut proc = Proc::spawn("static", command);
    let port = proc.wait_for_port();
    StaticServer { proc, port }
}

fn origin(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Records every `securitypolicyviolation` of every page from its first
/// moment (before the page's own scripts) in `window.__violations`.
const RECORD_VIOLATIONS: &str = "window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(
        {directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample}));";

/// A browser that records CSP violations (see [`RECORD_VIOLATIONS`]).
fn start_browser() -> Browser {
    let browser = Browser::start();
    browser.on_new_document(RECORD_VIOLATIONS);
    browser
}

fn violations(browser: &Browser) -> Value {
    browser.execute("return window.__violations;", &[])
}

/// The console errors logged since the last look (the browser's own
/// included: refused loads, failed requests, uncaught exceptions).
fn console_errors(browser: &Browser) -> Vec<String> {
    browser
        .console_log()
        .into_iter()
        .filter(|entry| entry.level == "SEVERE")
        .map(|entry| format!("[{}] {}", entry.source, entry.message))
        .collect()
}

/// The page served by `static-server`, calling an `api-server` on another
/// origin that its policy allows, opened in the browser once its three
/// seeded cards are shown.
struct Gallery {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    api: ApiServer,
    /// An origin the site's policy allows too, with nothing listening.
    dead_port: u16,
    site: StaticServer,
    browser: Browser,
}

impl Gallery {
    fn open() -> Gallery {
        let (dir, db) = temp_db();
        let api = ApiServer::start(&db, "api-1", &[]);
        let dead_port = free_port();
        let site = start_site(&[origin(api.port), origin(dead_port)]);
        let browser = start_browser();
        let gallery = Gallery {
            _dir: dir,
            db,
            api,
            dead_port,
            site,
            browser,
        };
        gallery.load_page(gallery.api.port);
        wait_until(Duration::from_secs(20), "three cards", || {
            gallery.browser.find_all("#gallery figure.card").len() == 3
        });
        gallery
    }

    fn load_page(&self, api_port: u16) {
        self.browser
            .navigate(&self.site.url(&format!("/?api={}", origin(api_port))));
    }
}

/// Whether every `#gallery img` has actually loaded (an SVG drawn, not a
/// broken image).
const IMAGES_LOADED: &str = "return [...document.querySelectorAll('#gallery img')]
     .every(img => img.complete && img.naturalWidth > 0);";

#[test]
fn page_renders_seeded_images_from_another_origin_and_adds_one_through_the_form() {
    let started = Instant::now();
    let gallery = Gallery::open();
    let (browser, api) = (&gallery.browser, &gallery.api);

    // The seeded images, in order, from the API on another origin (CORS).
    let seeded = titles(browser);
    assert_eq!(seeded, ["Sunset", "Mountain", "Cat"]);
    wait_until(Duration::from_secs(20), "the SVG images to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
    let loaded = started.elapsed();
    let images = browser.execute(
        "return [...document.querySelectorAll('#gallery img')]
             .map(img => [img.getAttribute('src'), img.naturalWidth, img.naturalHeight]);",
        &[],
    );
    assert_eq!(
        images.as_array().map(|srcs| srcs
            .iter()
            .map(|img| img[0].as_str().unwrap_or_default())
            .collect::<Vec<_>>()),
        Some(vec![
            "/images/sunset.svg",
            "/images/mountain.svg",
            "/images/cat.svg"
        ])
    );
    let alts = browser.execute(
        "return [...document.querySelectorAll('#gallery .alt')].map(p => p.textContent);",
        &[],
    );
    assert_eq!(alts[0], "A warm sunset over the sea");
    let status = wait_for(Duration::from_secs(20), "the status to settle", || {
        Some(browser.text(&browser.find("#status"))).filter(|s| s != "Loading images…")
    });
    assert_ne!(status, "Something went wrong.");
    assert!(status.is_empty(), "status after loading: {status:?}");
    assert_eq!(
        browser.text(&browser.find("#api-base")),
        format!("http://127.0.0.1:{}", api.port)
    );

    // Add an image whose title looks like HTML: it must show as text, and
    // appear without the page being reloaded.
    let title = "<b>Dog</b> & co";
    browser.execute("window.__marker = arguments[0]; return null;", &[json!(42)]);
    browser.send_keys(&browser.find("#title"), title);
    browser.send_keys(&browser.find("#alt_text"), "A good dog");
    browser.send_keys(&browser.find("#url"), "/images/cat.svg");
    browser.click(&browser.find("#add-submit"));
    wait_until(Duration::from_secs(20), "the fourth card", || {
        browser.find_all("#gallery figure.card").len() == 4
    });
    let shown = titles(browser);
    assert_eq!(shown.last().map(String::as_str), Some(title));
    assert_eq!(
        browser.execute(
            "return document.querySelectorAll('#gallery b').length;",
            &[]
        ),
        json!(0),
        "the title was inserted as HTML"
    );
    assert_eq!(
        browser.execute("return window.__marker;", &[]),
        json!(42),
        "the page was reloaded"
    );
    let last = browser.execute(
        "const card = document.querySelector('#gallery figure.card:last-of-type');
         return {id: card.dataset.id, alt: card.querySelector('.alt').textContent,
                 src: card.querySelector('img').getAttribute('src')};",
        &[],
    );
    assert_eq!(last["alt"], "A good dog");
    assert_eq!(last["src"], "/images/cat.svg");
    wait_until(Duration::from_secs(20), "the new image to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
    let message = wait_for(Duration::from_secs(20), "the form message", || {
        Some(browser.text(&browser.find("#form-message"))).filter(|m| m.starts_with("Added"))
    });
    assert_eq!(
        message_kind(browser, "#form-message"),
        "success",
        "{message}"
    );

    // The API stored it.
    let response = client().get(api.url("/images.json")).send().unwrap();
    assert_eq!(response.status(), 200);
    let stored: Vec<Value> = response.json().unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[3]["title"], title);
    assert_eq!(
        stored[3]["id"].to_string(),
        last["id"].as_str().unwrap_or("")
    );

    // All of it within the page's policy, with a clean console.
    assert_eq!(violations(browser), json!([]));
    assert_eq!(console_errors(browser), Vec::<String>::new());

    eprintln!(
        "browser: page with 3 cards {seeded:?} and their SVGs loaded after {loaded:.2?}; \
         added {title:?} through the form ({message:?}), shown as text: {shown:?} \
         (no reload, no <b>); API holds {} images; {:.2?} in all",
        stored.len(),
        started.elapsed()
    );
}

/// How `css` is styled: `error`, `success` or `plain`.
fn message_kind(browser: &Browser, css: &str) -> &'static str {
    let classes = browser.execute(
        "return document.querySelector(arguments[0]).className;",
        &[json!(css)],
    );
    let classes = classes.as_str().unwrap_or_default();
    match (classes.contains("is-error"), classes.contains("is-success")) {
        (true, false) => "error",
        (false, true) => "success",
        (false, false) => "plain",
        (true, true) => panic!("{css} is styled both as an error and a success: {classes}"),
    }
}

/// The form fields marked invalid, and whether each shows it (a border
/// unlike an unmarked field's).
const INVALID_FIELDS: &str = "const plain = getComputedStyle(document.querySelector(
         '#add-form input:not([aria-invalid=\"true\"])')).borderTopColor;
     return [...document.querySelectorAll('#add-form input[aria-invalid=\"true\"]')]
         .map(input => [input.id, getComputedStyle(input).borderTopColor !== plain]);";

#[test]
fn a_refused_field_is_marked_and_its_error_styled_as_one() {
    let gallery = Gallery::open();
    let browser = &gallery.browser;
    assert_eq!(browser.execute(INVALID_FIELDS, &[]), json!([]));

    browser.send_keys(&browser.find("#title"), "Bad");
    browser.send_keys(&browser.find("#url"), "javascript:alert(1)");
    browser.click(&browser.find("#add-submit"));
    let message = wait_for(Duration::from_secs(10), "the API's error message", || {
        Some(browser.text(&browser.find("#form-message"))).filter(|m| m.contains("must"))
    });
    // The API's rule, the field called by its label, no developer quoting.
    assert_eq!(
        message,
        "Image address must be an absolute http(s) URL or a site path starting with a single /"
    );
    assert_eq!(message_kind(browser, "#form-message"), "error");
    assert_eq!(browser.execute(INVALID_FIELDS, &[]), json!([["url", true]]));
    assert_eq!(
        browser.execute("return document.activeElement.id;", &[]),
        json!("url")
    );
    assert_eq!(browser.find_all(".card").len(), 3);

    // An empty title is the API's to refuse too, and marks the title only.
    browser.execute(
        "document.querySelector('#title').value = ''; return null;",
        &[],
    );
    browser.click(&browser.find("#add-submit"));
    let message = wait_for(Duration::from_secs(10), "the title's error", || {
        Some(browser.text(&browser.find("#form-message"))).filter(|m| m.starts_with("Title"))
    });
    assert!(!message.contains('`'), "{message}");
    assert_eq!(
        browser.execute(INVALID_FIELDS, &[]),
        json!([["title", true]])
    );

    // Typing in the field clears its mark; a good image is a success.
    browser.send_keys(&browser.find("#title"), "Good");
    assert_eq!(browser.execute(INVALID_FIELDS, &[]), json!([]));
    browser.execute(
        "document.querySelector('#url').value = '/images/cat.svg'; return null;",
        &[],
    );
    browser.click(&browser.find("#add-submit"));
    wait_until(Duration::from_secs(10), "the success message", || {
        browser.text(&browser.find("#form-message")) == "Added “Good”."
    });
    assert_eq!(message_kind(browser, "#form-message"), "success");
    assert_eq!(browser.execute(INVALID_FIELDS, &[]), json!([]));

    // An empty gallery: "No images available.", not styled as an error.
    rusqlite::Connection::open(&gallery.db)
        .unwrap()
        .execute_batch("DELETE FROM images")
        .unwrap();
    gallery.load_page(gallery.api.port);
    wait_until(Duration::from_secs(20), "the empty-gallery message", || {
        browser.text(&browser.find("#status")) == "No images available."
    });
    assert_eq!(message_kind(browser, "#status"), "plain");
    assert!(browser.find_all(".card").is_empty());
}

/// The page's status once it has settled.
fn settled_status(browser: &Browser) -> String {
    wait_for(Duration::from_secs(20), "the status to settle", || {
        Some(browser.text(&browser.find("#status"))).filter(|s| s != "Loading images…")
    })
}

#[test]
fn page_names_each_way_the_api_can_fail() {
    // An API that allows another origin than the page's, one whose
    // database file is gone (503 to everything), and nothing at all; the
    // page's policy allows all three.
    let (_dir, db) = temp_db();
    let refusing = ApiServer::start(
        &db,
        "api-refusing",
        &["--cors-origin", "http://example.com"],
    );
    let (_broken_dir, broken_db) = temp_db();
    let broken = ApiServer::start(&broken_db, "api-broken", &[]);
    let dead_port = free_port();
    let site = start_site(&[
        origin(refusing.port),
        origin(broken.port),
        origin(dead_port),
    ]);
    let browser = start_browser();
    let open = |api_port: u16| {
        browser.navigate(&site.url(&format!("/?api={}", origin(api_port))));
        let status = settled_status(&browser);
        assert_eq!(message_kind(&browser, "#status"), "error", "{status}");
        status
    };

    assert_eq!(
        open(dead_port),
        format!("The API at {} could not be reached.", origin(dead_port))
    );
    // The form says the same of its POST (after its one retry).
    browser.send_keys(&browser.find("#title"), "Nowhere");
    browser.send_keys(&browser.find("#url"), "/images/cat.svg");
    browser.click(&browser.find("#add-submit"));
    let message = wait_for(Duration::from_secs(20), "the form's failure", || {
        Some(browser.text(&browser.find("#form-message"))).filter(|m| !m.starts_with("Adding"))
    });
    assert_eq!(
        message,
        format!("The API at {} could not be reached.", origin(dead_port))
    );
    assert_eq!(message_kind(&browser, "#form-message"), "error");

    // The refusing API is up and answers (the probe reaches it), but not
    // for this origin.
    let answered = client()
        .get(refusing.url("/images.json"))
        .header("Origin", site.url(""))
        .send()
        .unwrap();
    assert_eq!(answered.status(), 200);
    assert!(
        answered
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(
        open(refusing.port),
        format!(
            "The API at {} refused this page’s origin (CORS).",
            origin(refusing.port)
        )
    );

    for file in ["gallery.db", "gallery.db-wal", "gallery.db-shm"] {
        let _ = std::fs::remove_file(broken_db.with_file_name(file));
    }
    wait_until(
        Duration::from_secs(10),
        "the broken API to answer 503",
        || {
            client()
                .get(broken.url("/images.json"))
                .send()
                .is_ok_and(|r| r.status() == 503)
        },
    );
    assert_eq!(open(broken.port), "The server had a problem (503).");

    // The page opened on the static server itself, without ?api=: its /api
    // is the static server's 404.
    browser.navigate(&site.url("/"));
    let status = settled_status(&browser);
    assert!(
        status.starts_with("There is no gallery API at this address")
            && status.contains("front door")
            && status.contains("?api="),
        "{status}"
    );
    assert_eq!(message_kind(&browser, "#status"), "error");
    assert_eq!(violations(&browser), json!([]));
}

#[test]
fn an_image_that_cannot_be_loaded_gives_way_to_the_placeholder() {
    let gallery = Gallery::open();
    let (browser, api) = (&gallery.browser, &gallery.api);
    // An address nothing answers at (the README's Unsplash image fares the
    // same offline), and a missing file on the page's own server.
    let unreachable = format!("{}/photo.jpg", origin(gallery.dead_port));
    for url in [unreachable.as_str(), "/images/missing.svg"] {
        let response = client()
            .post(api.url("/images.json"))
            .body(json!({"title": url, "alt_text": "gone", "url": url}).to_string())
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    gallery.load_page(api.port);
    wait_until(Duration::from_secs(20), "five cards", || {
        browser.find_all("#gallery figure.card").len() == 5
    });
    browser.execute(
        "document.querySelector('#gallery figure.card:last-of-type').scrollIntoView(); return null;",
        &[],
    );
    wait_until(Duration::from_secs(20), "every image to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
    let shown = browser.execute(
        "return [...document.querySelectorAll('#gallery figure.card')].map(card => {
             const img = card.querySelector('img');
             return [img.getAttribute('src'), img.getAttribute('data-failed-src'),
                     card.classList.contains('is-broken')];
         });",
        &[],
    );
    assert_eq!(
        shown,
        json!([
            ["/images/sunset.svg", null, false],
            ["/images/mountain.svg", null, false],
            ["/images/cat.svg", null, false],
            ["/images/placeholder.svg", unreachable, true],
            ["/images/placeholder.svg", "/images/missing.svg", true],
        ])
    );
    // The placeholder stands in for the picture: its description stays.
    assert_eq!(
        browser.execute(
            "return [...document.querySelectorAll('#gallery .is-broken img')].map(img => img.alt);",
            &[]
        ),
        json!(["gone", "gone"])
    );
    assert_eq!(violations(browser), json!([]));
}

#[test]
fn page_through_the_front_door_uses_its_own_origin_api() {
    let stack = crate::helpers::supervisor::Supervisor::start(&["--api-workers", "2"]);
    let browser = Browser::start_recording_network();
    browser.on_new_document(RECORD_VIOLATIONS);
    // Only this page's requests count, not the browser's own at start-up.
    browser.responses();
    browser.navigate(&stack.url("/"));
    wait_until(Duration::from_secs(20), "three cards", || {
        browser.find_all(".card").len() == 3
    });
    assert_eq!(titles(&browser), ["Sunset", "Mountain", "Cat"]);
    assert_eq!(browser.text(&browser.find("#api-base")), "this site");
    wait_until(Duration::from_secs(20), "the SVG images to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
    // A plain load asks for nothing that is not there: page, style,
    // script, the icon it links (no /favicon.ico), the API, the images.
    let responses = browser.responses();
    let paths: Vec<String> = responses
        .iter()
        .map(|(url, _)| url.trim_start_matches(&stack.url("")).to_string())
        .collect();
    for expected in ["/", "/style.css", "/script.js", "/api/images.json?limit=50"] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected}: {responses:?}"
        );
    }
    // (Only the stack's own: the browser may try some address of its own.)
    let failed: Vec<_> = responses
        .iter()
        .filter(|(url, status)| url.starts_with(&stack.url("/")) && !(200..400).contains(status))
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests on a plain load: {failed:?}"
    );
    let output = stack.proc.output.text();
    // nginx's access lines (`"GET /x HTTP/1.1" 404 …`); not any line with a
    // 404 in it: a child's pid can be 404 too.
    let not_found: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("nginx") && line.contains("\" 404 "))
        .collect();
    assert!(
        not_found.is_empty(),
        "404s in the stack's log: {not_found:?}"
    );
    // The policy (nginx passes the static server's headers through) allows
    // the page's own origin's /api.
    assert_eq!(violations(&browser), json!([]));
    assert_eq!(console_errors(&browser), Vec::<String>::new());
}

/// How [`FakeApi`] answers a request: a status and a JSON body, or hanging
/// up without a word (a worker killed mid-request).
enum Answer {
    Json(u16, String),
    HangUp,
}

type Answerer = dyn Fn(&Seen, &[Seen]) -> Answer + Send + Sync;

/// A stand-in API on a free port, for what a real one will not do on cue
/// (fail a POST, then take its retry) and to count what reaches it. It
/// answers CORS preflights itself, records every other request and answers
/// it with `answer(request, earlier requests)`; every response closes its
/// connection, so a hang-up can never be mistaken for a stale keep-alive.
struct FakeApi {
    port: u16,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    fn start(answer: impl Fn(&Seen, &[Seen]) -> Answer + Send + Sync + 'static) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answerer> = Arc::new(answer);
        let acceptor = {
            let (connections, seen, stop) = (connections.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (seen, answer) = (seen.clone(), answer.clone());
                    std::thread::spawn(move || serve_one(stream, &seen, &*answer));
                }
            })
        };
        FakeApi {
            port,
            connections,
            seen,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn posts(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Reads one request from `stream` and answers it.
fn serve_one(stream: TcpStream, seen: &Mutex<Vec<Seen>>, answer: &Answerer) {
    let Some(request) = read_request(&stream) else {
        return; // a connection opened ahead of need, or the stop call
    };
    let cors = "Access-Control-Allow-Origin: *\r\nConnection: close\r\n";
    let response = if request.method == "OPTIONS" {
        format!(
            "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Methods: GET, POST\r\n\
             Access-Control-Allow-Headers: content-type, idempotency-key\r\n\r\n"
        )
    } else {
        let earlier = {
            let mut seen = seen.lock().unwrap();
            seen.push(request.clone());
            seen[..seen.len() - 1].to_vec()
        };
        match answer(&request, &earlier) {
            Answer::HangUp => return,
            Answer::Json(status, body) => format!(
                "HTTP/1.1 {status} Whatever\r\n{cors}Content-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        }
    };
    let _ = (&stream).write_all(response.as_bytes());
}

/// Whether `text` looks like a random key of 32 hex digits.
fn is_random_key(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn page_runs_under_its_policy_without_violations_or_console_errors() {
    let gallery = Gallery::open();
    let browser = &gallery.browser;
    wait_until(Duration::from_secs(20), "the SVG images to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
    let status = wait_for(Duration::from_secs(20), "the status to settle", || {
        Some(browser.text(&browser.find("#status"))).filter(|s| s != "Loading images…")
    });
    assert_eq!(status, "");

    // Page, script, style, favicon, API calls to the allowed origin and the
    // images: nothing refused, nothing logged as an error.
    assert_eq!(violations(browser), json!([]));
    assert_eq!(console_errors(browser), Vec::<String>::new());

    // The policy is in force (so the empty list above means something): an
    // inline script does not run, and the recorder sees the refusal.
    let ran = browser.execute(
        "const script = document.createElement('script');
         script.textContent = 'window.__inline = true;';
         document.body.appendChild(script);
         return window.__inline === true;",
        &[],
    );
    assert_eq!(ran, json!(false), "an inline script ran");
    let refused = wait_for(
        Duration::from_secs(10),
        "the inline script's violation",
        || {
            violations(browser)
                .as_array()
                .filter(|v| !v.is_empty())
                .cloned()
        },
    );
    assert_eq!(refused[0]["directive"], "script-src-elem", "{refused:?}");
    assert!(
        console_errors(browser)
            .iter()
            .any(|e| e.contains("Content Security Policy")),
        "the refusal was not logged"
    );
}

#[test]
fn api_origin_the_policy_does_not_name_is_refused_and_never_contacted() {
    let foreign = FakeApi::start(|_, _| Answer::Json(200, "[]".to_string()));
    let gallery = Gallery::open();
    let browser = &gallery.browser;

    browser.navigate(&gallery.site.url(&format!("/?api={}", origin(foreign.port))));
    // Refused, or (were the policy to let it through) an empty gallery.
    let status = wait_for(Duration::from_secs(20), "the page to settle", || {
        Some(browser.text(&browser.find("#status")))
            .filter(|s| s.starts_with("This page may not") || s == "No images available.")
    });
    assert_eq!(
        foreign.connections(),
        0,
        "the browser reached the refused origin"
    );
    assert_eq!(
        status,
        format!(
            "This page may not call the API at {0}: its server’s Content-Security-Policy \
             does not allow that origin (start static-server with --api-origin {0}).",
            origin(foreign.port)
        )
    );
    let seen = violations(browser);
    assert_eq!(seen[0]["directive"], "connect-src", "{seen}");
    assert!(
        seen[0]["blocked"]
            .as_str()
            .is_some_and(|b| b.starts_with(&origin(foreign.port))),
        "{seen}"
    );

    // The form is refused the same way, and says so.
    browser.send_keys(&browser.find("#title"), "Nope");
    browser.send_keys(&browser.find("#url"), "/images/cat.svg");
    browser.click(&browser.find("#add-submit"));
    wait_until(
        Duration::from_secs(20),
        "the form's refusal message",
        || {
            browser
                .text(&browser.find("#form-message"))
                .starts_with("This page may not")
        },
    );
    assert!(browser.find_all(".card").is_empty());
    assert_eq!(
        foreign.connections(),
        0,
        "the browser reached the refused origin"
    );

    // The same listener is reached as soon as a policy names it, so the
    // zero above is the policy's doing.
    let allowing = start_site(&[origin(foreign.port)]);
    browser.navigate(&allowing.url(&format!("/?api={}", origin(foreign.port))));
    wait_until(Duration::from_secs(20), "the empty-gallery message", || {
        browser.text(&browser.find("#status")) == "No images available."
    });
    assert!(foreign.connections() > 0);
    assert_eq!(foreign.seen()[0].target, "/images.json?limit=50");
}

#[test]
fn load_more_appears_past_fifty_images_and_loads_the_next_page() {
    let gallery = Gallery::open();
    let (browser, api) = (&gallery.browser, &gallery.api);
    // Three seeded rows and 57 more: 60 in all, ids 1..=60.
    for n in 4..=60 {
        let response = client()
            .post(api.url("/images.json"))
            .body(
                json!({"title": format!("Image {n}"), "alt_text": "", "url": "/images/cat.svg"})
                    .to_string(),
            )
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let ids = |browser: &Browser| {
        browser.execute(
            "return [...document.querySelectorAll('#gallery .card')].map(c => Number(c.dataset.id));",
            &[],
        )
    };
    let requests = |browser: &Browser| {
        browser.execute(
            "return performance.getEntriesByType('resource').map(e => e.name)
                 .filter(n => n.includes('/images.json')).map(n => new URL(n).search);",
            &[],
        )
    };

    gallery.load_page(api.port);
    let button = wait_for(Duration::from_secs(20), "a visible Load more", || {
        browser
            .find_all("#load-more:not([hidden])")
            .into_iter()
            .next()
    });
    assert_eq!(ids(browser), json!((1..=50).collect::<Vec<_>>()));
    assert_eq!(requests(browser), json!(["?limit=50"]));
    // Fifty cards, and the whole form is still in view without scrolling,
    // on a laptop and on a phone, where nothing is wider than the screen.
    for (width, height) in [(1280, 900), (390, 844)] {
        browser.set_window_size(width, height);
        let layout = browser.execute(
            "window.scrollTo(0, 0);
             const form = document.querySelector('#add-form').getBoundingClientRect();
             return {top: form.top, bottom: form.bottom, height: window.innerHeight,
                     width: window.innerWidth,
                     scrollWidth: document.documentElement.scrollWidth};",
            &[],
        );
        assert!(
            layout["top"].as_f64() >= Some(0.0)
                && layout["bottom"].as_f64() <= layout["height"].as_f64(),
            "{width}x{height}: the form is out of view: {layout}"
        );
        assert!(
            layout["scrollWidth"].as_f64() <= layout["width"].as_f64(),
            "{width}x{height}: wider than the window: {layout}"
        );
    }

    // An image added through the form while a page is still to come shows
    // at once, and only once after that page arrives.
    browser.send_keys(&browser.find("#title"), "Image 61");
    browser.send_keys(&browser.find("#url"), "/images/cat.svg");
    browser.click(&browser.find("#add-submit"));
    wait_until(Duration::from_secs(20), "the added card", || {
        browser.find_all("#gallery .card").len() == 51
    });

    browser.click(&button);
    // A page's cards are placed in one go: past 51, the page is in.
    wait_until(Duration::from_secs(20), "the second page", || {
        browser.find_all("#gallery .card").len() > 51
    });
    assert_eq!(ids(browser), json!((1..=61).collect::<Vec<_>>()));
    // The first page, the form's POST, the second page.
    assert_eq!(
        requests(browser),
        json!(["?limit=50", "", "?limit=50&after=50"])
    );
    assert!(
        browser.find_all("#load-more:not([hidden])").is_empty(),
        "Load more is still offered after a short page"
    );
    assert_eq!(titles(browser).last().map(String::as_str), Some("Image 61"));
    assert_eq!(browser.text(&browser.find("#status")), "");
    assert_eq!(violations(browser), json!([]));
}

#[test]
fn a_failed_post_is_retried_once_with_the_same_idempotency_key() {
    // Each submission's first POST fails (a 503, then a hang-up); its
    // retry succeeds. The third submission fails twice: no third attempt.
    let api = FakeApi::start(|request, earlier| {
        if request.method == "GET" {
            return Answer::Json(200, "[]".to_string());
        }
        let posts = earlier.iter().filter(|r| r.method == "POST").count();
        let stored = || {
            let mut image: Value = serde_json::from_str(&request.body).unwrap();
            image["id"] = json!(posts);
            Answer::Json(200, image.to_string())
        };
        match posts {
            0 => Answer::Json(503, r#"{"error":"busy"}"#.to_string()),
            2 => Answer::HangUp,
            1 | 3 => stored(),
            _ => Answer::Json(502, r#"{"error":"the API is unavailable"}"#.to_string()),
        }
    });
    let site = start_site(&[origin(api.port)]);
    let browser = start_browser();
    browser.navigate(&site.url(&format!("/?api={}", origin(api.port))));
    wait_until(Duration::from_secs(20), "the empty-gallery message", || {
        browser.text(&browser.find("#status")) == "No images available."
    });
    let submit = |title: &str| {
        browser.send_keys(&browser.find("#title"), title);
        browser.send_keys(&browser.find("#url"), "/images/cat.svg");
        browser.click(&browser.find("#add-submit"));
    };
    let form_message = |what: &str, done: &dyn Fn(&str) -> bool| {
        wait_for(Duration::from_secs(20), what, || {
            Some(browser.text(&browser.find("#form-message"))).filter(|m| done(m))
        })
    };

    submit("After a 503");
    form_message("the first image", &|m| m.starts_with("Added"));
    submit("After a hang-up");
    form_message("the second image", &|m| m == "Added “After a hang-up”.");
    assert_eq!(titles(&browser), ["After a 503", "After a hang-up"]);

    submit("Never");
    let message = form_message("the give-up message", &|m| !m.starts_with("Adding"));
    assert_eq!(
        message,
        "The server had a problem (502): the API is unavailable"
    );
    assert_eq!(message_kind(&browser, "#form-message"), "error");
    assert_eq!(browser.find_all(".card").len(), 2);

    let posts = api.posts();
    assert_eq!(posts.len(), 6, "{posts:#?}");
    let keys: Vec<&str> = posts
        .iter()
        .map(|p| p.header("idempotency-key").unwrap_or_default())
        .collect();
    assert!(keys.iter().all(|k| is_random_key(k)), "{keys:?}");
    for pair in keys.chunks(2) {
        assert_eq!(pair[0], pair[1], "a retry changed its key: {keys:?}");
    }
    assert!(keys[0] != keys[2] && keys[2] != keys[4] && keys[0] != keys[4]);
    for pair in posts.chunks(2) {
        assert_eq!(pair[0].body, pair[1].body, "a retry changed its body");
    }
}
