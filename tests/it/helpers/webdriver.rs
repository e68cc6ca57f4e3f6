//! A minimal W3C WebDriver client (blocking reqwest + serde_json) driving
//! Debian's headless Chromium through `chromedriver`: just what the browser
//! tests need — navigate, find, read text, type, click, run a script, plus
//! three chromedriver extensions: the browser's console log, its network
//! log (every response's URL and status), and a script run at the start of
//! every new document (before the page's own).
//!
//! `chromedriver --port=0` picks a free port and reports it ("ChromeDriver
//! was started successfully on port N."), so tests never race for ports.
//! chromedriver is a [`Proc`]: killed on drop, its log printed when a test
//! fails. A missing browser or driver fails the test; it is never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{Proc, wait_for};

/// The W3C key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

const INSTALL: &str = "install Debian's `chromium` and `chromium-driver` packages \
     (`apt-get install chromium chromium-driver`; `bash .ci/run` does it)";

/// The first of `names` on PATH, else in the directories Debian uses.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|name| {
        which::which(name).ok().or_else(|| {
            ["/usr/bin", "/usr/lib/chromium"]
                .iter()
                .map(|dir| PathBuf::from(dir).join(name))
                .find(|candidate| candidate.is_file())
        })
    })
}

/// Reads "... started successfully on port N" from chromedriver's output.
fn reported_port(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("started successfully on port ")?;
    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// A browser session; the session is deleted and chromedriver (with the
/// browser) ends on drop.
pub struct Browser {
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    client: reqwest::blocking::Client,
    // Dropped in this order, after `Drop::drop` has deleted the session.
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> Browser {
        Browser::launch(false)
    }

    /// [`Browser::start`], keeping a network log for [`Browser::responses`].
    pub fn start_recording_network() -> Browser {
        Browser::launch(true)
    }

    fn launch(network_log: bool) -> Browser {
        let driver_path = find_program(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver not found on PATH: {INSTALL}"));
        let chromium = find_program(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium not found on PATH: {INSTALL}"));

        let mut command = Command::new(&driver_path);
        command.arg("--port=0");
        let mut driver = Proc::spawn("chromedriver", command);
        let output = driver.output.clone();
        let port = wait_for(Duration::from_secs(20), "chromedriver to start", || {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before starting ({INSTALL}):\n{}",
                    driver_path.display(),
                    output.text()
                );
            }
            output.lines().iter().find_map(|line| reported_port(line))
        });
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        wait_for(Duration::from_secs(20), "chromedriver to be ready", || {
            let status: Value = client
                .get(format!("{base}/status"))
                .send()
                .ok()?
                .json()
                .ok()?;
            status["value"]["ready"].as_bool().filter(|&ready| ready)
        });

        let profile = tempfile::tempdir().unwrap();
        // Keeps the console (and the browser's own messages, such as CSP
        // refusals) for `console_log`; with `network_log`, DevTools' network
        // events too, for `responses`.
        let logging = if network_log {
            json!({"browser": "ALL", "performance": "ALL"})
        } else {
            json!({"browser": "ALL"})
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": logging,
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let created = request(
            &client,
            Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .unwrap_or_else(|error| {
            panic!(
                "creating a WebDriver session with {} failed ({INSTALL}): {error}",
                chromium.display()
            )
        });
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in WebDriver's answer: {created}"));
        Browser {
            session: format!("{base}/session/{id}"),
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// A session command; panics with WebDriver's error message.
    fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        request(&self.client, method.clone(), &url, body)
            .unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"))
    }

    /// Opens `url` and waits for the page to load.
    pub fn navigate(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// Resizes the browser's window (the viewport is a little smaller).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Element ids matching a CSS selector, in document order.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.call(
            Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("WebDriver find {css}: not a list: {found}"))
            .iter()
            .map(|element| {
                element[ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("WebDriver find {css}: not an element: {element}"))
                    .to_string()
            })
            .collect()
    }

    /// The first element matching a CSS selector (panics if none).
    pub fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element matches {css}"))
    }

    /// An element's rendered text.
    pub fn text(&self, element: &str) -> String {
        let text = self.call(Method::GET, &format!("/element/{element}/text"), None);
        text.as_str()
            .unwrap_or_else(|| panic!("WebDriver text: not a string: {text}"))
            .to_string()
    }

    /// Types `text` into an element.
    pub fn send_keys(&self, element: &str, text: &str) {
        self.call(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn click(&self, element: &str) {
        self.call(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.call(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }
}

/// One console message: level (`SEVERE`, `WARNING`, `INFO`...), origin
/// (`console-api`, `network`, `security`, ...) and text.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    pub level: String,
    pub source: String,
    pub message: String,
}

impl Browser {
    /// The console messages since the last call (chromedriver hands each
    /// out once), including those the browser itself logs: failed loads,
    /// CSP refusals, uncaught exceptions.
    pub fn console_log(&self) -> Vec<ConsoleEntry> {
        let entries = self.call(Method::POST, "/se/log", Some(json!({"type": "browser"})));
        entries
            .as_array()
            .unwrap_or_else(|| panic!("WebDriver log: not a list: {entries}"))
            .iter()
            .map(|entry| ConsoleEntry {
                level: entry["level"].as_str().unwrap_or_default().to_string(),
                source: entry["source"].as_str().unwrap_or_default().to_string(),
                message: entry["message"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// The responses the browser received since the last call (a session
    /// started with [`Browser::start_recording_network`]): each URL with its
    /// HTTP status, in order, and each request that got no response at all
    /// with status 0.
    pub fn responses(&self) -> Vec<(String, u16)> {
        let entries = self.call(
            Method::POST,
            "/se/log",
            Some(json!({"type": "performance"})),
        );
        let entries = entries
            .as_array()
            .unwrap_or_else(|| panic!("WebDriver performance log: not a list: {entries}"));
        let mut urls = std::collections::HashMap::new();
        let mut responses = Vec::new();
        for entry in entries {
            // Each entry's message is itself JSON: a DevTools event.
            let event: Value = serde_json::from_str(entry["message"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let params = &event["message"]["params"];
            let id = params["requestId"].as_str().unwrap_or_default().to_string();
            match event["message"]["method"].as_str() {
                Some("Network.requestWillBeSent") => {
                    let url = params["request"]["url"].as_str().unwrap_or_default();
                    urls.insert(id, url.to_string());
                }
                Some("Network.responseReceived") => responses.push((
                    params["response"]["url"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    params["response"]["status"].as_u64().unwrap_or(0) as u16,
                )),
                Some("Network.loadingFailed") => {
                    let url = urls.get(&id).cloned().unwrap_or(id);
                    let why = params["errorText"].as_str().unwrap_or_default();
                    responses.push((format!("{url} ({why}; {params})"), 0))
                }
                _ => {}
            }
        }
        responses
    }

    /// Runs `source` at the start of every document loaded from now on,
    /// before any of the page's own scripts (DevTools'
    /// `Page.addScriptToEvaluateOnNewDocument`; no page policy applies to it).
    pub fn on_new_document(&self, source: &str) {
        self.call(
            Method::POST,
            "/goog/cdp/execute",
            Some(json!({
                "cmd": "Page.addScriptToEvaluateOnNewDocument",
                "params": {"source": source}
            })),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser; chromedriver itself is killed by its `Proc`.
        let _ = self
            .client
            .delete(&self.session)
            .timeout(Duration::from_secs(10))
            .send();
    }
}

/// One WebDriver request: its `value`, or WebDriver's error as text.
fn request(
    client: &reqwest::blocking::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut builder = client.request(method, url);
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = builder.send().map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .map_err(|e| format!("reading the {status} response: {e}"))?;
    let mut answer: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{status} with a body that is not JSON ({e}): {text}"))?;
    let value = answer["value"].take();
    match value["error"].as_str() {
        Some(error) => Err(format!(
            "{error}: {}",
            value["message"].as_str().unwrap_or("")
        )),
        None if !status.is_success() => Err(format!("{status}: {text}")),
        None => Ok(value),
    }
}
