//! Readiness probes: "does this child answer?" A TCP connect is not enough
//! for our servers — the supervisor holds their sockets, so the kernel
//! accepts a connection before any process does — so the probe sends a real
//! HTTP request (hyper's client) and waits for a status.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::plan::Role;

/// Probes a child of `role` on `address` every 10 ms until it answers
/// (true) or `timeout` passes (false): our servers must answer HTTP
/// (`/health` for a worker), nginx must accept a connection.
pub async fn until_ready(role: Role, address: SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let attempt = Duration::from_secs(1);
    loop {
        let ready = match role {
            Role::Api => http_ok(address, "/health", attempt).await,
            Role::Static => http_ok(address, "/", attempt).await,
            Role::Nginx => tcp_open(address, attempt).await,
        };
        if ready {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` answered with a status below 500 within `timeout`.
async fn http_ok(address: SocketAddr, path: &str, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, http_status(address, path))
        .await
        .ok()
        .flatten()
        .is_some_and(|status| status < 500)
}

async fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    Some(response.status().as_u16())
}

/// A TCP connect succeeds within `timeout` (for nginx, which binds its own port).
async fn tcp_open(address: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}
