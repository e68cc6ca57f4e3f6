//! gallery: a self-contained image-gallery web stack for one machine.
//!
//! - [`cli`]: the binaries' flags.
//! - [`image`]: the domain, `Image` and the validated `NewImage`.
//! - [`store`]: the SQLite file — location parsing, pool and pragmas,
//!   migrations and seed, and the only SQL.
//! - [`api`]: the JSON contract — router, handlers, body and query
//!   extraction, and `ApiError`, the one status-code mapping.
//! - [`static_files`]: serving the assets directory safely.
//! - [`listen`]: a bound port or a socket inherited through `LISTEN_FDS`.
//! - [`http`]: shared HTTP plumbing — request log, graceful serving, logging.
//! - [`nginx`]: the nginx config as a pure function of the plan, and `nginx -t`.
//! - [`supervisor`]: `gallery-supervisor` — the plan of children, spawning on
//!   owned sockets, the restart policy, readiness probes, prefixed output,
//!   `state.json` and `status`, the run-directory lock, the ordered stop.

pub mod api;
pub mod cli;
pub mod http;
pub mod image;
pub mod listen;
pub mod nginx;
pub mod static_files;
pub mod store;
pub mod supervisor;

/// Turns a binary's result into its exit code, printing an error once.
pub fn exit_with(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
