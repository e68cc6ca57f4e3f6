//! One HTTP/1.1 exchange with one endpoint, its failure sorted into an
//! [`Outcome`] for the failover rules: a fresh connection per request (no
//! pool: a kept-alive connection to a front door that has just died would
//! fail in ways that look like a sent request), hyper's client over a tokio
//! `TcpStream`, a connect timeout and a timeout on the whole exchange.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::rt::TokioIo;

use super::endpoint::Endpoint;
use super::failover::{Answer, NoAnswer, NotConnected, Outcome};

/// How long to wait for a connection, and then for the whole answer.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// A request, independent of the endpoint it goes to: sent the same bytes
/// to each (a keyed POST must be repeated byte for byte).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: hyper::Method,
    /// Under the API's base: `/images.json?indent=2`.
    pub path: String,
    pub headers: Vec<(header::HeaderName, String)>,
    pub body: Bytes,
}

/// Sends `request` to `endpoint` on `runtime`.
pub fn send(
    runtime: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    request: &Request,
    timeouts: Timeouts,
) -> Outcome {
    runtime.block_on(exchange(endpoint, request, timeouts))
}

async fn exchange(endpoint: &Endpoint, request: &Request, timeouts: Timeouts) -> Outcome {
    let connect = tokio::net::TcpStream::connect((endpoint.host(), endpoint.port()));
    let stream = match tokio::time::timeout(timeouts.connect, connect).await {
        Err(_) => {
            return Outcome::NotConnected(NotConnected::ConnectTimeout(timeouts.connect));
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Outcome::NotConnected(NotConnected::Refused);
        }
        Ok(Err(error)) => {
            return Outcome::NotConnected(NotConnected::Unreachable(error.to_string()));
        }
        Ok(Ok(stream)) => stream,
    };
    match tokio::time::timeout(timeouts.request, over(stream, endpoint, request)).await {
        Err(_) => Outcome::NoAnswer(NoAnswer::Timeout(timeouts.request)),
        Ok(Err(error)) => Outcome::NoAnswer(NoAnswer::Broken(error)),
        Ok(Ok(answer)) => Outcome::Answered(answer),
    }
}

/// The exchange on a connected stream; an error in words.
async fn over(
    stream: tokio::net::TcpStream,
    endpoint: &Endpoint,
    request: &Request,
) -> Result<Answer, String> {
    let said = |error: hyper::Error| words(&error);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(said)?;
    let connection = tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(request.method.clone())
        .uri(endpoint.target(&request.path))
        .header(header::HOST, endpoint.authority())
        .header(
            header::USER_AGENT,
            concat!("gallery-client/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "application/json")
        .header(header::CONNECTION, "close");
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let outgoing = builder
        .body(Full::new(request.body.clone()))
        .map_err(|e| format!("cannot make the request: {e}"))?;
    let response = sender.send_request(outgoing).await.map_err(said)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the answer was cut off: {}", words(&e)))?
        .to_bytes();
    connection.abort();
    Ok(Answer {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or(""),
        body: body.to_vec(),
    })
}

/// An error and its causes on one line: hyper's own words are terse
/// ("connection error"); the cause says which ("Connection reset by peer").
fn words(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
