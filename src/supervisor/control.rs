//! The control socket, `RUN_DIR/control.sock` (SPEC §9), and its client.
//!
//! Protocol: one JSON line each way. The client sends a request,
//! `{"command":"reload"}`, `{"command":"restart","name":"api-2"}`,
//! `{"command":"scale","workers":5}` or `{"command":"stop"}`; the supervisor
//! answers once the outcome is known with `{"ok":true|false,"message":"..."}`
//! and closes the connection. The socket is created mode 0600 (bound under
//! a temporary name, restricted, then renamed into place) and removed when
//! the supervisor stops.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::core::Command;

pub const SOCKET_FILE: &str = "control.sock";

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Reload,
    Restart { name: String },
    Scale { workers: u16 },
    Stop,
}

impl Request {
    pub fn command(&self) -> Command {
        match self {
            Request::Reload => Command::Reload,
            Request::Restart { name } => Command::Restart(name.clone()),
            Request::Scale { workers } => Command::Scale(*workers),
            Request::Stop => Command::Stop,
        }
    }
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
}

/// No supervisor listens on the run directory (the commands exit 2).
#[derive(Debug, thiserror::Error)]
#[error("no gallery-supervisor is running with run directory {}", .0.display())]
pub struct NotRunning(pub PathBuf);

/// The supervisor answered that the command failed (the commands exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_FILE)
}

/// A request received, with the way to answer it.
pub struct Incoming {
    pub command: Command,
    pub respond: oneshot::Sender<Response>,
}

/// Binds the control socket (mode 0600), replacing a stale one.
pub fn bind(run_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let final_path = path(run_dir);
    let temp = run_dir.join(format!(".{SOCKET_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = tokio::net::UnixListener::bind(&temp)
        .with_context(|| format!("cannot create the control socket {}", final_path.display()))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&temp, &final_path)?;
    Ok(listener)
}

/// Accepts connections forever, handing each request to `inbox`. Each
/// connection holds a clone of `open` until its answer is written, so the
/// supervisor can let the last answers ("stopped") go out before it exits.
pub async fn serve(
    listener: tokio::net::UnixListener,
    inbox: mpsc::UnboundedSender<Incoming>,
    open: std::sync::Arc<()>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(stream, inbox.clone(), open.clone()));
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    inbox: mpsc::UnboundedSender<Incoming>,
    _open: std::sync::Arc<()>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::io::BufReader::new(read.take(4096))
        .read_line(&mut line)
        .await;
    let response = match read
        .ok()
        .and_then(|_| serde_json::from_str::<Request>(&line).ok())
    {
        None => Response {
            ok: false,
            message: format!("not a control request: {:?}", line.trim()),
        },
        Some(request) => {
            let (respond, outcome) = oneshot::channel();
            let sent = inbox.send(Incoming {
                command: request.command(),
                respond,
            });
            match (sent, outcome.await) {
                (Ok(()), Ok(response)) => response,
                _ => Response {
                    ok: false,
                    message: "the supervisor stopped before answering".into(),
                },
            }
        }
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Sends `request` to the supervisor of `run_dir` and waits for its answer.
pub fn send(run_dir: &Path, request: &Request) -> anyhow::Result<String> {
    let socket = path(run_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(NotRunning(run_dir.to_path_buf()).into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach {}", socket.display())),
    };
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    anyhow::ensure!(
        !line.is_empty(),
        "the supervisor closed the connection without an answer"
    );
    let response: Response =
        serde_json::from_str(&line).context("the supervisor's answer is not a control response")?;
    if response.ok {
        Ok(response.message)
    } else {
        Err(Refused(response.message).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_each() {
        let cases = [
            (Request::Reload, r#"{"command":"reload"}"#),
            (
                Request::Restart {
                    name: "api-2".into(),
                },
                r#"{"command":"restart","name":"api-2"}"#,
            ),
            (
                Request::Scale { workers: 5 },
                r#"{"command":"scale","workers":5}"#,
            ),
            (Request::Stop, r#"{"command":"stop"}"#),
        ];
        for (request, text) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), request);
        }
    }

    #[test]
    fn a_missing_socket_means_no_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let error = send(dir.path(), &Request::Reload).unwrap_err();
        assert!(error.downcast_ref::<NotRunning>().is_some(), "{error}");
    }
}
