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

/// Starts and supervises the whole gallery stack: the static server, N API
/// workers on one SQLite file, and nginx in front.
#[derive(Debug, Clone, Parser)]
#[command(name = "gallery-supervisor", version)]
pub struct SupervisorArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(subcommand)]
    pub command: Option<SupervisorCommand>,
}

/// What to do instead of running the stack.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SupervisorCommand {
    /// Show the running stack (from state.json in the run directory).
    Status {
        /// Print the raw state.json instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the nginx config the supervisor would generate for these flags.
    NginxConfig,
}

/// The stack's settings; accepted before or after a subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Front-door port (nginx; 0: any free port).
    #[arg(long, global = true, default_value_t = 8080)]
    pub port: u16,
    /// Static server port (0: any free port).
    #[arg(long, global = true, default_value_t = 8082)]
    pub static_port: u16,
    /// Port of API worker 1; worker k listens on base + k - 1 (0: any free ports).
    #[arg(long, global = true, default_value_t = 8083)]
    pub api_base_port: u16,
    /// Number of API workers.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub api_workers: u16,
    /// Address every process binds.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// SQLite database: sqlite://PATH, sqlite:PATH, file:PATH or a plain path.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "gallery.db"
    )]
    pub database: String,
    /// Directory of the gallery page and its images.
    #[arg(long, global = true, default_value = "assets")]
    pub assets: PathBuf,
    /// Directory for what the supervisor generates (nginx.conf, state.json, nginx temp files).
    #[arg(long, global = true, default_value = ".gallery")]
    pub run_dir: PathBuf,
    /// The nginx binary (a name looked up on PATH and in /usr/sbin, or a path).
    #[arg(long, global = true, default_value = "nginx")]
    pub nginx: PathBuf,
    /// The API worker program (default: `api-server` next to this binary).
    #[arg(long, global = true, value_name = "PATH")]
    pub api_server: Option<PathBuf>,
    /// The static server program (default: `static-server` next to this binary).
    #[arg(long, global = true, value_name = "PATH")]
    pub static_server: Option<PathBuf>,
    /// Origin allowed to call the API from a browser (repeatable; default: any).
    #[arg(long = "cors-origin", global = true, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Seconds a stopping child gets to finish in-flight requests before SIGKILL.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS")]
    pub grace_period: u64,
    /// A child that exits this many times within --restart-window is marked failed.
    #[arg(long, global = true, default_value_t = 5, value_name = "N")]
    pub max_restarts: u32,
    /// The window for --max-restarts, in seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub restart_window: u64,
}
