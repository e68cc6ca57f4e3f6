//! Command-line flags of the binaries (clap derive); the doc comments are
//! the `--help` text.
//!
//! The servers' flags are also how the supervisor starts them: it builds an
//! [`ApiServerArgs`] or [`StaticServerArgs`] and turns it into a command
//! line with `to_args`, so a child's argv comes from the same definitions
//! clap parses (a unit test parses it back).
//!
//! [`Invocation`] parses any of the three: it adds `--log-level` (one
//! definition for all three binaries), refuses flags given before a
//! subcommand that does not use them, and remembers where each value came
//! from, so that an error can name the flag or environment variable.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use clap::parser::ValueSource;

use crate::plan::{HostRole, LbMethod, Upstream};
use crate::static_files::Origin;
use crate::store::Synchronous;
use crate::supervisor::policy;
use clap::ValueEnum;

/// One API worker: the JSON image API over an SQLite file or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "api-server", version)]
pub struct ApiServerArgs {
    /// Port to listen on (ignored when a socket is inherited via LISTEN_FDS).
    #[arg(long, default_value_t = 8081)]
    pub port: u16,
    /// Address to bind: an IP address or a host name (localhost: 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host, value_name = "ADDRESS")]
    pub bind: IpAddr,
    /// The database: an SQLite file (sqlite://PATH, sqlite:PATH, file:PATH
    /// or a plain path), or PostgreSQL
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or postgresql://; a
    /// URL with a password is better given in DATABASE_URL than here, where
    /// `ps` shows it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "gallery.db",
        value_name = "PATH|URL"
    )]
    pub database: String,
    /// Worker name, sent back in the X-Worker header and in /health.
    #[arg(long, default_value = "api")]
    pub name: String,
    /// Origin allowed to call the API from a browser (repeatable; default: any, `*`).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// How long a request waits for another process's lock (on PostgreSQL:
    /// `lock_timeout`), or for a free database connection, in milliseconds,
    /// before a 503.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub busy_timeout_ms: u64,
    /// Never create, migrate or seed the database: answer 503 until a usable
    /// one is at the path, or the PostgreSQL server can be reached (the
    /// supervisor, which creates and migrates it, passes this).
    #[arg(long)]
    pub existing_database: bool,
    /// Create, migrate and seed the database (an SQLite file: in WAL mode),
    /// then exit without serving: 0 when it is ready, else one error line
    /// and 1. The supervisor runs this before it starts any worker, so that
    /// it never opens the database itself.
    #[arg(long, conflicts_with = "existing_database")]
    pub prepare_database: bool,
    /// Do not count requests for the supervisor's /metrics (for measuring
    /// what counting costs; the supervisor never passes it).
    #[arg(long)]
    pub no_request_stats: bool,
    /// When a write is acknowledged: `full`, once fsynced (it survives a
    /// power loss; concurrent writes share one fsync), or `normal`, faster,
    /// surviving a crash of any process but not a power loss.
    #[arg(long, value_enum, default_value_t = Synchronous::Full, value_name = "MODE")]
    pub synchronous: Synchronous,
    /// Threads serving requests: 0 is one per CPU core; 1 serves
    /// everything on one thread. The supervisor gives each server its share
    /// of the cores (one thread each when there are more servers than cores).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub threads: u16,
    /// Log each request at debug level, not info: behind nginx, whose access
    /// line says the same and names the worker (the supervisor and the
    /// Procfile pass this). Server errors (5xx) are always logged.
    #[arg(long)]
    pub quiet_requests: bool,
}

impl ApiServerArgs {
    /// The arguments of a bare `api-server`: every default.
    pub fn try_parse_defaults() -> Result<ApiServerArgs, clap::Error> {
        ApiServerArgs::try_parse_from(["api-server"])
    }

    /// Whether `database` may hold a secret (a PostgreSQL URL, with its
    /// password): it is then passed in the environment, never as an argument.
    fn database_is_secret(&self) -> bool {
        matches!(
            crate::store::parse_database_location(&self.database),
            Ok(crate::store::Location::Postgres(_))
        )
    }

    /// The command line that, with [`ApiServerArgs::to_env`], parses back
    /// into these arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            self.bind.to_string().into(),
        ];
        if !self.database_is_secret() {
            args.extend(["--database".into(), self.database.clone().into()]);
        }
        args.extend([
            "--name".into(),
            self.name.clone().into(),
            "--busy-timeout-ms".into(),
            self.busy_timeout_ms.to_string().into(),
            "--threads".into(),
            self.threads.to_string().into(),
        ]);
        for origin in &self.cors_origin {
            args.extend(["--cors-origin".into(), origin.into()]);
        }
        if self.existing_database {
            args.push("--existing-database".into());
        }
        if self.prepare_database {
            args.push("--prepare-database".into());
        }
        if self.quiet_requests {
            args.push("--quiet-requests".into());
        }
        if self.no_request_stats {
            args.push("--no-request-stats".into());
        }
        args.extend([
            "--synchronous".into(),
            self.synchronous
                .to_possible_value()
                .expect("named")
                .get_name()
                .into(),
            "--log-level".into(),
            LogLevel::for_servers().to_string().into(),
        ]);
        args
    }

    /// The environment that goes with [`ApiServerArgs::to_args`]: a
    /// PostgreSQL URL as `DATABASE_URL`, so that its password is not in the
    /// child's argument list, which every user of the machine can read
    /// (`ps`, `/proc/PID/cmdline`); the environment only its own account.
    pub fn to_env(&self) -> Vec<(OsString, OsString)> {
        if self.database_is_secret() {
            vec![("DATABASE_URL".into(), self.database.clone().into())]
        } else {
            Vec::new()
        }
    }
}

/// The static file server for the gallery page and its images.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "static-server", version)]
pub struct StaticServerArgs {
    /// Port to listen on (ignored when a socket is inherited via LISTEN_FDS).
    #[arg(long, default_value_t = 8082)]
    pub port: u16,
    /// Address to bind: an IP address or a host name (localhost: 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host, value_name = "ADDRESS")]
    pub bind: IpAddr,
    /// Directory of the gallery page and its images (also: --path).
    #[arg(
        long = "assets",
        alias = "path",
        default_value = "assets",
        value_name = "DIR"
    )]
    pub path: PathBuf,
    /// Origin of an API the page may call besides its own, as in
    /// `/?api=ORIGIN` (repeatable; e.g. http://127.0.0.1:8081). The page's
    /// Content-Security-Policy refuses every other origin.
    #[arg(long = "api-origin", value_name = "ORIGIN")]
    pub api_origin: Vec<Origin>,
    /// Threads serving requests: 0 is one per CPU core; 1 serves
    /// everything on one thread. The supervisor gives each server its share
    /// of the cores (one thread each when there are more servers than cores).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub threads: u16,
    /// Log each request at debug level, not info: behind nginx, whose access
    /// line says the same (the supervisor and the Procfile pass this).
    /// Server errors (5xx) are always logged.
    #[arg(long)]
    pub quiet_requests: bool,
}

impl StaticServerArgs {
    /// The command line that parses back into these arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--port".into(),
            self.port.to_string().into(),
            "--bind".into(),
            self.bind.to_string().into(),
            "--assets".into(),
            self.path.clone().into(),
            "--threads".into(),
            self.threads.to_string().into(),
        ];
        for origin in &self.api_origin {
            args.extend(["--api-origin".into(), origin.to_string().into()]);
        }
        if self.quiet_requests {
            args.push("--quiet-requests".into());
        }
        args.extend([
            "--log-level".into(),
            LogLevel::for_servers().to_string().into(),
        ]);
        args
    }
}

/// Starts and supervises the whole gallery stack: the static server, N API
/// workers on one SQLite file or PostgreSQL database, and nginx in front.
#[derive(Debug, Clone, Parser)]
#[command(name = "gallery-supervisor", version)]
pub struct SupervisorArgs {
    /// Directory for what the supervisor generates (nginx.conf, state.json,
    /// control.sock, nginx temp files); also accepted after a subcommand.
    #[arg(long, default_value = ".gallery", value_name = "DIR")]
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(subcommand)]
    pub command: Option<SupervisorCommand>,
}

impl SupervisorArgs {
    /// The run directory: `--run-dir` after the subcommand's name, else
    /// before it (or the default).
    pub fn run_dir(&self) -> &std::path::Path {
        let after = match &self.command {
            Some(
                SupervisorCommand::Status { at, .. }
                | SupervisorCommand::Reload(at)
                | SupervisorCommand::Restart { at, .. }
                | SupervisorCommand::Scale { at, .. }
                | SupervisorCommand::Stop(at),
            ) => at.run_dir.as_deref(),
            Some(SupervisorCommand::NginxConfig { .. }) | None => None,
        };
        after.unwrap_or(&self.run_dir)
    }
}

/// What to do instead of running the stack. Each takes only the flags it
/// uses, after its name; `--run-dir` may come before it too.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SupervisorCommand {
    /// Show the running stack (from state.json in the run directory).
    Status {
        /// Print the raw state.json instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: RunDir,
    },
    /// Print the nginx config the supervisor would generate for these flags.
    NginxConfig {
        #[command(flatten)]
        plan: PlanArgs,
        /// The workers' database, as the supervisor is given it: with a
        /// PostgreSQL URL POSTs are balanced over every worker (default:
        /// a SQLite file, whose POSTs go to one worker).
        #[arg(long, env = "DATABASE_URL", value_name = "URL")]
        database: Option<String>,
    },
    /// Replace every child with a fresh process of the program now on disk,
    /// one at a time, and reload nginx in place (deploys new code).
    Reload(RunDir),
    /// Replace one child (static, api-K or nginx); a failed child is started afresh.
    Restart {
        /// The child: static, api-K or nginx.
        name: String,
        #[command(flatten)]
        at: RunDir,
    },
    /// Run N API workers: add or remove workers without a failed request.
    Scale {
        /// The number of API workers wanted (1-64).
        #[arg(value_parser = api_workers_range())]
        workers: u16,
        #[command(flatten)]
        at: RunDir,
    },
    /// Stop the running stack, like SIGTERM.
    Stop(RunDir),
}

/// `--run-dir` after a control subcommand's name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunDir {
    /// The running stack's run directory [default: .gallery].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

/// The most API workers a stack runs (`--api-workers`, `scale`).
pub const MAX_API_WORKERS: u16 = 64;

fn api_workers_range() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..=i64::from(MAX_API_WORKERS))
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

/// The flags that shape the stack's layout: its ports, address, workers,
/// CORS origins, role and upstreams ([`crate::plan::Plan::from_args`]),
/// and so the nginx config (`nginx-config` takes these, and `--database`,
/// which decides where POSTs go).
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Front-door port (nginx; 0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Static server port (0: any free port).
    #[arg(long, default_value_t = 8082)]
    pub static_port: u16,
    /// Port of API worker 1; worker k listens on base + k - 1 (0: any free ports).
    #[arg(long, default_value_t = 8083)]
    pub api_base_port: u16,
    /// Number of API workers (1-64).
    #[arg(long, default_value_t = 3, value_parser = api_workers_range(), value_name = "N")]
    pub api_workers: u16,
    /// Address every process binds: an IP address or a host name (localhost: 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host, value_name = "ADDRESS")]
    pub bind: IpAddr,
    /// Origin allowed to call the API from a browser (repeatable; default: any).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// An nginx file included in the generated `server` block (TLS,
    /// `server_name`, extra locations); checked by `nginx -t` with the rest.
    #[arg(long, value_name = "FILE")]
    pub nginx_include: Option<PathBuf>,
    /// What this host runs of the stack (several hosts: README).
    #[arg(long, value_enum, default_value_t = HostRole::All, value_name = "ROLE")]
    pub role: HostRole,
    /// A worker on another host, added to nginx's upstream beside the local
    /// ones and failed over like them (repeatable): HOST:PORT, an IPv6
    /// address as [ADDR]:PORT, with `,weight=N` (1-1000, default 1) for a
    /// bigger share.
    #[arg(long = "upstream", value_name = "HOST:PORT[,weight=N]")]
    pub upstream: Vec<Upstream>,
    /// How nginx spreads requests over the workers (local and --upstream).
    #[arg(long, value_enum, default_value_t = LbMethod::RoundRobin, value_name = "METHOD")]
    pub lb_method: LbMethod,
}

/// The settings of a running stack (no subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// The database: an SQLite file (sqlite://PATH, sqlite:PATH, file:PATH
    /// or a plain path), or PostgreSQL
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or postgresql://;
    /// a URL with a password is better given in DATABASE_URL than here,
    /// where `ps` shows it). The workers get a URL in their environment.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "gallery.db",
        value_name = "PATH|URL"
    )]
    pub database: String,
    /// Put before each API worker's name (`b-` → b-api-1, b-api-2) in
    /// X-Worker, /health, status and metrics: tells apart the workers of
    /// several hosts behind one nginx.
    #[arg(long, default_value = "", value_parser = parse_name_prefix, value_name = "PREFIX")]
    pub name_prefix: String,
    /// Port of the admin endpoint (status page, /metrics), on 127.0.0.1
    /// only (0: any free port).
    #[arg(long, default_value_t = 8079, value_name = "PORT")]
    pub admin_port: u16,
    /// When the workers acknowledge a write: `full`, once fsynced (survives
    /// a power loss; concurrent writes share one fsync), or `normal`, faster,
    /// surviving a crash of any process but not a power loss.
    #[arg(long, value_enum, default_value_t = Synchronous::Full, value_name = "MODE")]
    pub synchronous: Synchronous,
    /// Directory of the gallery page and its images.
    #[arg(long, default_value = "assets", value_name = "DIR")]
    pub assets: PathBuf,
    /// The nginx binary (a name looked up on PATH and in /usr/sbin, or a path).
    #[arg(long, default_value = "nginx", value_name = "PATH")]
    pub nginx: PathBuf,
    /// The API worker program (default: `api-server` next to this binary).
    #[arg(long, value_name = "PATH")]
    pub api_server: Option<PathBuf>,
    /// The static server program (default: `static-server` next to this binary).
    #[arg(long, value_name = "PATH")]
    pub static_server: Option<PathBuf>,
    /// How long a stopping child may finish in-flight requests before SIGKILL.
    #[arg(long, default_value = "10", value_parser = parse_duration, value_name = "DURATION")]
    pub grace_period: Duration,
    /// How long a new child may take to answer before it is killed.
    #[arg(long, default_value = "30", value_parser = parse_duration, value_name = "DURATION")]
    pub start_timeout: Duration,
    /// A child up for less than this after becoming ready exited "unstably":
    /// only such exits back off and count toward --max-restarts.
    #[arg(long, default_value = policy::DEFAULT_MIN_UPTIME, value_parser = parse_duration, value_name = "DURATION")]
    pub min_uptime: Duration,
    /// Unstable exits within --restart-window that mark a child failed (1 or more).
    #[arg(long, default_value_t = policy::DEFAULT_MAX_RESTARTS, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_restarts: u32,
    /// The window for --max-restarts.
    #[arg(long, default_value = policy::DEFAULT_RESTART_WINDOW, value_parser = parse_duration, value_name = "DURATION")]
    pub restart_window: Duration,
    /// How long a failed child rests before it is tried again (doubling up to 10 min).
    #[arg(long, default_value = policy::DEFAULT_COOLDOWN, value_parser = parse_duration, value_name = "DURATION")]
    pub cooldown: Duration,
    /// How often the watchdog checks each server (a worker's /health, the static server's /).
    #[arg(long, default_value = "1", value_parser = parse_duration, value_name = "DURATION")]
    pub health_interval: Duration,
    /// How long one health check may take before it counts as missed.
    #[arg(long, default_value = "1", value_parser = parse_duration, value_name = "DURATION")]
    pub health_timeout: Duration,
    /// Missed health checks in a row after which a child is killed and restarted (1 or more).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub health_misses: u32,
    /// The account the API and static servers run as when the supervisor
    /// runs as root (default: nobody; `root` keeps them root).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

/// A `--name-prefix`: letters, digits, `.`, `_` and `-`, up to 32, so that
/// a worker's name stays a plain header value and a plain argument.
pub fn parse_name_prefix(text: &str) -> Result<String, String> {
    if text.len() > 32 {
        return Err(format!("{text:?} is longer than 32 characters"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{text:?} has {c:?}: use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(text.to_string())
}

/// An `--bind` value: an IP address, or a host name resolved now
/// (`localhost` is 127.0.0.1 without asking the resolver; an IPv4 address
/// is preferred when a name has both).
pub fn parse_host(text: &str) -> Result<IpAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = text.parse() {
        return Ok(ip);
    }
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let addresses: Vec<IpAddr> = (text, 0)
        .to_socket_addrs()
        .map_err(|e| {
            format!("{text:?} is neither an IP address nor a host name that resolves ({e})")
        })?
        .map(|a| a.ip())
        .collect();
    addresses
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("host name {text:?} has no address"))
}

/// How much a server logs (`--log-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        })
    }
}

/// The level of the servers this process starts: the supervisor's own
/// `--log-level` (see [`LogLevel::pass_to_servers`]).
static SERVERS_LOG_LEVEL: OnceLock<LogLevel> = OnceLock::new();

impl LogLevel {
    /// Makes this the level of every server this process starts (their
    /// `to_args` carry it); set once, by the supervisor.
    pub fn pass_to_servers(self) {
        let _ = SERVERS_LOG_LEVEL.set(self);
    }

    /// The level for a server this process starts (default: info).
    pub fn for_servers() -> LogLevel {
        SERVERS_LOG_LEVEL.get().copied().unwrap_or_default()
    }
}

const LOG_LEVEL_ID: &str = "log_level";

/// `--log-level`, the same on all three binaries.
fn log_level_arg() -> clap::Arg {
    clap::Arg::new(LOG_LEVEL_ID)
        .long("log-level")
        .value_name("LEVEL")
        .value_parser(clap::builder::EnumValueParser::<LogLevel>::new())
        .default_value("info")
        .help(
            "How much the servers log; RUST_LOG, when set, overrides it \
             (e.g. RUST_LOG=debug or RUST_LOG=gallery=trace)",
        )
}

/// A binary's command line, parsed: its flags, its `--log-level`, and where
/// each value came from.
#[derive(Debug)]
pub struct Invocation<T> {
    pub args: T,
    pub log_level: LogLevel,
    command: clap::Command,
    matches: clap::ArgMatches,
}

impl<T: Parser> Invocation<T> {
    /// This process's command line; prints help, version or the error and exits.
    pub fn parse() -> Invocation<T> {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    pub fn try_parse_from<I, A>(argv: I) -> Result<Invocation<T>, clap::Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString> + Clone,
    {
        let mut command = T::command().arg(log_level_arg());
        let matches = command.try_get_matches_from_mut(argv)?;
        refuse_flags_before_a_subcommand(&mut command, &matches)?;
        let args = T::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        let log_level = *matches
            .get_one::<LogLevel>(LOG_LEVEL_ID)
            .expect("--log-level has a default");
        Ok(Invocation {
            args,
            log_level,
            command,
            matches,
        })
    }
}

impl<T> Invocation<T> {
    /// How to name the setting `id` (a field name) in an error: the
    /// environment variable it came from, or else its flag.
    pub fn origin(&self, id: &str) -> String {
        let arg = self.command.get_arguments().find(|a| a.get_id() == id);
        if self.matches.value_source(id) == Some(ValueSource::EnvVariable)
            && let Some(env) = arg.and_then(|a| a.get_env())
        {
            return format!("{} (from the environment)", env.to_string_lossy());
        }
        match arg.and_then(|a| a.get_long()) {
            Some(long) => format!("--{long}"),
            None => id.to_string(),
        }
    }

    /// A server's start-up error with the flag or variable it came from
    /// named: a port in use, an address that cannot be bound, a database
    /// location or file.
    pub fn name_the_flag(&self, error: anyhow::Error) -> anyhow::Error {
        use crate::listen::ListenError;
        let error = match error.downcast::<ListenError>() {
            Ok(listen) => return listen_error(listen, "--port"),
            Err(error) => error,
        };
        if error.is::<crate::store::LocationError>() || error.is::<crate::store::StoreError>() {
            return error.context(self.origin("database"));
        }
        error
    }
}

/// A listening error, naming the flag that chose the port (`--port`,
/// `--static-port`, `--api-base-port`).
pub fn listen_error(error: crate::listen::ListenError, port_flag: &str) -> anyhow::Error {
    use crate::listen::ListenError;
    match error {
        ListenError::InUse { ip, port } => anyhow::anyhow!(
            "port {port} on {ip} is already in use: stop whatever holds it, or choose another {port_flag}"
        ),
        ListenError::Bind { ip, port, source } => {
            anyhow::anyhow!("cannot listen on {ip}:{port} ({port_flag}, --bind): {source}")
        }
        other => other.into(),
    }
}

/// The flags a subcommand that takes them also accepts before its name
/// ([`SupervisorArgs::run_dir`] says which one counts).
const BEFORE_OR_AFTER: [&str; 1] = ["run_dir"];

/// Refuses, when a subcommand is given, every flag before its name (other
/// than `--run-dir` for a subcommand that takes it): the subcommand would
/// ignore it (`--api-workers 7 status`, `--port 9000 nginx-config`).
fn refuse_flags_before_a_subcommand(
    command: &mut clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(), clap::Error> {
    let Some((name, _)) = matches.subcommand() else {
        return Ok(());
    };
    let takes = |id: &clap::Id| {
        BEFORE_OR_AFTER.contains(&id.as_str())
            && command
                .find_subcommand(name)
                .is_some_and(|sub| sub.get_arguments().any(|a| a.get_id() == id))
    };
    let given = command.get_arguments().find(|arg| {
        matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
            && !takes(arg.get_id())
    });
    match given.and_then(|arg| arg.get_long()) {
        Some(long) => {
            let message = format!(
                "--{long} before `{name}` is not used by it (`{name} --help` lists what it takes, after its name)"
            );
            Err(command.error(clap::error::ErrorKind::ArgumentConflict, message))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
            prepare_database: false,
            quiet_requests: true,
            threads: 3,
            synchronous: Synchronous::Normal,
            no_request_stats: true,
        };
        let mut argv = vec![OsString::from("api-server")];
        argv.extend(args.to_args());
        assert!(args.to_env().is_empty());
        let parsed = Invocation::<ApiServerArgs>::try_parse_from(argv).unwrap();
        assert_eq!(parsed.args, args);
        assert_eq!(parsed.log_level, LogLevel::for_servers());
    }

    #[test]
    fn a_postgres_url_goes_to_a_worker_in_its_environment_not_its_arguments() {
        const URL: &str = "postgres://gallery:pw-in-url@127.0.0.1:5432/gallery";
        let mut args = ApiServerArgs::try_parse_defaults().unwrap();
        args.database = URL.into();
        let argv = args.to_args();
        assert!(
            argv.iter()
                .all(|a| !a.to_string_lossy().contains("pw-in-url")),
            "{argv:?}"
        );
        assert!(!argv.contains(&"--database".into()), "{argv:?}");
        let env = args.to_env();
        assert_eq!(env, [("DATABASE_URL".into(), args.database.clone().into())]);
        // Parsed back with that environment, it is the same worker (clap
        // reads DATABASE_URL from the process's environment, so the value
        // is given the way the child finds it: as the flag's env default).
        let command = ApiServerArgs::command()
            .arg(log_level_arg())
            .mut_arg("database", |arg| arg.default_value(URL));
        let matches = command
            .try_get_matches_from(std::iter::once(OsString::from("api-server")).chain(argv))
            .unwrap();
        let parsed = <ApiServerArgs as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        assert_eq!(parsed, args);
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
            quiet_requests: true,
            threads: 1,
        };
        let mut argv = vec![OsString::from("static-server")];
        argv.extend(args.to_args());
        assert!(argv.contains(&"--assets".into()), "{argv:?}");
        let parsed = Invocation::<StaticServerArgs>::try_parse_from(argv).unwrap();
        assert_eq!(parsed.args, args);
        assert_eq!(parsed.log_level, LogLevel::for_servers());
    }

    #[test]
    fn the_static_server_takes_assets_and_still_path() {
        for flag in ["--assets", "--path"] {
            let args = StaticServerArgs::try_parse_from(["static-server", flag, "/srv/a"]).unwrap();
            assert_eq!(args.path, PathBuf::from("/srv/a"), "{flag}");
        }
    }

    fn supervisor(argv: &[&str]) -> Result<Invocation<SupervisorArgs>, clap::Error> {
        Invocation::try_parse_from(
            std::iter::once("gallery-supervisor").chain(argv.iter().copied()),
        )
    }

    /// The long flags `gallery-supervisor ARGV --help` lists.
    fn flags_in_help(subcommand: &str) -> Vec<String> {
        let mut command = SupervisorArgs::command().arg(log_level_arg());
        let help = command
            .find_subcommand_mut(subcommand)
            .unwrap()
            .render_help()
            .to_string();
        let mut flags: Vec<String> = help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| {
                w.trim_end_matches(|c: char| !c.is_alphanumeric())
                    .to_string()
            })
            .filter(|w| w != "--help")
            .collect();
        flags.sort();
        flags.dedup();
        flags
    }

    #[test]
    fn each_subcommand_lists_only_the_flags_it_uses() {
        assert_eq!(flags_in_help("status"), ["--json", "--run-dir"]);
        for control in ["reload", "restart", "scale", "stop"] {
            assert_eq!(flags_in_help(control), ["--run-dir"], "{control}");
        }
        let plan_flags = [
            "--api-base-port",
            "--api-workers",
            "--bind",
            "--cors-origin",
            "--database",
            "--lb-method",
            "--nginx-include",
            "--port",
            "--role",
            "--static-port",
            "--upstream",
        ];
        assert_eq!(flags_in_help("nginx-config"), plan_flags);
    }

    #[test]
    fn a_subcommand_refuses_flags_it_does_not_use_on_either_side() {
        for argv in [
            &["status", "--api-workers", "7"][..],
            &["--api-workers", "7", "status"],
            &["stop", "--database", "x.db"],
            &["--log-level", "debug", "reload"],
            &["--port", "9000", "nginx-config"],
            &["--run-dir", "x", "nginx-config"],
        ] {
            assert!(supervisor(argv).is_err(), "{argv:?} accepted");
        }
    }

    #[test]
    fn run_dir_is_taken_before_or_after_a_subcommand() {
        let run_dir = |argv: &[&str]| supervisor(argv).unwrap().args.run_dir().to_path_buf();
        assert_eq!(run_dir(&["status"]), PathBuf::from(".gallery"));
        assert_eq!(
            run_dir(&["--run-dir", "a", "status", "--json"]),
            PathBuf::from("a")
        );
        assert_eq!(
            run_dir(&["status", "--json", "--run-dir", "b"]),
            PathBuf::from("b")
        );
        assert_eq!(run_dir(&["--run-dir", "c", "reload"]), PathBuf::from("c"));
        assert_eq!(
            run_dir(&["restart", "api-1", "--run-dir", "d"]),
            PathBuf::from("d")
        );
        assert_eq!(
            run_dir(&["scale", "2", "--run-dir", "e"]),
            PathBuf::from("e")
        );
        assert_eq!(run_dir(&["--run-dir", "f"]), PathBuf::from("f"));
        let parsed = supervisor(&["nginx-config", "--port", "9000", "--api-workers", "2"]).unwrap();
        let Some(SupervisorCommand::NginxConfig { plan, .. }) = parsed.args.command else {
            panic!("nginx-config");
        };
        assert_eq!((plan.port, plan.api_workers), (9000, 2));
    }

    #[test]
    fn the_help_gives_the_ranges() {
        let help = SupervisorArgs::command().render_help().to_string();
        let workers = format!("Number of API workers (1-{MAX_API_WORKERS})");
        for needle in [
            &workers[..],
            "mark a child failed (1 or more)",
            "restarted (1 or more)",
        ] {
            assert!(help.contains(needle), "{needle:?} in {help}");
        }
        let mut command = SupervisorArgs::command();
        let scale = command
            .find_subcommand_mut("scale")
            .unwrap()
            .render_help()
            .to_string();
        assert!(scale.contains(&format!("(1-{MAX_API_WORKERS})")), "{scale}");
        assert!(supervisor(&["--api-workers", &MAX_API_WORKERS.to_string()]).is_ok());
        assert!(supervisor(&["--api-workers", &(MAX_API_WORKERS + 1).to_string()]).is_err());
    }

    #[test]
    fn bind_takes_host_names_on_all_three_binaries() {
        assert_eq!(parse_host("localhost"), Ok("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_host("::1"), Ok("::1".parse().unwrap()));
        assert!(parse_host("no-such-host.invalid").is_err());
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let api = ApiServerArgs::try_parse_from(["api-server", "--bind", "localhost"]).unwrap();
        let files = StaticServerArgs::try_parse_from(["static-server", "--bind", "localhost"]);
        let stack = supervisor(&["--bind", "localhost"]).unwrap().args.stack;
        assert_eq!(api.bind, localhost);
        assert_eq!(files.unwrap().bind, localhost);
        assert_eq!(stack.plan.bind, localhost);
    }

    #[test]
    fn log_level_is_info_unless_given_on_every_binary() {
        let api = Invocation::<ApiServerArgs>::try_parse_from(["api-server"]).unwrap();
        assert_eq!(api.log_level, LogLevel::Info);
        let files = Invocation::<StaticServerArgs>::try_parse_from([
            "static-server",
            "--log-level",
            "warn",
        ])
        .unwrap();
        assert_eq!(files.log_level, LogLevel::Warn);
        assert_eq!(
            supervisor(&["--log-level", "trace"]).unwrap().log_level,
            LogLevel::Trace
        );
        assert!(supervisor(&["--log-level", "loud"]).is_err());
        let help = SupervisorArgs::command()
            .arg(log_level_arg())
            .render_help()
            .to_string();
        assert!(help.contains("RUST_LOG, when set, overrides it"), "{help}");
    }

    #[test]
    fn an_error_names_the_flag_its_value_came_from() {
        let parsed = supervisor(&["--database", "x.db"]).unwrap();
        assert_eq!(parsed.origin("database"), "--database");
        let api = Invocation::<ApiServerArgs>::try_parse_from(["api-server"]).unwrap();
        let in_use = crate::listen::ListenError::InUse {
            ip: "127.0.0.1".parse().unwrap(),
            port: 8081,
        };
        let text = api.name_the_flag(in_use.into()).to_string();
        assert!(
            text.contains("port 8081") && text.contains("--port"),
            "{text}"
        );
        let location = crate::store::parse_database_location("mysql://x").unwrap_err();
        let text = format!("{:#}", api.name_the_flag(location.into()));
        assert!(
            text.starts_with("--database: unsupported database URL scheme"),
            "{text}"
        );
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

    #[test]
    fn roles_upstreams_and_lb_methods_parse_on_the_stack_and_nginx_config() {
        let stack = supervisor(&[
            "--role",
            "front",
            "--upstream",
            "127.0.0.2:9001",
            "--upstream",
            "[::1]:9002,weight=4",
            "--lb-method",
            "ip-hash",
        ])
        .unwrap()
        .args
        .stack;
        assert_eq!(stack.plan.role, HostRole::Front);
        assert_eq!(stack.plan.upstream[1].to_string(), "[::1]:9002,weight=4");
        assert_eq!(stack.plan.lb_method, LbMethod::IpHash);
        let defaults = supervisor(&[]).unwrap().args.stack;
        assert_eq!(
            (defaults.plan.role, defaults.plan.lb_method),
            (HostRole::All, LbMethod::RoundRobin)
        );
        assert!(defaults.plan.upstream.is_empty() && defaults.name_prefix.is_empty());
        let parsed = supervisor(&[
            "nginx-config",
            "--lb-method",
            "least-conn",
            "--database",
            "postgres://db/g",
        ])
        .unwrap();
        let Some(SupervisorCommand::NginxConfig { plan, database }) = parsed.args.command else {
            panic!("nginx-config");
        };
        assert_eq!(plan.lb_method, LbMethod::LeastConn);
        assert_eq!(database.as_deref(), Some("postgres://db/g"));
        for (argv, needle) in [
            (&["--upstream", "h:1,weight=0"][..], "from 1 to 1000"),
            (&["--upstream", "h"], "has no port"),
            (&["--role", "both"], "--role"),
            (&["--lb-method", "random"], "--lb-method"),
            (&["--name-prefix", "b/"], "use letters, digits"),
        ] {
            let error = supervisor(argv).unwrap_err().to_string();
            assert!(error.contains(needle), "{argv:?}: {error}");
        }
        let help = SupervisorArgs::command().render_long_help().to_string();
        let weights = format!("`,weight=N` (1-{}, default 1)", crate::plan::MAX_WEIGHT);
        assert!(help.contains(&weights), "{help}");
        assert_eq!(
            supervisor(&["--name-prefix", "host-b."])
                .unwrap()
                .args
                .stack
                .name_prefix,
            "host-b."
        );
    }
}
