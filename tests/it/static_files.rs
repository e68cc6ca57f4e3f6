//! SPEC §4 against a real `static-server`, rule by rule.

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::{StaticServer, client, raw_request, wait_until};

/// A served directory with one file of each kind, and a secret next to it
/// (outside the root) that symlinks inside point at.
fn site() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("site");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(
        root.join("index.html"),
        "<!doctype html><title>Gallery</title>".repeat(20),
    )
    .unwrap();
    std::fs::write(root.join("style.css"), "body { margin: 0; }\n".repeat(50)).unwrap();
    std::fs::write(
        root.join("script.js"),
        "console.log('gallery');\n".repeat(50),
    )
    .unwrap();
    std::fs::write(
        root.join("images/a.svg"),
        "<svg xmlns='http://www.w3.org/2000/svg'/>",
    )
    .unwrap();
    std::fs::write(root.join("sub/index.html"), "sub index").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP SECRET").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("outside")).unwrap();
    std::os::unix::fs::symlink(root.join("style.css"), root.join("inside.css")).unwrap();
    (dir, root)
}

#[test]
fn root_serves_index_html_and_directories_their_index() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    let response = client().get(server.url("/")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        response
            .text()
            .unwrap()
            .starts_with("<!doctype html><title>Gallery")
    );
    let sub = client().get(server.url("/sub/")).send().unwrap();
    assert_eq!(sub.text().unwrap(), "sub index");
}

#[test]
fn content_types_follow_the_file_extension() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    for (path, want) in [
        ("/index.html", "text/html"),
        ("/style.css", "text/css"),
        ("/script.js", "javascript"),
        ("/images/a.svg", "image/svg+xml"),
    ] {
        let response = client().get(server.url(path)).send().unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.contains(want), "{path}: {content_type}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
}

#[test]
fn the_real_gallery_page_and_its_images_are_served() {
    let server = StaticServer::start(&crate::helpers::assets_dir());
    let page = client()
        .get(server.url("/"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("script.js") && page.contains("style.css"));
    for path in [
        "/style.css",
        "/script.js",
        "/images/sunset.svg",
        "/images/mountain.svg",
        "/images/cat.svg",
    ] {
        assert_eq!(
            client().get(server.url(path)).send().unwrap().status(),
            200,
            "{path}"
        );
    }
}

#[test]
fn head_answers_headers_without_a_body() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    let (status, head, body) = raw_request(server.port, "HEAD", "/style.css");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/css"),
        "{head}"
    );
    assert!(body.is_empty());
}

#[test]
fn last_modified_and_etag_give_304_on_conditional_gets() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    let first = client().get(server.url("/style.css")).send().unwrap();
    let last_modified = first.headers()["last-modified"].clone();
    let etag = first.headers()["etag"].clone();
    let by_date = client()
        .get(server.url("/style.css"))
        .header("if-modified-since", last_modified)
        .send()
        .unwrap();
    assert_eq!(by_date.status(), 304);
    let by_tag = client()
        .get(server.url("/style.css"))
        .header("if-none-match", etag.clone())
        .send()
        .unwrap();
    assert_eq!(by_tag.status(), 304);
    assert_eq!(by_tag.headers()["etag"], etag);
    let stale = client()
        .get(server.url("/style.css"))
        .header("if-none-match", "\"other\"")
        .send()
        .unwrap();
    assert_eq!(stale.status(), 200);
    // A changed file gets a new validator (once the server looks again:
    // within its check interval, 100 ms).
    std::fs::write(root.join("style.css"), "body { margin: 1px; }").unwrap();
    wait_until(Duration::from_secs(5), "the changed file", || {
        let changed = client()
            .get(server.url("/style.css"))
            .header("if-none-match", etag.clone())
            .send()
            .unwrap();
        changed.status() == 200
    });
}

#[test]
fn gzip_is_used_only_when_the_client_accepts_it() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    let gzipped = client()
        .get(server.url("/script.js"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let body = gzipped.bytes().unwrap();
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(body.len() < "console.log('gallery');\n".len() * 50);
    let plain = client().get(server.url("/script.js")).send().unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(plain.text().unwrap().starts_with("console.log"));
}

#[test]
fn missing_files_are_404() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    for path in ["/nope.html", "/images/nope.svg", "/sub/nope/"] {
        assert_eq!(
            client().get(server.url(path)).send().unwrap().status(),
            404,
            "{path}"
        );
    }
}

#[test]
fn nothing_outside_the_directory_can_be_reached() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    for target in [
        "/../secret.txt",
        "/images/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/images/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/leak.txt",
        "/outside/secret.txt",
    ] {
        let (status, _head, body) = raw_request(server.port, "GET", target);
        assert_eq!(status, 404, "{target}");
        assert!(
            !String::from_utf8_lossy(&body).contains("TOP SECRET"),
            "{target}"
        );
    }
    // A symlink that stays inside the root is fine.
    assert_eq!(raw_request(server.port, "GET", "/inside.css").0, 200);
}

#[test]
fn every_request_is_logged() {
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    client().get(server.url("/style.css")).send().unwrap();
    client().get(server.url("/missing")).send().unwrap();
    let output = server.proc.output.clone();
    wait_until(Duration::from_secs(5), "request log lines", || {
        output.contains("GET /style.css 200") && output.contains("GET /missing 404")
    });
}

#[test]
fn the_gallery_page_loads_nothing_from_other_hosts() {
    let assets = crate::helpers::assets_dir();
    for file in ["index.html", "style.css", "script.js"] {
        let text = std::fs::read_to_string(assets.join(file)).unwrap();
        // Addresses may appear in words shown to people (hints, messages),
        // never where the browser would load them.
        let loads = [
            "src=\"http",
            "href=\"http",
            "src='http",
            "href='http",
            "url(http",
            "url(\"http",
            "url('http",
            "fetch('http",
            "fetch(\"http",
            "import ",
            "@import",
            "fonts.googleapis",
            "cdn",
        ];
        for needle in loads {
            assert!(!text.contains(needle), "{file} loads {needle:?}");
        }
        assert!(
            !text.contains("innerHTML") && !text.contains("insertAdjacentHTML"),
            "{file}"
        );
    }
    for image in ["sunset", "mountain", "cat"] {
        let svg = std::fs::read_to_string(assets.join(format!("images/{image}.svg"))).unwrap();
        assert!(
            !svg.contains("href") && !svg.contains("<script"),
            "{image}.svg"
        );
    }
}

#[test]
fn files_served_from_memory_follow_changes_on_disk_and_gzip_on_request() {
    use std::io::Read;
    let (_dir, root) = site();
    let server = StaticServer::start(&root);
    let get = |accept_gzip: bool| {
        let mut request = client().get(server.url("/style.css"));
        if accept_gzip {
            request = request.header("accept-encoding", "gzip");
        }
        request.send().unwrap()
    };
    // Twice: from disk, then from memory; the same bytes and validators.
    let first = get(false);
    let etag = first.headers()["etag"].clone();
    let headers = |response: &reqwest::blocking::Response| {
        let mut headers: Vec<String> = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(name, value)| format!("{name}: {value:?}"))
            .collect();
        headers.sort();
        headers
    };
    let first_headers = headers(&first);
    assert_eq!(first.text().unwrap(), "body { margin: 0; }\n".repeat(50));
    let second = get(false);
    // The answer from memory skips the router: it must say all the same.
    assert_eq!(headers(&second), first_headers);
    assert!(first_headers.contains(&"cache-control: \"no-cache\"".to_string()));
    assert_eq!(second.headers()["etag"], etag);
    assert_eq!(second.headers()["content-type"], "text/css");
    assert_eq!(second.text().unwrap(), "body { margin: 0; }\n".repeat(50));

    let zipped = get(true);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "accept-encoding");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped.bytes().unwrap()[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "body { margin: 0; }\n".repeat(50));

    let head = client().head(server.url("/style.css")).send().unwrap();
    assert_eq!(head.headers()["content-length"], "1000");
    let since = head.headers()["last-modified"].clone();
    let not_modified = client()
        .get(server.url("/style.css"))
        .header("if-modified-since", since)
        .send()
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    // A deploy rewrites the file (same size): it is served within the
    // check interval (100 ms), with its new validator.
    std::fs::write(root.join("style.css"), "body { margin: 1; }\n".repeat(50)).unwrap();
    let written = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "the rewritten file", || {
        get(false).headers()["etag"] != etag
    });
    let changed = get(false);
    assert_eq!(changed.text().unwrap(), "body { margin: 1; }\n".repeat(50));
    // And a removed file is gone as soon.
    std::fs::remove_file(root.join("style.css")).unwrap();
    wait_until(Duration::from_secs(5), "the removed file's 404", || {
        get(false).status() == 404
    });
    eprintln!(
        "the rewrite and the removal were seen within {:?}",
        written.elapsed()
    );
}
