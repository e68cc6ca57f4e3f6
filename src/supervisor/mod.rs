//! `gallery-supervisor`: starts, watches, changes and stops the whole stack
//! (SPEC §6, §9).
//!
//! The supervisor owns the children and their sockets. It checks what it
//! can up front (nginx present and answering `-v`, assets present, run directory free,
//! database usable, ports free) so a bad start fails in seconds with one
//! line, binds every server's port itself, and then hands over to the event
//! loop: [`core`] makes every decision (start order, restart policy,
//! watchdog, reload, restart, scale, stop) as a pure function of events,
//! and `stack` performs them.
//!
//! This file holds the entry point, the subcommands, and the up-front
//! checks. Sub-modules: `core` (decisions), `stack` (the executor),
//! `policy` (restart decisions), `spawn` (one child process), `probe`
//! (readiness and health checks), `output` (prefixed, never-blocking
//! output), `control` (the control socket and its client), `state`
//! (`state.json`, `status`), `lock` (one supervisor per run directory).

pub mod account;
pub mod admin;
pub mod control;
pub mod core;
mod database;
mod lock;
mod output;
pub mod policy;
pub mod probe;
mod spawn;
mod stack;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::Context;

use crate::cli::{Invocation, StackArgs, SupervisorArgs, SupervisorCommand};
use crate::plan::{HostRole, Plan};
use crate::store::Location;
use control::Request;
use policy::RestartPolicy;

/// Entry point of the `gallery-supervisor` binary.
pub fn main(cli: Invocation<SupervisorArgs>) -> anyhow::Result<()> {
    let args = &cli.args;
    let run_dir = args.run_dir();
    let request = match args.command.clone() {
        None => {
            cli.log_level.pass_to_servers();
            return run(&args.stack, run_dir, &cli);
        }
        Some(SupervisorCommand::Status { json, .. }) => {
            return state::print_status(run_dir, json);
        }
        Some(SupervisorCommand::NginxConfig { plan, database }) => {
            let plan = Plan::from_args(&plan)?.with_database(database.as_deref().unwrap_or(""));
            anyhow::ensure!(
                plan.role.runs_nginx(),
                "--role workers runs no nginx: there is no config to print"
            );
            print!("{}", crate::nginx::render(&plan));
            return Ok(());
        }
        Some(SupervisorCommand::Reload(_)) => Request::Reload,
        Some(SupervisorCommand::Restart { name, .. }) => Request::Restart { name },
        Some(SupervisorCommand::Scale { workers, .. }) => Request::Scale { workers },
        Some(SupervisorCommand::Stop(_)) => Request::Stop,
    };
    println!("{}", control::send(run_dir, &request)?);
    Ok(())
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
        let flag = format!("--{name}");
        anyhow::ensure!(path.is_file(), "{flag} {} does not exist", path.display());
        return absolute(path);
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

/// Takes group and world write permission off the run directory and what
/// it holds (left by an earlier run under a laxer umask, say).
fn restrict_writes(run_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut paths = vec![run_dir.to_path_buf(), run_dir.join("tmp")];
    for entry in std::fs::read_dir(run_dir)?.chain(std::fs::read_dir(run_dir.join("tmp"))?) {
        paths.push(entry?.path());
    }
    for path in paths {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = metadata.permissions().mode();
        if !metadata.file_type().is_symlink() && mode & 0o022 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !0o022))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// How long `nginx -v` may take.
const NGINX_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `nginx -v`, so that a binary that is not a working nginx is one
/// line naming `--nginx` now, not a crash loop after every other child
/// has started.
fn check_nginx(nginx: &Path) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let name = format!("--nginx {}", nginx.display());
    let child = Command::new(nginx)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{name} cannot be run"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    let output = match receiver.recv_timeout(NGINX_CHECK_TIMEOUT) {
        Ok(output) => output.with_context(|| format!("{name} cannot be run"))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            anyhow::bail!(
                "{name} is not a working nginx: `-v` did not answer within {} s",
                NGINX_CHECK_TIMEOUT.as_secs()
            );
        }
    };
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    let said = said.lines().next().unwrap_or("").trim();
    anyhow::ensure!(
        output.status.success() && said.to_ascii_lowercase().contains("nginx"),
        "{name} is not a working nginx: `-v` {}{}",
        if output.status.success() {
            "succeeded".to_string()
        } else {
            format!("failed ({})", output.status)
        },
        if said.is_empty() {
            " and printed nothing".to_string()
        } else {
            format!(" and printed {said:?}")
        }
    );
    Ok(())
}

/// Checks everything that can fail fast, binds the sockets, then supervises.
fn run(args: &StackArgs, run_dir: &Path, cli: &Invocation<SupervisorArgs>) -> anyhow::Result<()> {
    let mut plan = Plan::from_args(&args.plan)?
        .with_database(&args.database)
        .with_worker_prefix(&args.name_prefix);
    // Only what this host's role runs must be there (a program it never
    // starts stays an empty path).
    let role = plan.role;
    let (nginx, assets, static_program) = if role.runs_nginx() {
        let nginx = locate_nginx(&args.nginx)?;
        check_nginx(&nginx)?;
        anyhow::ensure!(
            args.assets.is_dir(),
            "assets directory {} does not exist (run from the project directory or pass --assets DIR)",
            args.assets.display()
        );
        let assets = args.assets.canonicalize()?;
        let static_program = server_program(&args.static_server, "static-server")?;
        (nginx, assets, static_program)
    } else {
        (PathBuf::new(), PathBuf::new(), PathBuf::new())
    };
    let api_program = if role.runs_workers() {
        server_program(&args.api_server, "api-server")?
    } else {
        PathBuf::new()
    };

    // Nothing the supervisor or its children create is group- or
    // world-writable, whatever the umask it was started with.
    use nix::sys::stat::{Mode, umask};
    let inherited = umask(Mode::empty());
    umask(inherited | Mode::S_IWGRP | Mode::S_IWOTH);
    std::fs::create_dir_all(run_dir.join("tmp")).with_context(|| {
        format!(
            "cannot create run directory {} (--run-dir)",
            run_dir.display()
        )
    })?;
    let run_dir = run_dir.canonicalize()?;
    restrict_writes(&run_dir)?;
    let _lock = lock::acquire(&run_dir)?;

    // A front runs no workers: it never opens (nor creates) a database.
    let database = if role.runs_workers() {
        let database_origin = cli.origin("database");
        let database = crate::store::parse_database_location(&args.database)
            .with_context(|| database_origin.clone())?;
        // Created (a file), migrated and seeded once, here (by the API
        // server's code in a process of its own): the workers never do.
        database::prepare(&api_program, &database).map_err(|e| match e {
            database::PrepareError::Database(line) => anyhow::anyhow!("{database_origin}: {line}"),
            program => program.into(),
        })?;
        // A file is known by its absolute path from here on. A server needs
        // nothing more of the supervisor: no account checks, no hold, no watch.
        match database {
            Location::Sqlite(path) => Location::Sqlite(absolute(&path)?),
            Location::Postgres(url) => {
                output::line("supervisor", &format!("database: PostgreSQL {url}"));
                Location::Postgres(url)
            }
        }
    } else {
        Location::Sqlite(PathBuf::new())
    };

    let server_user = account::resolve(args.user.as_deref())?;
    let servers_run = match role {
        HostRole::All => "the API and static servers run",
        HostRole::Workers => "the API workers run",
        HostRole::Front => "the static server runs",
    };
    let mut companions = database::Companions::default();
    match &server_user {
        Some(user) => {
            use account::Need;
            if role.runs_nginx() {
                account::check(user, &static_program, Need::Execute, "the static server")?;
                account::check(user, &assets, Need::Read, "the assets directory")?;
            }
            if role.runs_workers() {
                account::check(user, &api_program, Need::Execute, "the API server")?;
            }
            if let (true, Location::Sqlite(database)) = (role.runs_workers(), &database) {
                let database_dir = database.parent().unwrap_or(Path::new("/"));
                account::check(user, database_dir, Need::Enter, "the database's directory")?;
                let identity = crate::store::identity::usable(database)
                    .with_context(|| format!("database {}", database.display()))?;
                companions
                    // Prepared a moment ago, above.
                    .prepare(user, database, identity, |_| Ok(()))
                    .with_context(|| {
                        format!("cannot make {} {}'s", database.display(), user.name)
                    })?;
            }
            output::line(
                "supervisor",
                &format!("{servers_run} as {} (uid {})", user.name, user.uid),
            );
        }
        None if nix::unistd::Uid::effective().is_root() => output::line(
            "supervisor",
            &format!("warning: {servers_run} as root (--user root)"),
        ),
        None => {}
    }

    // Bind every server socket now: they stay open for the stack's lifetime.
    let mut sockets = std::collections::HashMap::new();
    let mut bind = |name: String, port: &mut u16| -> anyhow::Result<()> {
        let flag = match name.as_str() {
            "static" => "--static-port",
            "nginx" => "--port",
            _ => "--api-base-port",
        };
        let listener = crate::listen::bind(plan.bind, *port).map_err(|e| {
            crate::cli::listen_error(e, flag).context(format!("{name} cannot listen"))
        })?;
        *port = listener.local_addr()?.port();
        sockets.insert(name, listener);
        Ok(())
    };
    if role.runs_nginx() {
        bind("static".into(), &mut plan.static_port)?;
    }
    for (i, port) in plan.api_ports.iter_mut().enumerate() {
        bind(crate::plan::worker_name(&plan.worker_prefix, i + 1), port)?;
    }
    if role.runs_nginx() {
        // nginx binds the front door itself; make sure it is free (or pick one).
        let mut front = plan.front_port;
        bind("nginx".into(), &mut front)?;
        sockets.remove("nginx");
        plan.front_port = front;
    }
    // The admin endpoint: loopback only, whatever --bind says.
    let admin_listener = crate::listen::bind(std::net::Ipv4Addr::LOCALHOST.into(), args.admin_port)
        .map_err(|e| {
            crate::cli::listen_error(e, "--admin-port").context("the admin endpoint cannot listen")
        })?;
    let admin_address = admin_listener.local_addr()?;
    let admin = admin::AdminView::shared(plan.connect_ip(), admin::nginx_status_socket(&run_dir));

    let host = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let announce = if role.runs_nginx() {
        let url = format!("http://{}:{}/", host(plan.connect_ip()), plan.front_port);
        format!("gallery is up: open {url}")
    } else {
        let workers: Vec<String> = plan
            .children()
            .iter()
            .map(|c| format!("{} on {}:{}", c.name, host(plan.bind), c.port))
            .collect();
        format!(
            "gallery workers are up: {} (--role workers: no nginx here; a front adds each with --upstream HOST:PORT)",
            workers.join(", ")
        )
    };
    let settings = core::Settings {
        policy: RestartPolicy {
            min_uptime: args.min_uptime,
            max_restarts: args.max_restarts,
            window: args.restart_window,
            cooldown: args.cooldown,
            ..RestartPolicy::default()
        },
        grace: args.grace_period,
        start_timeout: args.start_timeout,
        health_misses: args.health_misses,
        api_base_port: args.plan.api_base_port,
        supervisor_pid: std::process::id(),
        announce,
        worker_prefix: plan.worker_prefix.clone(),
        remote: plan.remote.clone(),
        epoch: (Instant::now(), SystemTime::now()),
    };
    let executor = stack::Executor {
        core: core::Core::new(settings, plan.children()),
        launcher: stack::Launcher {
            api_program,
            static_program,
            nginx,
            run_dir: run_dir.clone(),
            assets,
            database,
            synchronous: args.synchronous,
            server_user,
            bind: plan.bind,
            cors_origins: plan.cors_origins.clone(),
            server_threads: stack::server_threads(plan.api_ports.len()),
        },
        watchdog: stack::Watchdog {
            interval: args.health_interval,
            timeout: args.health_timeout,
        },
        grace: args.grace_period,
        plan,
        sockets,
        access_log: stack::collect_access_log()?,
        companions,
        admin: admin.clone(),
    };
    // What to checkpoint at exit: the file the supervisor held (see below).
    let held_database = match (&executor.launcher.server_user, &executor.launcher.database) {
        (Some(_), Location::Sqlite(path)) if role.runs_workers() => {
            Some((path.clone(), executor.launcher.api_program.clone()))
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    output::line(
        "supervisor",
        &format!("admin: http://{admin_address}/ (status page; metrics at /metrics)"),
    );
    let result = runtime.block_on(async move {
        tokio::spawn(async move {
            if let Err(e) = admin::serve(admin_listener, admin).await {
                output::line("supervisor", &format!("the admin endpoint stopped: {e}"));
            }
        });
        executor.run().await
    });
    // Lets go of the database (the hold is the watch task's), every worker
    // being gone: then one last connection, as root, checkpoints the WAL
    // into the file and removes -wal and -shm, as the last connection to
    // close always does, so that a copy of the file alone is complete.
    drop(runtime);
    // Not after a stop at once (a second signal): nothing waits then.
    if let Some((path, api_program)) = held_database
        && result.is_ok()
        && crate::store::identity::usable(&path).is_ok()
        && let Err(e) = database::checkpoint_at_exit(&api_program, &path)
    {
        output::line(
            "supervisor",
            &format!(
                "database {}: cannot checkpoint it at exit: {e}",
                path.display()
            ),
        );
    }
    state::remove(&run_dir);
    output::flush(std::time::Duration::from_secs(2));
    result
}
