//! `gallery-supervisor`: starts, watches and stops the whole stack (SPEC §6).
//!
//! The supervisor owns the children and their sockets. It checks what it
//! can up front (nginx present, assets present, run directory free,
//! database usable, ports free) so a bad start fails in seconds with one
//! line; binds every server's port itself and hands the socket to each
//! generation of that child; starts the static server and the API workers,
//! waits until each answers HTTP, renders and `nginx -t`s the nginx config,
//! starts nginx, and then supervises: any exit is logged and restarted per
//! the policy in `policy.rs`, `state.json` is rewritten on every change, and
//! SIGINT/SIGTERM stop the stack in order (nginx, then the servers, then
//! SIGKILL after the grace period; a second signal kills at once).
//!
//! This file holds the entry point, the up-front checks and the wiring of
//! each child's command line and socket. Sub-modules: `stack` (the event
//! loop that runs, restarts and stops the children), `plan` (children from
//! flags), `spawn` (one child process), `policy` (restart decisions),
//! `probe` (readiness), `output` (prefixed logs), `state` (`state.json`,
//! `status`), `lock` (one supervisor per run directory).

mod lock;
mod output;
pub mod plan;
mod policy;
mod probe;
mod spawn;
mod stack;
pub mod state;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::cli::{StackArgs, SupervisorArgs, SupervisorCommand};
use plan::{Plan, Role};
pub use policy::{Decision, RestartPolicy, RestartTracker};
use spawn::Launch;
use stack::Slot;

/// Entry point of the `gallery-supervisor` binary.
pub fn main(args: SupervisorArgs) -> anyhow::Result<()> {
    match args.command {
        Some(SupervisorCommand::Status { json }) => state::print_status(&args.stack.run_dir, json),
        Some(SupervisorCommand::NginxConfig) => {
            print!("{}", crate::nginx::render(&Plan::from_args(&args.stack)?));
            Ok(())
        }
        None => run(&args.stack),
    }
}

/// Finds nginx: a path as given, or a name on PATH or in the sbin directories.
fn locate_nginx(requested: &Path) -> anyhow::Result<PathBuf> {
    let hint = "install it (Debian/Ubuntu: apt-get install nginx) or pass --nginx /path/to/nginx";
    if requested.components().count() > 1 {
        anyhow::ensure!(
            requested.is_file(),
            "nginx not found at {}: {hint}",
            requested.display()
        );
        return Ok(requested.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    which::which(requested)
        .or_else(|_| which::which_in(requested, Some("/usr/sbin:/usr/local/sbin:/sbin"), &cwd))
        .map_err(|_| {
            anyhow::anyhow!(
                "nginx not found on PATH or in /usr/sbin (looked for `{}`): {hint}",
                requested.display()
            )
        })
}

/// The program for a server: the flag, or the binary next to this one.
fn server_program(flag: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
        return Ok(path.clone());
    }
    let here = std::env::current_exe().context("cannot find the supervisor's own path")?;
    let path = here.with_file_name(name);
    anyhow::ensure!(
        path.is_file(),
        "{name} not found next to gallery-supervisor at {} (build all binaries: cargo build --release)",
        path.display()
    );
    Ok(path)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// Checks everything that can fail fast, binds the sockets, then supervises.
fn run(args: &StackArgs) -> anyhow::Result<()> {
    let mut plan = Plan::from_args(args)?;
    let nginx = locate_nginx(&args.nginx)?;
    anyhow::ensure!(
        args.assets.is_dir(),
        "assets directory {} does not exist (run from the project directory or pass --assets DIR)",
        args.assets.display()
    );
    let assets = args.assets.canonicalize()?;
    let api_program = server_program(&args.api_server, "api-server")?;
    let static_program = server_program(&args.static_server, "static-server")?;

    std::fs::create_dir_all(args.run_dir.join("tmp"))
        .with_context(|| format!("cannot create run directory {}", args.run_dir.display()))?;
    let run_dir = args.run_dir.canonicalize()?;
    let _lock = lock::acquire(&run_dir)?;

    let database = crate::store::parse_database_location(&args.database)?;
    crate::store::Store::open(&database, &crate::store::StoreOptions::default())?;
    let database = absolute(&database)?;

    // Bind every server socket now: they stay open for the stack's lifetime.
    let bind = |name: &str, port: u16| {
        crate::listen::bind(plan.bind, port).with_context(|| format!("{name} cannot listen"))
    };
    let static_listener = bind("static", plan.static_port)?;
    plan.static_port = static_listener.local_addr()?.port();
    let mut api_listeners = Vec::new();
    for (i, port) in plan.api_ports.iter_mut().enumerate() {
        let listener = bind(&format!("api-{}", i + 1), *port)?;
        *port = listener.local_addr()?.port();
        api_listeners.push(listener);
    }
    // nginx binds the front door itself; make sure it is free (or pick one).
    plan.front_port = bind("nginx", plan.front_port)?.local_addr()?.port();

    let server_args = |extra: Vec<String>| {
        let mut all: Vec<std::ffi::OsString> = extra.into_iter().map(Into::into).collect();
        all.extend(["--bind".into(), plan.bind.to_string().into()]);
        all
    };
    let mut slots = Vec::new();
    let mut listeners = std::iter::once(static_listener).chain(api_listeners);
    for spec in plan.children() {
        let (launch, listener) = match spec.role {
            Role::Static => {
                let listener = listeners.next().expect("one listener per server");
                let mut args = server_args(vec!["--port".into(), spec.port.to_string()]);
                args.extend(["--path".into(), assets.clone().into_os_string()]);
                (
                    server_launch(&static_program, args, &listener),
                    Some(listener),
                )
            }
            Role::Api => {
                let listener = listeners.next().expect("one listener per server");
                let mut extra = vec!["--name".to_string(), spec.name.clone()];
                extra.extend(["--port".into(), spec.port.to_string()]);
                for origin in &args.cors_origin {
                    extra.extend(["--cors-origin".into(), origin.clone()]);
                }
                let mut all = server_args(extra);
                all.extend(["--database".into(), database.clone().into_os_string()]);
                (server_launch(&api_program, all, &listener), Some(listener))
            }
            Role::Nginx => (
                Launch {
                    program: nginx.clone(),
                    args: crate::nginx::args(&run_dir),
                    listen_fd: None,
                    parent_death_signal: Signal::SIGTERM,
                },
                None,
            ),
        };
        slots.push(Slot::new(spec, launch, listener));
    }

    let policy = RestartPolicy {
        max_restarts: args.max_restarts.max(1),
        window: Duration::from_secs(args.restart_window),
        ..RestartPolicy::default()
    };
    let grace = Duration::from_secs(args.grace_period);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(stack::supervise(
        slots,
        plan,
        nginx,
        run_dir.clone(),
        policy,
        grace,
    ));
    state::remove(&run_dir);
    result
}

fn server_launch(program: &Path, args: Vec<std::ffi::OsString>, listener: &TcpListener) -> Launch {
    Launch {
        program: program.to_path_buf(),
        args,
        listen_fd: Some(listener.as_raw_fd()),
        parent_death_signal: Signal::SIGKILL,
    }
}
