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
