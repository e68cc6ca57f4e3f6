//! Command-line flags of the binaries (clap derive); the doc comments are
//! the `--help` text.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

/// One API worker: the JSON image API over a SQLite file.
#[derive(Debug, Clone, Parser)]
#[command(name = "api-server", version)]
pub struct ApiServerArgs {
    /// Port to listen on (ignored when a socket is inherited via LISTEN_FDS).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// SQLite database: sqlite://PATH, sqlite:PATH, file:PATH or a plain path.
    #[arg(long, env = "DATABASE_URL", default_value = "gallery.db")]
    pub database: String,
    /// Worker name, sent back in the X-Worker header and in /health.
    #[arg(long, default_value = "api")]
    pub name: String,
    /// Origin allowed to call the API from a browser (repeatable; default: any, `*`).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// How long a write waits for another process's lock, in milliseconds, before a 503.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub busy_timeout_ms: u64,
}

/// The static file server for the gallery page and its images.
#[derive(Debug, Clone, Parser)]
#[command(name = "static-server", version)]
pub struct StaticServerArgs {
    /// Port to listen on (ignored when a socket is inherited via LISTEN_FDS).
    #[arg(long, default_value_t = 8082)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Directory to serve.
    #[arg(long, default_value = "assets")]
    pub path: PathBuf,
}
