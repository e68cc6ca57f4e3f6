//! gallery: a self-contained image-gallery web stack for one machine.
//!
//! - [`cli`]: the binaries' flags, and the servers' flags as a command line.
//! - [`plan`]: the stack's children, names and ports, from the flags; shared
//!   by the supervisor and the nginx config.
//! - [`image`]: the domain, `Image` and the validated `NewImage`.
//! - [`store`]: the database, one interface over SQLite (a file: pool and
//!   pragmas) and PostgreSQL (a server: pool and session settings) —
//!   location parsing, migrations and seed, and the only SQL.
//! - [`api`]: the JSON contract — router, handlers, body and query
//!   extraction, and `ApiError`, the one status-code mapping.
//! - [`static_files`]: serving the assets directory safely.
//! - [`listen`]: a bound port or a socket inherited through `LISTEN_FDS`.
//! - [`origin`]: web origins, parsed once for every flag that names one.
//! - [`http`]: shared HTTP plumbing — request log, graceful serving, logging.
//! - [`nginx`]: the nginx config as a pure function of the plan, and `nginx -t`.
//! - [`supervisor`]: `gallery-supervisor` — a pure core that makes every
//!   lifecycle decision (start, restart policy, watchdog, reload, restart,
//!   scale, stop) and a thin executor that spawns on owned sockets, probes,
//!   writes non-blocking prefixed output and `state.json`, and serves the
//!   control socket.

pub mod api;
pub mod cli;
pub mod http;
pub mod image;
pub mod listen;
pub mod nginx;
pub mod origin;
pub mod plan;
pub mod static_files;
pub mod store;
pub mod supervisor;

/// Turns a binary's result into its exit code, printing an error once.
pub fn exit_with(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Not eprintln!: it panics when stderr is a full non-blocking pipe.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            // "Nobody to ask" is 2, as for the control commands (SPEC §9).
            if error.is::<supervisor::control::NotRunning>() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
