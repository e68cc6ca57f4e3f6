//! SPEC §5 in a real browser: headless Chromium loads the page from
//! `static-server` with the API on another origin (CORS), renders the seeded
//! images, and adds one through the form without a reload.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::webdriver::Browser;
use crate::helpers::{ApiServer, StaticServer, assets_dir, client, temp_db, wait_for, wait_until};

fn titles(browser: &Browser) -> Vec<String> {
    browser
        .find_all("#gallery .card .title")
        .iter()
        .map(|e| browser.text(e))
        .collect()
}

/// The page served by `static-server`, calling an `api-server` on another
/// origin, opened in the browser once its three seeded cards are shown.
struct Gallery {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    api: ApiServer,
    site: StaticServer,
    browser: Browser,
}

impl Gallery {
    fn open() -> Gallery {
        let (dir, db) = temp_db();
        let api = ApiServer::start(&db, "api-1", &[]);
        let site = StaticServer::start(&assets_dir());
        let browser = Browser::start();
        let gallery = Gallery {
            _dir: dir,
            db,
            api,
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
            .navigate(&self.site.url(&format!("/?api=http://127.0.0.1:{api_port}")));
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

    // An API that is not there: "Something went wrong."
    gallery.load_page(crate::helpers::free_port());
    wait_until(Duration::from_secs(20), "the failure message", || {
        browser.text(&browser.find("#status")) == "Something went wrong."
    });
}

#[test]
fn page_through_the_front_door_uses_its_own_origin_api() {
    let stack = crate::helpers::supervisor::Supervisor::start(&["--api-workers", "2"]);
    let browser = Browser::start();
    browser.navigate(&stack.url("/"));
    wait_until(Duration::from_secs(20), "three cards", || {
        browser.find_all(".card").len() == 3
    });
    assert_eq!(titles(&browser), ["Sunset", "Mountain", "Cat"]);
    assert_eq!(browser.text(&browser.find("#api-base")), "/api");
    wait_until(Duration::from_secs(20), "the SVG images to load", || {
        browser.execute(IMAGES_LOADED, &[]) == json!(true)
    });
}
