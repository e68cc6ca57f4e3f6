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
//! Everything runs on one current-thread runtime: one thread forks every
//! child (which `PR_SET_PDEATHSIG` requires) and one event loop owns all
//! state, so there are no locks. Sub-modules: `plan` (children from flags),
//! `spawn` (one child process), `policy` (restart decisions), `probe`
//! (readiness), `output` (prefixed logs), `state` (`state.json`, `status`),
//! `lock` (one supervisor per run directory).

mod lock;
mod output;
pub mod plan;
mod policy;
mod probe;
mod spawn;
pub mod state;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::{StackArgs, SupervisorArgs, SupervisorCommand};
use plan::{ChildSpec, Plan, Role};
pub use policy::{Decision, RestartPolicy, RestartTracker};
use spawn::Launch;
use state::{ChildState, Phase, StackState};

/// How long a new child may take to answer before it is killed and retried.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (events, inbox) = mpsc::unbounded_channel();
    let mut stack = Stack {
        width: output::name_width(slots.iter().map(|s| s.spec.name.len())),
        slots,
        plan,
        nginx,
        run_dir,
        policy,
        grace: Duration::from_secs(args.grace_period),
        events,
        up: false,
    };
    let result = runtime.block_on(stack.supervise(inbox));
    state::remove(&stack.run_dir);
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

/// One child and everything the supervisor knows about it.
struct Slot {
    spec: ChildSpec,
    launch: Launch,
    /// The socket every generation serves on; dropped when the child fails.
    listener: Option<TcpListener>,
    pid: Option<u32>,
    /// Bumped at every start, so events about an earlier process are ignored.
    generation: u64,
    started: Instant,
    phase: Phase,
    restarts: u32,
    last_exit: Option<String>,
    tracker: RestartTracker,
}

impl Slot {
    fn new(spec: ChildSpec, launch: Launch, listener: Option<TcpListener>) -> Slot {
        Slot {
            spec,
            launch,
            listener,
            pid: None,
            generation: 0,
            started: Instant::now(),
            phase: Phase::Starting,
            restarts: 0,
            last_exit: None,
            tracker: RestartTracker::default(),
        }
    }

    fn is_settled(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Failed)
    }
}

enum Event {
    Exited {
        slot: usize,
        generation: u64,
        status: String,
    },
    Ready {
        slot: usize,
        generation: u64,
    },
    NotReady {
        slot: usize,
        generation: u64,
    },
    RestartDue {
        slot: usize,
        generation: u64,
    },
}

/// Why supervision ended.
enum Stop {
    Signal(&'static str),
    Failed(anyhow::Error),
}

struct Stack {
    slots: Vec<Slot>,
    plan: Plan,
    nginx: PathBuf,
    run_dir: PathBuf,
    policy: RestartPolicy,
    grace: Duration,
    width: usize,
    events: mpsc::UnboundedSender<Event>,
    /// True once nginx first answered and the stack was announced.
    up: bool,
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(number)) => match Signal::try_from(number) {
            Ok(signal) => format!("signal {number} ({signal})"),
            Err(_) => format!("signal {number}"),
        },
        _ => status.to_string(),
    }
}

impl Stack {
    fn say(&self, text: &str) {
        output::line(self.width, "supervisor", text);
    }

    fn address(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.plan.bind, port)
    }

    fn nginx_slot(&self) -> usize {
        self.slots.len() - 1
    }

    fn write_state(&self) {
        let snapshot = StackState {
            supervisor_pid: std::process::id(),
            children: self
                .slots
                .iter()
                .map(|slot| ChildState {
                    name: slot.spec.name.clone(),
                    role: slot.spec.role,
                    pid: slot.pid,
                    port: slot.spec.port,
                    state: slot.phase,
                    restarts: slot.restarts,
                    last_exit: slot.last_exit.clone(),
                })
                .collect(),
        };
        if let Err(e) = state::write(&self.run_dir, &snapshot) {
            self.say(&format!(
                "cannot write {}: {e}",
                state::path(&self.run_dir).display()
            ));
        }
    }

    /// Starts a new generation of a child.
    fn start(&mut self, index: usize) {
        let width = self.width;
        let events = self.events.clone();
        let address = self.address(self.slots[index].spec.port);
        let slot = &mut self.slots[index];
        slot.generation += 1;
        slot.phase = Phase::Starting;
        slot.started = Instant::now();
        let generation = slot.generation;
        let name = slot.spec.name.clone();
        let role = slot.spec.role;
        match spawn::spawn(&slot.launch) {
            Ok(mut child) => {
                slot.pid = child.id();
                let pid = slot.pid.unwrap_or_default();
                if let Some(stdout) = child.stdout.take() {
                    tokio::spawn(output::forward(width, name.clone(), stdout));
                }
                if let Some(stderr) = child.stderr.take() {
                    tokio::spawn(output::forward(width, name.clone(), stderr));
                }
                // One task per generation: it reports readiness (or its
                // absence) and then the exit; the probe stops with the process.
                tokio::spawn(async move {
                    let readiness = probe::until_ready(role, address, READY_TIMEOUT);
                    tokio::pin!(readiness);
                    let mut probing = true;
                    let status = loop {
                        tokio::select! {
                            status = child.wait() => break status,
                            ready = &mut readiness, if probing => {
                                probing = false;
                                let _ = events.send(if ready {
                                    Event::Ready { slot: index, generation }
                                } else {
                                    Event::NotReady { slot: index, generation }
                                });
                            }
                        }
                    };
                    let status = match status {
                        Ok(status) => describe(status),
                        Err(e) => format!("lost track of the process: {e}"),
                    };
                    let _ = events.send(Event::Exited {
                        slot: index,
                        generation,
                        status,
                    });
                });
                self.say(&format!("started {name} (pid {pid})"));
            }
            Err(e) => {
                slot.pid = None;
                let status = format!("could not start {}: {e}", slot.launch.program.display());
                let _ = events.send(Event::Exited {
                    slot: index,
                    generation,
                    status,
                });
            }
        }
        self.write_state();
    }

    fn on_exit(&mut self, index: usize, generation: u64, status: String) {
        if self.slots[index].generation != generation {
            return;
        }
        let slot = &mut self.slots[index];
        let pid = slot.pid.take();
        slot.last_exit = Some(status.clone());
        let name = slot.spec.name.clone();
        let pid_text = pid.map_or("no pid".to_string(), |p| format!("pid {p}"));
        if let Some(pid) = pid {
            // nginx's workers (and anything else in the group) go with it.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let decision = slot
            .tracker
            .on_exit(&self.policy, slot.started, Instant::now());
        self.say(&format!("{name} ({pid_text}) exited: {status}"));
        match decision {
            Decision::RestartAfter(delay) if delay.is_zero() => {
                self.slots[index].restarts += 1;
                self.say(&format!("restarting {name} now"));
                self.start(index);
            }
            Decision::RestartAfter(delay) => {
                let slot = &mut self.slots[index];
                slot.phase = Phase::Backoff;
                self.say(&format!("restarting {name} in {} ms", delay.as_millis()));
                let events = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(Event::RestartDue {
                        slot: index,
                        generation,
                    });
                });
                self.write_state();
            }
            Decision::GiveUp => {
                let slot = &mut self.slots[index];
                slot.phase = Phase::Failed;
                // Close its socket so nginx stops waiting on it.
                slot.listener = None;
                self.say(&format!(
                    "{name} exited {} times within {} s: marked failed, not restarting",
                    self.policy.max_restarts,
                    self.policy.window.as_secs()
                ));
                self.write_state();
            }
        }
    }

    fn on_ready(&mut self, index: usize, generation: u64) {
        let slot = &mut self.slots[index];
        if slot.generation != generation || slot.phase != Phase::Starting {
            return;
        }
        slot.phase = Phase::Running;
        let (name, pid, port) = (
            slot.spec.name.clone(),
            slot.pid.unwrap_or_default(),
            slot.spec.port,
        );
        if self.up {
            self.say(&format!("{name} (pid {pid}) is answering on port {port}"));
        }
        self.write_state();
    }

    fn on_not_ready(&mut self, index: usize, generation: u64) {
        let slot = &self.slots[index];
        if slot.generation != generation || slot.phase != Phase::Starting {
            return;
        }
        self.say(&format!(
            "{} did not answer within {} s: killing it",
            slot.spec.name,
            READY_TIMEOUT.as_secs()
        ));
        if let Some(pid) = slot.pid {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Called after every event while starting: starts nginx once the
    /// servers are settled, and announces the stack once nginx answers.
    fn advance_start(&mut self) -> Result<(), anyhow::Error> {
        let nginx = self.nginx_slot();
        let servers = &self.slots[..nginx];
        if self.slots[nginx].generation == 0 {
            if !servers.iter().all(Slot::is_settled) {
                return Ok(());
            }
            let failed = |slot: &&Slot| slot.phase == Phase::Failed;
            if let Some(slot) = servers
                .iter()
                .find(|s| s.spec.role == Role::Static)
                .filter(failed)
            {
                anyhow::bail!(
                    "the static server failed to start ({}); see its output above",
                    slot.last_exit.as_deref().unwrap_or("no exit status")
                );
            }
            if servers
                .iter()
                .filter(|s| s.spec.role == Role::Api)
                .all(|s| s.phase == Phase::Failed)
            {
                anyhow::bail!("every API worker failed to start; see their output above");
            }
            let config = crate::nginx::render(&self.plan);
            let path = self.run_dir.join(crate::nginx::CONFIG_FILE);
            std::fs::write(&path, config)
                .with_context(|| format!("cannot write {}", path.display()))?;
            crate::nginx::check(&self.nginx, &self.run_dir)?;
            self.start(nginx);
            return Ok(());
        }
        match self.slots[nginx].phase {
            Phase::Running => {
                self.up = true;
                for slot in &self.slots {
                    let pid = slot.pid.map_or("-".to_string(), |p| p.to_string());
                    let state = if slot.phase == Phase::Running {
                        String::new()
                    } else {
                        format!("  ({})", slot.phase.as_str())
                    };
                    self.say(&format!(
                        "{:<w$}  pid {pid:>7}  port {}{state}",
                        slot.spec.name,
                        slot.spec.port,
                        w = self.width
                    ));
                }
                let host = match self.plan.bind {
                    ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                    ip => ip.to_string(),
                };
                self.say(&format!(
                    "gallery is up: open http://{host}:{}/",
                    self.plan.front_port
                ));
                Ok(())
            }
            Phase::Failed => anyhow::bail!(
                "nginx failed to start ({}); see its output above",
                self.slots[nginx]
                    .last_exit
                    .as_deref()
                    .unwrap_or("no exit status")
            ),
            _ => Ok(()),
        }
    }

    /// Runs the stack until a signal or a start-up failure, then stops it.
    async fn supervise(&mut self, mut inbox: mpsc::UnboundedReceiver<Event>) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        for index in 0..self.nginx_slot() {
            self.start(index);
        }
        let stop = loop {
            let event = tokio::select! {
                _ = term.recv() => break Stop::Signal("SIGTERM"),
                _ = int.recv() => break Stop::Signal("SIGINT"),
                event = inbox.recv() => event.expect("the stack holds a sender"),
            };
            match event {
                Event::Exited {
                    slot,
                    generation,
                    status,
                } => self.on_exit(slot, generation, status),
                Event::Ready { slot, generation } => self.on_ready(slot, generation),
                Event::NotReady { slot, generation } => self.on_not_ready(slot, generation),
                Event::RestartDue { slot, generation } => {
                    if self.slots[slot].generation == generation
                        && self.slots[slot].phase == Phase::Backoff
                    {
                        self.slots[slot].restarts += 1;
                        self.start(slot);
                    }
                }
            }
            if !self.up
                && let Err(error) = self.advance_start()
            {
                break Stop::Failed(error);
            }
        };
        if let Stop::Signal(name) = &stop {
            self.say(&format!(
                "{name} received: stopping (a second signal stops at once)"
            ));
        }
        let forced = self.stop(&mut inbox, &mut term, &mut int).await;
        match stop {
            Stop::Failed(error) => Err(error),
            Stop::Signal(_) if forced => {
                anyhow::bail!("stopped at once on a second signal; children were killed")
            }
            Stop::Signal(_) => {
                self.say("stopped");
                Ok(())
            }
        }
    }

    fn alive(&self, indices: &[usize]) -> Vec<usize> {
        indices
            .iter()
            .copied()
            .filter(|&i| self.slots[i].pid.is_some())
            .collect()
    }

    fn signal_all(&self, indices: &[usize], signal: Signal) {
        for &i in indices {
            if let Some(pid) = self.slots[i].pid {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
        }
    }

    fn kill_groups(&self, indices: &[usize]) {
        for &i in indices {
            if let Some(pid) = self.slots[i].pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }

    /// Stops in order; returns true if a second signal forced it.
    async fn stop(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> bool {
        for slot in &mut self.slots {
            if slot.phase != Phase::Failed {
                slot.phase = Phase::Stopping;
            }
        }
        self.write_state();
        let nginx = vec![self.nginx_slot()];
        let servers: Vec<usize> = (0..self.nginx_slot()).collect();
        let everyone: Vec<usize> = (0..self.slots.len()).collect();
        // nginx first (SIGQUIT: finish requests, then exit), then the servers (SIGTERM: drain).
        for (group, signal) in [(&nginx, Signal::SIGQUIT), (&servers, Signal::SIGTERM)] {
            self.signal_all(group, signal);
            let deadline = tokio::time::Instant::now() + self.grace;
            while !self.alive(group).is_empty() {
                tokio::select! {
                    _ = term.recv() => { self.kill_groups(&everyone); return true; }
                    _ = int.recv() => { self.kill_groups(&everyone); return true; }
                    _ = tokio::time::sleep_until(deadline) => {
                        for i in self.alive(group) {
                            self.say(&format!("{} did not stop within {} s: killing it", self.slots[i].spec.name, self.grace.as_secs()));
                        }
                        self.kill_groups(group);
                        break;
                    }
                    event = inbox.recv() => {
                        if let Some(Event::Exited { slot, generation, status }) = event
                            && self.slots[slot].generation == generation
                            && let Some(pid) = self.slots[slot].pid.take()
                        {
                            self.say(&format!("{} (pid {pid}) stopped: {status}", self.slots[slot].spec.name));
                            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                        }
                    }
                }
            }
        }
        false
    }
}
