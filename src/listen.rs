//! Getting a listening socket: inherited from a supervisor (systemd's
//! `LISTEN_FDS`/`LISTEN_PID` convention) or bound here.
//!
//! A socket that survives a server restart is what lets the supervisor
//! restart a worker without losing queued connections; standalone runs just
//! bind `--bind:--port`. A port already in use is reported by number with a
//! hint, never as a bare OS error.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};

/// Why no listener could be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "port {port} on {ip} is already in use (stop whatever holds it, or choose another port)"
    )]
    InUse { ip: IpAddr, port: u16 },
    #[error("cannot listen on {ip}:{port}: {source}")]
    Bind {
        ip: IpAddr,
        port: u16,
        source: io::Error,
    },
    #[error("LISTEN_FDS was set but fd 3 is not a usable TCP listening socket: {0}")]
    Inherited(io::Error),
}

/// Binds `ip:port` (port 0 picks a free one) with a long accept queue
/// (`SOMAXCONN`, capped by the kernel's `net.core.somaxconn`): with the
/// default of 128, a burst of connections faster than the server accepts
/// has its SYNs dropped and waits a second for the retransmission.
pub fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, ListenError> {
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            ListenError::InUse { ip, port }
        } else {
            ListenError::Bind { ip, port, source }
        }
    })?;
    // Listening again on a listening socket only changes its backlog.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN).map_err(|errno| {
        ListenError::Bind {
            ip,
            port,
            source: errno.into(),
        }
    })?;
    Ok(listener)
}

/// The inherited socket if `LISTEN_FDS` hands us one, else a fresh bind.
pub fn listener(ip: IpAddr, port: u16) -> Result<TcpListener, ListenError> {
    let mut inherited = listenfd::ListenFd::from_env();
    if inherited.len() > 0
        && let Some(listener) = inherited
            .take_tcp_listener(0)
            .map_err(ListenError::Inherited)?
    {
        return Ok(listener);
    }
    bind(ip, port)
}
