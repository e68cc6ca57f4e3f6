//! Running the stack as a service: systemd's readiness protocol
//! (`NOTIFY_SOCKET` datagrams, as `Type=notify` reads them).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::helpers::supervisor::Supervisor;
use crate::helpers::{Proc, client};

#[test]
fn ready_is_notified_only_once_the_front_door_answers_and_stopping_at_stop() {
    let dir = Supervisor::temp_dir();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut command = Supervisor::command(dir.path(), &["--api-workers", "2"]);
    command.env("NOTIFY_SOCKET", &socket_path);
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let port = &args[args.iter().position(|a| a == "--port").unwrap() + 1];
    let front = format!("http://127.0.0.1:{port}");
    let mut supervisor = Proc::spawn("supervisor", command);

    let mut buffer = [0u8; 256];
    let n = socket
        .recv(&mut buffer)
        .expect("a datagram from the supervisor");
    let first = String::from_utf8_lossy(&buffer[..n]).into_owned();
    // The moment READY=1 is read, the whole site answers.
    let page = client().get(format!("{front}/")).send().unwrap();
    let api = client().get(format!("{front}/api/health")).send().unwrap();
    assert_eq!(first, "READY=1\n");
    assert_eq!((page.status().as_u16(), api.status().as_u16()), (200, 200));
    assert!(
        supervisor.output.contains("gallery is up"),
        "{}",
        supervisor.output.text()
    );

    supervisor.signal(nix::sys::signal::Signal::SIGTERM);
    let n = socket.recv(&mut buffer).expect("STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buffer[..n]), "STOPPING=1\n");
    let status = supervisor
        .wait_timeout(Duration::from_secs(30))
        .expect("the supervisor stops");
    assert!(status.success(), "{}", supervisor.output.text());
}

#[test]
fn one_line_per_request_at_the_default_level() {
    let _heavy = crate::helpers::heavy();
    const REQUESTS: usize = 2000;
    let stack = Supervisor::start(&[]);
    let before = stack.proc.output.lines().len();
    let ab = std::process::Command::new("ab")
        .args(["-q", "-n", &REQUESTS.to_string(), "-c", "10"])
        .arg(stack.url("/api/images.json"))
        .output()
        .expect("ab (apache2-utils) runs");
    let report = String::from_utf8_lossy(&ab.stdout);
    assert!(ab.status.success(), "{report}");
    assert!(report.contains("Failed requests:        0"), "{report}");
    // Every access line has arrived once the last request's line has.
    crate::helpers::wait_until(Duration::from_secs(10), "the access lines", || {
        stack
            .proc
            .output
            .lines()
            .iter()
            .filter(|l| l.contains("\"GET /api/images.json HTTP/1.0\" 200"))
            .count()
            >= REQUESTS
    });
    let lines = stack.proc.output.lines();
    let added = &lines[before..];
    let per_request = added.len() as f64 / REQUESTS as f64;
    eprintln!(
        "{} lines for {REQUESTS} requests ({per_request:.3} per request)",
        added.len()
    );
    assert!(
        per_request <= 1.1,
        "{per_request:.2} lines per request, e.g.:\n{}",
        added[..20.min(added.len())].join("\n")
    );
}

#[test]
fn an_nginx_include_joins_the_server_block_and_a_bad_one_fails_the_start() {
    let dir = Supervisor::temp_dir();
    let good = dir.path().join("extra.conf");
    std::fs::write(
        &good,
        "location = /extra { default_type text/plain; return 200 \"included\\n\"; }\n",
    )
    .unwrap();
    let stack = Supervisor::start(&[
        "--api-workers",
        "1",
        "--nginx-include",
        good.to_str().unwrap(),
    ]);
    let extra = client().get(stack.url("/extra")).send().unwrap();
    assert_eq!(extra.status(), 200);
    assert_eq!(extra.text().unwrap(), "included\n");
    assert_eq!(stack.get_status("/api/health"), 200);
    drop(stack);

    let dir = Supervisor::temp_dir();
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "no_such_directive on;\n").unwrap();
    let command = Supervisor::command(
        dir.path(),
        &[
            "--api-workers",
            "1",
            "--nginx-include",
            bad.to_str().unwrap(),
        ],
    );
    let (status, output) = Proc::spawn("supervisor", command).finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{output}");
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{output}");
    assert!(
        errors[0].contains("unknown directive \"no_such_directive\"")
            && errors[0].contains("bad.conf"),
        "{output}"
    );

    let missing = Supervisor::command(dir.path(), &["--nginx-include", "/nonexistent/tls.conf"]);
    let (status, output) = Proc::spawn("supervisor", missing).finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("error: --nginx-include /nonexistent/tls.conf: No such file"),
        "{output}"
    );
}
