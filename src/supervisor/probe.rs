//! Probes: "does this process answer?" and "is this child still alive?".
//!
//! A TCP connect proves nothing for our servers: the supervisor holds their
//! sockets, so the kernel accepts a connection before any process does. And
//! during a reload two processes share one socket, so an answer may come
//! from the old one. Readiness therefore sends a real HTTP request carrying
//! [`PROBE_HEADER`] and waits for an answer that names the new process's
//! pid in [`PID_HEADER`] (both servers add it to probed responses; see
//! `crate::http`). nginx is ready when it answers HTTP at all: its master
//! binds the port before its workers exist.
//!
//! The watchdog's health check is one request with a timeout: any HTTP
//! answer counts, so a worker whose database is briefly down (503) is not
//! killed; only a hung or deadlocked one is.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use crate::plan::Role;

pub use crate::http::{PID_HEADER, PROBE_HEADER};

/// Probes every 10 ms, forever, until the process `pid` itself answers on
/// `address` (the caller bounds the wait).
pub async fn until_ready(role: Role, address: SocketAddr, pid: u32) {
    loop {
        let ready = match role {
            // Any HTTP answer: the port is bound and a worker process serves.
            Role::Nginx => http_get(address, "/", Duration::from_secs(1))
                .await
                .is_some(),
            _ => {
                let answer = http_get(address, check_path(role), Duration::from_secs(1)).await;
                answer.is_some_and(|(_, answered_by)| answered_by == Some(pid))
            }
        };
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One health check: true when the child answered HTTP within `timeout`.
pub async fn healthy(role: Role, address: SocketAddr, timeout: Duration) -> bool {
    match role {
        Role::Nginx => tcp_open(address, timeout).await,
        _ => http_get(address, check_path(role), timeout).await.is_some(),
    }
}

fn check_path(role: Role) -> &'static str {
    match role {
        Role::Api => "/health",
        _ => "/",
    }
}

/// `GET path` within `timeout`: the status and the pid that answered.
async fn http_get(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<(u16, Option<u32>)> {
    tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, address.to_string())
            .header(PROBE_HEADER, "1")
            .body(Empty::<bytes::Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let pid = response
            .headers()
            .get(PID_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Some((response.status().as_u16(), pid))
    })
    .await
    .ok()
    .flatten()
}

/// The body of `GET path` (with the probe header) from `address`, if it
/// answers 200 within `timeout`.
pub async fn get_body(address: SocketAddr, path: &str, timeout: Duration) -> Option<bytes::Bytes> {
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(address).await.ok()?;
        get_over(stream, &address.to_string(), path).await
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

/// The same over a unix socket (nginx's `stub_status`).
pub async fn get_body_unix(
    socket: &std::path::Path,
    path: &str,
    timeout: Duration,
) -> Option<bytes::Bytes> {
    let fetch = async {
        let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
        get_over(stream, "localhost", path).await
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

async fn get_over<S>(stream: S, host: &str, path: &str) -> Option<bytes::Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(PROBE_HEADER, "1")
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if response.status() != hyper::StatusCode::OK {
        return None;
    }
    Some(response.into_body().collect().await.ok()?.to_bytes())
}

/// A TCP connect succeeds within `timeout` (for nginx, which binds its own port).
async fn tcp_open(address: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}
