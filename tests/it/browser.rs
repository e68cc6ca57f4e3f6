//! SPEC §5 and §13 in a real browser: headless Chromium loads the page from
//! `static-server` with the API on another origin (CORS, allowed by
//! `--api-origin`), renders the seeded images, adds one through the form
//! without a reload, pages through more than 50 images, retries a failed
//! POST under the same `Idempotency-Key`, and runs under the page's
//! Content-Security-Policy, which refuses an API origin it does not name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::webdriver::Browser;
use crate::helpers::{
    ApiServer, Proc, StaticServer, assets_dir, bin, client, free_port, temp_db, wait_for,
    wait_until,
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

#[test]
fn page_reports_validation_errors_and_api_failures() {
    let gallery = Gallery::open();
    let browser = &gallery.browser;

    browser.send_keys(&browser.find("#title"), "Bad");
    browser.send_keys(&browser.find("#url"), "javascript:alert(1)");
    browser.click(&browser.find("#add-submit"));
    let message = wait_for(Duration::from_secs(10), "the API's error message", || {
        Some(browser.text(&browser.find("#form-message"))).filter(|m| m.contains("url"))
    });
    assert!(message.contains("absolute http(s) URL"), "{message}");
    assert_eq!(browser.find_all(".card").len(), 3);

    // An empty gallery: "No images available."
    rusqlite::Connection::open(&gallery.db)
        .unwrap()
        .execute_batch("DELETE FROM images")
        .unwrap();
    gallery.load_page(gallery.api.port);
    wait_until(Duration::from_secs(20), "the empty-gallery message", || {
        browser.text(&browser.find("#status")) == "No images available."
    });
    assert!(browser.find_all(".card").is_empty());

    // An allowed API origin with nothing there: "Something went wrong."
    gallery.load_page(gallery.dead_port);
    wait_until(Duration::from_secs(20), "the failure message", || {
        browser.text(&browser.find("#status")) == "Something went wrong."
    });
}

#[test]
fn page_through_the_front_door_uses_its_own_origin_api() {
    let stack = crate::helpers::supervisor::Supervisor::start(&["--api-workers", "2"]);
    let browser = start_browser();
    browser.navigate(&stack.url("/"));
    wait_until(Duration::from_secs(20), "three cards", || {
        browser.find_all(".card").len() == 3
    });
    assert_eq!(titles(&browser), ["Sunset", "Mountain", "Cat"]);
    assert_eq!(browser.text(&browser.find("#api-base")), "/api");
    wait_until(Duration::from_secs(20), "the SVG images to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
    // The policy (nginx passes the static server's headers through) allows
    // the page's own origin's /api.
    assert_eq!(violations(&browser), json!([]));
    assert_eq!(console_errors(&browser), Vec::<String>::new());
}

/// One request as [`FakeApi`] read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
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
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // a connection opened ahead of need, or the stop call
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let request = Seen {
        method,
        target,
        body: String::new(),
        headers,
    };
    let length = request
        .header("content-length")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let request = Seen {
        body: String::from_utf8_lossy(&body).into_owned(),
        ..request
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
    assert_eq!(message, "the API is unavailable");
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
