//! SPEC §3, rule by rule, against a real `api-server`, on each backend
//! (`api::sqlite::*` and `api::postgres::*`, one body each).
//!
//! SQLite only, as they are about the file itself:
//! `the_sqlite_schema_is_versioned_by_user_version_in_wal_mode` (PRAGMA
//! `user_version` and `journal_mode`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::database::{Backend, TestDatabase, on_both_backends};
use crate::helpers::{
    ApiServer, ORIGINAL_POST, client, get_json, post_form, post_in_flight_on, temp_db, wait_until,
};

on_both_backends! {
    get_lists_the_seeded_images_as_a_json_array_with_ids_in_insertion_order,
    seeded_urls_name_files_that_exist_under_assets,
    indent_pretty_prints_with_exactly_n_spaces,
    bad_indent_values_are_refused_with_400,
    post_with_curl_form_content_type_stores_and_returns_the_image,
    post_accepts_json_and_missing_content_types_and_ignores_unknown_fields,
    invalid_images_are_refused_with_400_and_nothing_is_stored,
    malformed_json_is_a_400_without_parser_details,
    unknown_paths_are_json_404s,
    wrong_methods_are_json_405s_with_allow,
    bodies_over_64_kib_are_refused_with_413_and_smaller_ones_accepted,
    database_failures_give_a_generic_500_without_sql_or_paths,
    a_locked_database_gives_503_with_retry_after_and_no_row,
    cors_allows_any_origin_by_default_and_answers_preflight,
    cors_origin_flag_restricts_to_the_named_origin,
    health_reports_worker_and_pid_after_a_database_round_trip,
    every_response_names_its_worker,
    every_request_is_logged_with_method_path_status_and_duration,
    a_restarted_worker_keeps_the_rows_and_seeds_nothing_again,
    sigterm_lets_an_in_flight_request_finish_then_exits_cleanly,
}

/// A fresh database on `backend` and a worker `api-7` on it.
fn start(backend: Backend) -> (TestDatabase, ApiServer) {
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-7", &[]);
    (db, server)
}

fn titles(server: &ApiServer) -> Vec<String> {
    let images: Vec<Value> = get_json(&server.url("/images.json"));
    images
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect()
}

fn post(server: &ApiServer, body: &str) -> reqwest::blocking::Response {
    post_form(&server.url("/images.json"), body)
}

/// Asserts a JSON error body `{"error": ...}` and returns the message.
fn error_message(response: reqwest::blocking::Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    let object = body.as_object().expect("an error object");
    assert_eq!(object.len(), 1, "only an error field: {body}");
    body["error"].as_str().expect("a string error").to_string()
}

fn get_lists_the_seeded_images_as_a_json_array_with_ids_in_insertion_order(backend: Backend) {
    let (_db, server) = start(backend);
    let response = client().get(server.url("/images.json")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().unwrap();
    assert!(!text.contains("\n  "), "compact by default: {text}");
    let images: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        images,
        json!([
            {"id": 1, "title": "Sunset", "alt_text": "A warm sunset over the sea", "url": "/images/sunset.svg"},
            {"id": 2, "title": "Mountain", "alt_text": "A snowy mountain under a clear sky", "url": "/images/mountain.svg"},
            {"id": 3, "title": "Cat", "alt_text": "A cat curled up asleep", "url": "/images/cat.svg"},
        ])
    );
}

fn seeded_urls_name_files_that_exist_under_assets(backend: Backend) {
    let (_db, server) = start(backend);
    let images: Vec<Value> = get_json(&server.url("/images.json"));
    for image in images {
        let url = image["url"].as_str().unwrap();
        let path = crate::helpers::assets_dir().join(url.trim_start_matches('/'));
        assert!(
            url.starts_with("/images/") && path.is_file(),
            "{url} -> {}",
            path.display()
        );
    }
}

fn indent_pretty_prints_with_exactly_n_spaces(backend: Backend) {
    let (_db, server) = start(backend);
    for n in [1usize, 2, 4, 10] {
        let text = client()
            .get(server.url(&format!("/images.json?indent={n}")))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let second_line = text.lines().nth(1).unwrap();
        assert_eq!(
            second_line,
            format!("{}{{", " ".repeat(n)),
            "indent={n}:\n{text}"
        );
        let pad = " ".repeat(2 * n);
        let expected_start = format!(
            "[\n{}{{\n{pad}\"id\": 1,\n{pad}\"title\": \"Sunset\",",
            " ".repeat(n)
        );
        assert!(text.starts_with(&expected_start), "indent={n}:\n{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
    let compact = client()
        .get(server.url("/images.json?indent=0"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(compact.trim_end().lines().count(), 1);
}

fn bad_indent_values_are_refused_with_400(backend: Backend) {
    let (_db, server) = start(backend);
    for raw in [
        "-1",
        "",
        "abc",
        "2.5",
        "11",
        "1000000",
        "99999999999999999999",
    ] {
        let response = client()
            .get(server.url(&format!("/images.json?indent={raw}")))
            .send()
            .unwrap();
        let message = error_message(response, StatusCode::BAD_REQUEST);
        assert!(message.contains("indent"), "{raw:?}: {message}");
    }
}

fn post_with_curl_form_content_type_stores_and_returns_the_image(backend: Backend) {
    let (_db, server) = start(backend);
    let response = client()
        .post(server.url("/images.json?indent=2"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(ORIGINAL_POST)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().unwrap();
    assert!(text.starts_with("{\n  \"id\": 4,"), "indented: {text}");
    let stored: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        stored,
        json!({"id": 4, "title": "Cat", "alt_text": "A cool cat",
               "url": "https://images.unsplash.com/photo-1533738363-b7f9aef128ce"})
    );
    assert_eq!(titles(&server), ["Sunset", "Mountain", "Cat", "Cat"]);
}

fn post_accepts_json_and_missing_content_types_and_ignores_unknown_fields(backend: Backend) {
    let (_db, server) = start(backend);
    let with_json = client()
        .post(server.url("/images.json"))
        .json(&json!({"title": "A", "alt_text": "", "url": "/a.svg", "likes": 3}))
        .send()
        .unwrap();
    assert_eq!(with_json.status(), 200);
    assert_eq!(with_json.json::<Value>().unwrap()["id"], 4);
    let without = client()
        .post(server.url("/images.json"))
        .body(r#"{"title": "B", "alt_text": "b", "url": "http://example.com/b.png"}"#)
        .send()
        .unwrap();
    assert_eq!(without.status(), 200);
    assert_eq!(titles(&server), ["Sunset", "Mountain", "Cat", "A", "B"]);
}

fn invalid_images_are_refused_with_400_and_nothing_is_stored(backend: Backend) {
    let (_db, server) = start(backend);
    let long = |n: usize| "é".repeat(n);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"alt_text": "a", "url": "/x"}), "title"),
        (json!({"title": "t", "url": "/x"}), "alt_text"),
        (json!({"title": "t", "alt_text": "a"}), "url"),
        (json!({"title": 1, "alt_text": "a", "url": "/x"}), "title"),
        (
            json!({"title": "t", "alt_text": null, "url": "/x"}),
            "alt_text",
        ),
        (json!({"title": "t", "alt_text": "a", "url": ["/x"]}), "url"),
        (
            json!({"title": "   ", "alt_text": "a", "url": "/x"}),
            "title",
        ),
        (json!({"title": "t", "alt_text": "a", "url": "  "}), "url"),
        (
            json!({"title": "a\u{0}b", "alt_text": "a", "url": "/x"}),
            "title",
        ),
        (
            json!({"title": "t", "alt_text": "a\u{0}", "url": "/x"}),
            "alt_text",
        ),
        (
            json!({"title": long(201), "alt_text": "a", "url": "/x"}),
            "title",
        ),
        (
            json!({"title": "t", "alt_text": long(1001), "url": "/x"}),
            "alt_text",
        ),
        (
            json!({"title": "t", "alt_text": "a", "url": format!("/{}", long(2048))}),
            "url",
        ),
        (
            json!({"title": "t", "alt_text": "a", "url": "javascript:alert(1)"}),
            "url",
        ),
        (
            json!({"title": "t", "alt_text": "a", "url": "data:image/png;base64,AA"}),
            "url",
        ),
        (
            json!({"title": "t", "alt_text": "a", "url": "//evil.example/x.png"}),
            "url",
        ),
        (
            json!({"title": "t", "alt_text": "a", "url": "relative/x.png"}),
            "url",
        ),
        (json!(["t", "a", "/x"]), "object"),
        (json!("just a string"), "object"),
    ];
    for (body, needle) in cases {
        let message = error_message(post(&server, &body.to_string()), StatusCode::BAD_REQUEST);
        assert!(message.contains(needle), "{body}: {message}");
    }
    // The limits count characters, not bytes: 200 two-byte characters pass.
    let ok = post(
        &server,
        &json!({"title": long(200), "alt_text": long(1000), "url": "/x"}).to_string(),
    );
    assert_eq!(ok.status(), 200);
    assert_eq!(titles(&server).len(), 4);
}

fn malformed_json_is_a_400_without_parser_details(backend: Backend) {
    let (_db, server) = start(backend);
    for body in ["", "{", "{\"title\": \"t\",}", "title=t&url=/x", "\u{0}"] {
        let message = error_message(post(&server, body), StatusCode::BAD_REQUEST);
        assert_eq!(message, "request body is not valid JSON", "{body:?}");
    }
    assert_eq!(titles(&server).len(), 3);
}

fn unknown_paths_are_json_404s(backend: Backend) {
    let (_db, server) = start(backend);
    for path in ["/", "/images", "/images.json/1", "/api/images.json"] {
        let response = client().get(server.url(path)).send().unwrap();
        error_message(response, StatusCode::NOT_FOUND);
    }
}

fn wrong_methods_are_json_405s_with_allow(backend: Backend) {
    let (_db, server) = start(backend);
    for method in ["PUT", "DELETE", "PATCH"] {
        let response = client()
            .request(method.parse().unwrap(), server.url("/images.json"))
            .send()
            .unwrap();
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
        error_message(response, StatusCode::METHOD_NOT_ALLOWED);
    }
    let response = client().post(server.url("/health")).send().unwrap();
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("GET")
    );
    error_message(response, StatusCode::METHOD_NOT_ALLOWED);
}

fn bodies_over_64_kib_are_refused_with_413_and_smaller_ones_accepted(backend: Backend) {
    let (_db, server) = start(backend);
    let padded = |size: usize| {
        let base = r#"{"title": "t", "alt_text": "a", "url": "/x", "pad": ""}"#;
        let pad = "p".repeat(size - base.len());
        format!(r#"{{"title": "t", "alt_text": "a", "url": "/x", "pad": "{pad}"}}"#)
    };
    assert_eq!(post(&server, &padded(64 * 1024)).status(), 200);
    let message = error_message(
        post(&server, &padded(64 * 1024 + 1)),
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert!(message.contains("64 KiB"), "{message}");
    assert_eq!(titles(&server).len(), 4);
}

fn database_failures_give_a_generic_500_without_sql_or_paths(backend: Backend) {
    let (db, server) = start(backend);
    db.drop_images_table();
    for response in [
        client().get(server.url("/images.json")).send().unwrap(),
        post(&server, r#"{"title": "t", "alt_text": "a", "url": "/x"}"#),
    ] {
        let message = error_message(response, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(message, "internal server error");
    }
    assert!(
        server.proc.output.contains(db.missing_table_error()),
        "details go to the log"
    );
}

fn a_locked_database_gives_503_with_retry_after_and_no_row(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-1", &["--busy-timeout-ms", "200"]);
    let holder = db.hold_write_lock();
    let response = post(&server, r#"{"title": "t", "alt_text": "a", "url": "/x"}"#);
    assert_eq!(response.headers()["retry-after"], "1");
    let message = error_message(response, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!message.contains("SQL"), "{message}");
    for private in db.private_details() {
        assert!(!message.contains(&private), "{private:?} in {message}");
    }
    holder.release();
    assert_eq!(titles(&server).len(), 3);
    assert_eq!(db.count(), 3, "no row");
}

fn cors_allows_any_origin_by_default_and_answers_preflight(backend: Backend) {
    let (_db, server) = start(backend);
    let response = client()
        .get(server.url("/images.json"))
        .header("origin", "http://127.0.0.1:8082")
        .send()
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.url("/images.json"))
        .header("origin", "http://127.0.0.1:8082")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("content-type"), "{allowed}");
}

fn cors_origin_flag_restricts_to_the_named_origin(backend: Backend) {
    let db = TestDatabase::new(backend);
    let server = ApiServer::start(&db, "api-1", &["--cors-origin", "http://127.0.0.1:8082"]);
    let allowed = client()
        .get(server.url("/images.json"))
        .header("origin", "http://127.0.0.1:8082")
        .send()
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://127.0.0.1:8082"
    );
    let other = client()
        .get(server.url("/images.json"))
        .header("origin", "http://evil.example")
        .send()
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

fn health_reports_worker_and_pid_after_a_database_round_trip(backend: Backend) {
    let (db, server) = start(backend);
    let response = client().get(server.url("/health")).send().unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    assert_eq!(
        body,
        json!({"status": "ok", "worker": "api-7", "pid": server.proc.pid()})
    );
    db.drop_images_table();
    let response = client().get(server.url("/health")).send().unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    error_message(response, StatusCode::SERVICE_UNAVAILABLE);
}

fn every_response_names_its_worker(backend: Backend) {
    let (_db, server) = start(backend);
    let responses = [
        client().get(server.url("/images.json")).send().unwrap(),
        client().get(server.url("/health")).send().unwrap(),
        client().get(server.url("/missing")).send().unwrap(),
        client().delete(server.url("/images.json")).send().unwrap(),
        post(&server, "not json"),
        client()
            .request(reqwest::Method::OPTIONS, server.url("/images.json"))
            .header("origin", "http://x")
            .header("access-control-request-method", "GET")
            .send()
            .unwrap(),
    ];
    for response in responses {
        assert_eq!(
            response.headers()["x-worker"],
            "api-7",
            "{}",
            response.status()
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
}

fn every_request_is_logged_with_method_path_status_and_duration(backend: Backend) {
    let (_db, server) = start(backend);
    client()
        .get(server.url("/images.json?indent=2"))
        .send()
        .unwrap();
    post(&server, "{");
    let output = server.proc.output.clone();
    wait_until(Duration::from_secs(5), "request log lines", || {
        output.contains("GET /images.json 200") && output.contains("POST /images.json 400")
    });
    let line = output
        .lines()
        .into_iter()
        .find(|l| l.contains("GET /images.json 200"))
        .unwrap();
    assert!(line.trim_end().ends_with("ms"), "duration in {line}");
}

fn a_restarted_worker_keeps_the_rows_and_seeds_nothing_again(backend: Backend) {
    let db = TestDatabase::new(backend);
    let first = ApiServer::start(&db, "api-1", &[]);
    post(&first, r#"{"title": "Kept", "alt_text": "", "url": "/k"}"#);
    drop(first);
    let second = ApiServer::start(&db, "api-1", &[]);
    assert_eq!(titles(&second), ["Sunset", "Mountain", "Cat", "Kept"]);
    assert_eq!(db.count(), 4);
}

#[test]
fn the_sqlite_schema_is_versioned_by_user_version_in_wal_mode() {
    let (_dir, db) = temp_db();
    drop(ApiServer::start(&db, "api-1", &[]));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    // Version 2: the images, then the Idempotency-Key table (SPEC §13).
    assert_eq!((version, mode.as_str()), (2, "wal"));
}

fn sigterm_lets_an_in_flight_request_finish_then_exits_cleanly(backend: Backend) {
    let db = TestDatabase::new(backend);
    let mut server = ApiServer::start(&db, "api-1", &["--busy-timeout-ms", "10000"]);
    let (holder, in_flight) = post_in_flight_on(&db, server.url("/images.json"), server.port);
    let output = server.proc.output.clone();
    server.proc.signal(nix::sys::signal::Signal::SIGTERM);
    wait_until(Duration::from_secs(5), "the shutdown log line", || {
        output.contains("SIGTERM received")
    });
    holder.release();
    assert_eq!(in_flight.join().unwrap().unwrap(), 200);
    let status = server
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("exit after drain");
    assert!(status.success(), "{status}");
    assert_eq!(db.count(), 4, "the drained POST is stored");
}
