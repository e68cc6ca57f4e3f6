//! Command-line flags of the binaries (clap derive); the doc comments are
//! the `--help` text.
//!
//! The servers' flags are also how the supervisor starts them: it builds an
//! [`ApiServerArgs`] or [`StaticServerArgs`] and turns it into a command
//! line with `to_args`, so a child's argv comes from the same definitions
//! clap parses (a unit test parses it back).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::static_files::Origin;
use crate::supervisor::policy;

/// One API worker: the JSON image API over a SQLite file.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
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
    /// Never create, migrate or seed the database: answer 503 until a usable
    /// one is at the path (the supervisor, which creates it, passes this).
    #[arg(long)]
    pub existing_database: bool,
}

impl ApiServerArgs {
    /// The arguments of a bare `api-server`: every default.
    pub fn try_parse_defaults() -> Result<ApiServerArgs, clap::Error> {
        ApiServerArgs::try_parse_from(["api-server"])
    }

    /// The command line that parses back into these arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            self.bind.to_string().into(),
            "--database".into(),
            self.database.clone().into(),
            "--name".into(),
            self.name.clone().into(),
            "--busy-timeout-ms".into(),
            self.busy_timeout_ms.to_string().into(),
        ];
        for origin in &self.cors_origin {
            args.extend(["--cors-origin".into(), origin.into()]);
        }
        if self.existing_database {
            args.push("--existing-database".into());
        }
        args
    }
}

/// The static file server for the gallery page and its images.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
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
    /// Origin of an API the page may call besides its own, as in
    /// `/?api=ORIGIN` (repeatable; e.g. http://127.0.0.1:8081). The page's
    /// Content-Security-Policy refuses every other origin.
    #[arg(long = "api-origin", value_name = "ORIGIN")]
    pub api_origin: Vec<Origin>,
}

impl StaticServerArgs {
    /// The command line that parses back into these arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            self.bind.to_string().into(),
            "--path".into(),
            self.path.clone().into(),
        ];
        for origin in &self.api_origin {
            args.extend(["--api-origin".into(), origin.to_string().into()]);
        }
        args
    }
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
    /// Replace every child with a fresh process of the program now on disk,
    /// one at a time, and reload nginx in place (deploys new code).
    Reload,
    /// Replace one child (static, api-K or nginx); a failed child is started afresh.
    Restart {
        /// The child: static, api-K or nginx.
        name: String,
    },
    /// Run N API workers: add or remove workers without a failed request.
    Scale {
        /// The number of API workers wanted.
        #[arg(value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
    },
    /// Stop the running stack, like SIGTERM.
    Stop,
}

/// A duration given as seconds (`2`, `0.5`) or with a unit (`500ms`, `2s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (say 2, 0.5, 2s or 500ms)"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("{text:?} is not a usable duration"))
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
    /// Directory for what the supervisor generates (nginx.conf, state.json, control.sock, nginx temp files).
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
    /// How long a stopping child may finish in-flight requests before SIGKILL.
    #[arg(long, global = true, default_value = "10", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Duration,
    /// How long a new child may take to answer before it is killed.
    #[arg(long, global = true, default_value = "30", value_parser = parse_duration, value_name = "DURATION")]
    pub start_timeout: Duration,
    /// A child up for less than this after becoming ready exited "unstably":
    /// only such exits back off and count toward --max-restarts.
    #[arg(long, global = true, default_value = policy::DEFAULT_MIN_UPTIME, value_parser = parse_duration, value_name = "DURATION")]
    pub min_uptime: Duration,
    /// Unstable exits within --restart-window that mark a child failed.
    #[arg(long, global = true, default_value_t = policy::DEFAULT_MAX_RESTARTS, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_restarts: u32,
    /// The window for --max-restarts.
    #[arg(long, global = true, default_value = policy::DEFAULT_RESTART_WINDOW, value_parser = parse_duration, value_name = "DURATION")]
    pub restart_window: Duration,
    /// How long a failed child rests before it is tried again (doubling up to 10 min).
    #[arg(long, global = true, default_value = policy::DEFAULT_COOLDOWN, value_parser = parse_duration, value_name = "DURATION")]
    pub cooldown: Duration,
    /// How often the watchdog checks each server (a worker's /health, the static server's /).
    #[arg(long, global = true, default_value = "1", value_parser = parse_duration, value_name = "DURATION")]
    pub health_interval: Duration,
    /// How long one health check may take before it counts as missed.
    #[arg(long, global = true, default_value = "1", value_parser = parse_duration, value_name = "DURATION")]
    pub health_timeout: Duration,
    /// Missed health checks in a row after which a child is killed and restarted.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub health_misses: u32,
    /// The account the API and static servers run as when the supervisor
    /// runs as root (default: nobody; `root` keeps them root).
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_command_line_parses_back_into_the_same_arguments() {
        let args = ApiServerArgs {
            port: 9001,
            bind: "::1".parse().unwrap(),
            database: "/tmp/x y.db".into(),
            name: "api-7".into(),
            cors_origin: vec!["http://a".into(), "http://b".into()],
            busy_timeout_ms: 1234,
            existing_database: true,
        };
        let mut argv = vec![OsString::from("api-server")];
        argv.extend(args.to_args());
        assert_eq!(ApiServerArgs::try_parse_from(argv).unwrap(), args);
    }

    #[test]
    fn a_static_command_line_parses_back_into_the_same_arguments() {
        let args = StaticServerArgs {
            port: 0,
            bind: "0.0.0.0".parse().unwrap(),
            path: "/srv/assets".into(),
            api_origin: vec![
                "http://127.0.0.1:8081".parse().unwrap(),
                "https://api.example.com".parse().unwrap(),
            ],
        };
        let mut argv = vec![OsString::from("static-server")];
        argv.extend(args.to_args());
        assert_eq!(StaticServerArgs::try_parse_from(argv).unwrap(), args);
    }

    #[test]
    fn durations_take_seconds_or_units() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
