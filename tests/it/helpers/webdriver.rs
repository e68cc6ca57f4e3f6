//! A minimal W3C WebDriver client (over reqwest) driving Debian's headless
//! Chromium through `chromedriver`: just what the browser test needs —
//! navigate, find, read text, type, click, run a script.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Proc, free_port, wait_for};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(candidates: &[&str]) -> Option<std::path::PathBuf> {
    candidates.iter().find_map(|name| which_on_path(name))
}

fn which_on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A browser session; the session and chromedriver end on drop.
pub struct Browser {
    base: String,
    client: reqwest::blocking::Client,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let install = "install Debian's `chromium` and `chromium-driver` (bash .ci/run does)";
        let driver = find_program(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver not found: {install}"));
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("chromium not found: {install}"));
        let port = free_port();
        let mut command = Command::new(driver);
        command.arg(format!("--port={port}"));
        let driver = Proc::spawn("chromedriver", command);
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
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        });
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let response: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {response}"));
        Browser {
            base: format!("{base}/session/{session}"),
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().unwrap().json().unwrap();
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "WebDriver {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        response["value"].clone()
    }

    pub fn navigate(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// Element ids matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT_KEY].as_str().unwrap().to_string())
            .collect()
    }

    pub fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    pub fn text(&self, element: &str) -> String {
        let text = self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        );
        text.as_str().unwrap().to_string()
    }

    pub fn send_keys(&self, element: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn click(&self, element: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.client.delete(&self.base).send();
    }
}
