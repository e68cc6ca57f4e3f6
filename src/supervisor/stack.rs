//! The executor: performs the core's actions and turns everything that
//! happens into events for it. It holds the sockets, the child processes'
//! tasks and the pending replies, and decides nothing.
//!
//! Everything runs on the supervisor's single runtime thread, so every
//! child is forked from the same long-lived thread (which
//! `PR_SET_PDEATHSIG` needs). Nothing here blocks that thread: output goes
//! through `output`'s queue, `state.json` and replies through a writer
//! thread (a reply leaves only after the state it follows is on disk), and
//! `nginx -t` runs on the blocking pool.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::account::ServerUser;
use super::control::{self, Incoming, Response};
use super::core::{Action, Command, Core, Event, ProcId, ReplyTo, ServiceState};
use super::spawn::{self, Launch};
use super::state::{self, StackState};
use super::{output, probe};
use crate::cli::{ApiServerArgs, StaticServerArgs};
use crate::plan::{ChildSpec, Plan, Role};
use crate::store::Location;

/// How each kind of child is started.
pub(super) struct Launcher {
    pub api_program: PathBuf,
    pub static_program: PathBuf,
    pub nginx: PathBuf,
    pub run_dir: PathBuf,
    pub assets: PathBuf,
    /// The database the workers use (created and migrated by now).
    pub database: crate::store::Location,
    pub synchronous: crate::store::Synchronous,
    /// The account the API and static servers run as (`None`: as the supervisor).
    pub server_user: Option<ServerUser>,
    pub bind: IpAddr,
    pub cors_origins: Vec<String>,
    /// Each server's `--threads` (see [`server_threads`]).
    pub server_threads: u16,
}

/// The threads each server the supervisor starts gets: the machine's cores
/// shared among the static server and `api_workers` workers, at least one
/// each (so one each, on a current-thread runtime, when they outnumber the
/// cores: the 2-core case measured 8 % more requests through nginx so).
/// nginx's workers and the clients take their share of the cores too, so
/// rounding down is the right way.
pub(super) fn server_threads(api_workers: usize) -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / (api_workers + 1)).clamp(1, 1024) as u16
}

impl Launcher {
    fn launch(&self, spec: &ChildSpec, socket: Option<&TcpListener>) -> Launch {
        let listen_fd = socket.map(|s| s.as_raw_fd());
        let mut env = Vec::new();
        let (program, args, parent_death_signal, user) = match spec.role {
            Role::Static => {
                let args = StaticServerArgs {
                    port: spec.port,
                    bind: self.bind,
                    path: self.assets.clone(),
                    // Through the front door the API is the page's own origin.
                    api_origin: Vec::new(),
                    // nginx's access line is the one line per request.
                    quiet_requests: true,
                    threads: self.server_threads,
                };
                let user = self.server_user.clone();
                (
                    self.static_program.clone(),
                    args.to_args(),
                    Signal::SIGKILL,
                    user,
                )
            }
            Role::Api => {
                let mut args =
                    ApiServerArgs::try_parse_defaults().expect("api-server's defaults parse");
                args.port = spec.port;
                args.bind = self.bind;
                args.database = match &self.database {
                    Location::Sqlite(path) => path.to_string_lossy().into_owned(),
                    // Passed in the environment, not the argument list (see
                    // `ApiServerArgs::to_env`).
                    Location::Postgres(url) => url.with_password().to_string(),
                };
                args.name = spec.name.clone();
                args.cors_origin = self.cors_origins.clone();
                // The supervisor created the database; a worker never does.
                args.existing_database = true;
                args.synchronous = self.synchronous;
                // nginx's access line is the one line per request.
                args.quiet_requests = true;
                args.threads = self.server_threads;
                let user = self.server_user.clone();
                env = args.to_env();
                (
                    self.api_program.clone(),
                    args.to_args(),
                    Signal::SIGKILL,
                    user,
                )
            }
            // SIGTERM so nginx's master takes its workers down with it. The
            // master keeps the supervisor's account; it drops its workers'.
            Role::Nginx => {
                // A master that was killed leaves its status socket behind,
                // and the next one could not listen there.
                let _ = std::fs::remove_file(super::admin::nginx_status_socket(&self.run_dir));
                (
                    self.nginx.clone(),
                    crate::nginx::args(&self.run_dir),
                    Signal::SIGTERM,
                    None,
                )
            }
        };
        Launch {
            program,
            args,
            env,
            listen_fd,
            parent_death_signal,
            user: user.map(|u| (u.uid, u.gid)),
        }
    }
}

/// The watchdog's timing.
pub(super) struct Watchdog {
    pub interval: Duration,
    pub timeout: Duration,
}

/// What reaches the event loop.
enum Input {
    Event(Event),
    Control(Incoming),
    Signal(&'static str),
}

/// Work for the writer thread, done in order.
enum Job {
    State(StackState),
    Reply(oneshot::Sender<Response>, Response),
}

pub(super) struct Executor {
    pub core: Core,
    pub launcher: Launcher,
    pub plan: Plan,
    pub watchdog: Watchdog,
    pub grace: Duration,
    /// Every server's socket, by child name.
    pub sockets: HashMap<String, TcpListener>,
    /// Where nginx sends its access log (see [`collect_access_log`]).
    pub access_log: SocketAddr,
    /// The supervisor's own hold on the database (see [`super::database::Companions`]).
    pub companions: super::database::Companions,
    /// What the admin endpoint shows (see `super::admin`).
    pub admin: super::admin::SharedView,
}

struct Running {
    inbox: mpsc::UnboundedSender<Input>,
    tasks: HashMap<ProcId, Vec<JoinHandle<()>>>,
    replies: HashMap<ReplyTo, oneshot::Sender<Response>>,
    next_reply: ReplyTo,
    writer: Option<(std::sync::mpsc::Sender<Job>, std::thread::JoinHandle<()>)>,
}

impl Executor {
    /// Runs the stack until the core exits; returns its result.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let run_dir = self.launcher.run_dir.clone();
        let (inbox, mut events) = mpsc::unbounded_channel();
        let control_socket = control::bind(&run_dir)?;
        let (requests, mut incoming) = mpsc::unbounded_channel();
        let connections = std::sync::Arc::new(());
        let server = tokio::spawn(control::serve(
            control_socket,
            requests,
            connections.clone(),
        ));
        {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                while let Some(request) = incoming.recv().await {
                    let _ = inbox.send(Input::Control(request));
                }
            });
        }
        listen_for_signals(&inbox)?;
        // A server has no file to watch; its trouble is the workers' to report.
        if let (true, Location::Sqlite(path)) =
            (self.plan.role.runs_workers(), &self.launcher.database)
        {
            tokio::spawn(watch_database(
                path.clone(),
                self.launcher.server_user.clone(),
                std::mem::take(&mut self.companions),
                self.launcher.api_program.clone(),
            ));
        }
        let (jobs, job_queue) = std::sync::mpsc::channel();
        let state_dir = run_dir.clone();
        let writer = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || write_jobs(&state_dir, job_queue))?;
        let mut running = Running {
            inbox,
            tasks: HashMap::new(),
            replies: HashMap::new(),
            next_reply: 0,
            writer: Some((jobs, writer)),
        };
        let mut event = Event::Start;
        loop {
            if let Some(result) = self.feed(event, &mut running) {
                // Let the answers already given reach their clients.
                server.abort();
                let deadline = Instant::now() + Duration::from_secs(1);
                while std::sync::Arc::strong_count(&connections) > 1 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return result;
            }
            event = loop {
                let input = events.recv().await.expect("the executor holds a sender");
                match input {
                    Input::Event(event) => {
                        if let Event::Exited { proc, .. } = &event {
                            for task in running.tasks.remove(proc).unwrap_or_default() {
                                task.abort();
                            }
                        }
                        break event;
                    }
                    Input::Control(Incoming { command, respond }) => {
                        running.next_reply += 1;
                        running.replies.insert(running.next_reply, respond);
                        break Event::Control {
                            reply: Some(running.next_reply),
                            command,
                        };
                    }
                    Input::Signal(name) => match name {
                        "SIGTERM" | "SIGINT" | "SIGQUIT" => break Event::StopSignal(name.into()),
                        "SIGHUP" => break control_event(Command::Reload),
                        "SIGTTIN" => break control_event(Command::AddWorker),
                        "SIGTTOU" => break control_event(Command::RemoveWorker),
                        other => output::line("supervisor", &format!("{other} received: ignored")),
                    },
                }
            };
        }
    }

    /// Feeds one event and everything that follows from it at once.
    fn feed(&mut self, event: Event, running: &mut Running) -> Option<anyhow::Result<()>> {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for action in self.core.on_event(event, Instant::now()) {
                match self.perform(action, running) {
                    Outcome::Nothing => {}
                    Outcome::Event(event) => events.push_back(event),
                    Outcome::Exit(result) => return Some(result),
                }
            }
        }
        None
    }

    fn address(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.plan.connect_ip(), port)
    }

    fn perform(&mut self, action: Action, running: &mut Running) -> Outcome {
        let send = |inbox: &mpsc::UnboundedSender<Input>, event| {
            let _ = inbox.send(Input::Event(event));
        };
        match action {
            Action::Spawn { proc, spec } => {
                let launch = self.launcher.launch(&spec, self.sockets.get(&spec.name));
                let mut child = match spawn::spawn(&launch) {
                    Ok(child) => child,
                    Err(e) => {
                        let status = format!("could not start {}: {e}", launch.program.display());
                        return Outcome::Event(Event::Exited { proc, status });
                    }
                };
                let pid = child.id().unwrap_or_default();
                for stream in [
                    child
                        .stdout
                        .take()
                        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
                    child.stderr.take().map(|s| Box::new(s) as Box<_>),
                ]
                .into_iter()
                .flatten()
                {
                    tokio::spawn(output::forward(spec.name.clone(), stream));
                }
                let inbox = running.inbox.clone();
                tokio::spawn(async move {
                    let status = match child.wait().await {
                        Ok(status) => describe(status),
                        Err(e) => format!("lost track of the process: {e}"),
                    };
                    send(&inbox, Event::Exited { proc, status });
                });
                Outcome::Event(Event::Spawned { proc, pid })
            }
            Action::Probe { proc, pid, spec } => {
                let (inbox, address) = (running.inbox.clone(), self.address(spec.port));
                let status_socket = super::admin::nginx_status_socket(&self.launcher.run_dir);
                let task = tokio::spawn(async move {
                    probe::until_ready(spec.role, address, pid).await;
                    if spec.role == Role::Nginx {
                        // nginx makes its unix sockets 0666; this one is the
                        // supervisor's alone (it exists once nginx answers).
                        use std::os::unix::fs::PermissionsExt;
                        let private = std::fs::Permissions::from_mode(0o600);
                        let _ = std::fs::set_permissions(&status_socket, private);
                    }
                    send(&inbox, Event::Ready { proc });
                });
                running.tasks.entry(proc).or_default().push(task);
                Outcome::Nothing
            }
            Action::Watch { proc, spec } => {
                let (inbox, address) = (running.inbox.clone(), self.address(spec.port));
                let (interval, timeout) = (self.watchdog.interval, self.watchdog.timeout);
                let task = tokio::spawn(async move {
                    // A check starts every interval whatever the last one
                    // took, so a hung child is caught in interval × misses
                    // + timeout.
                    let start = tokio::time::Instant::now() + interval;
                    let mut ticks = tokio::time::interval_at(start, interval);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        let event = if probe::healthy(spec.role, address, timeout).await {
                            Event::HealthOk { proc }
                        } else {
                            Event::HealthMiss { proc }
                        };
                        send(&inbox, event);
                    }
                });
                running.tasks.entry(proc).or_default().push(task);
                Outcome::Nothing
            }
            Action::Signal { pid, signal, group } => {
                let pid = Pid::from_raw(pid as i32);
                let _ = if group {
                    killpg(pid, signal)
                } else {
                    kill(pid, signal)
                };
                Outcome::Nothing
            }
            Action::Bind { token, sockets } => {
                let mut bound = Vec::new();
                for (name, port) in sockets {
                    match crate::listen::bind(self.plan.bind, port) {
                        Ok(listener) => bound.push((name, listener)),
                        Err(e) => {
                            let result = Err(format!("{name}: {e}"));
                            return Outcome::Event(Event::Bound { token, result });
                        }
                    }
                }
                let mut ports = Vec::new();
                for (name, listener) in bound {
                    ports.push(listener.local_addr().map_or(0, |a| a.port()));
                    self.sockets.insert(name, listener);
                }
                Outcome::Event(Event::Bound {
                    token,
                    result: Ok(ports),
                })
            }
            Action::CloseSocket { slot } => {
                self.sockets.remove(&slot);
                Outcome::Nothing
            }
            Action::ApplyNginx {
                token,
                api_ports,
                reload_pid,
            } => {
                let plan = Plan {
                    api_ports,
                    ..self.plan.clone()
                };
                let status_socket = super::admin::nginx_status_socket(&self.launcher.run_dir);
                let config =
                    crate::nginx::render_supervised(&plan, self.access_log, &status_socket);
                let (nginx, run_dir) = (self.launcher.nginx.clone(), self.launcher.run_dir.clone());
                let inbox = running.inbox.clone();
                let patience = self.grace + Duration::from_secs(5);
                tokio::spawn(async move {
                    let installed = tokio::task::spawn_blocking(move || {
                        crate::nginx::install(&nginx, &run_dir, &config)
                    })
                    .await;
                    let result = match installed {
                        Ok(Ok(())) => match reload_pid {
                            Some(pid) => reload_nginx(pid, patience).await,
                            None => Ok(()),
                        },
                        Ok(Err(e)) => Err(format!("{e:#}")),
                        Err(e) => Err(format!("nginx -t did not finish: {e}")),
                    };
                    send(&inbox, Event::NginxApplied { token, result });
                });
                Outcome::Nothing
            }
            Action::WriteState(snapshot) => {
                self.admin
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .state = Some(snapshot.clone());
                if let Some((jobs, _)) = &running.writer {
                    let _ = jobs.send(Job::State(snapshot));
                }
                Outcome::Nothing
            }
            Action::Reply { to, ok, message } => {
                if let (Some(respond), Some((jobs, _))) =
                    (running.replies.remove(&to), &running.writer)
                {
                    let _ = jobs.send(Job::Reply(respond, Response { ok, message }));
                }
                Outcome::Nothing
            }
            Action::Log(text) => {
                output::line("supervisor", &text);
                Outcome::Nothing
            }
            Action::Notify(service_state) => {
                let message = match service_state {
                    ServiceState::Ready => sd_notify::NotifyState::Ready,
                    ServiceState::Stopping => sd_notify::NotifyState::Stopping,
                };
                if let Err(e) = sd_notify::notify(&[message]) {
                    output::line(
                        "supervisor",
                        &format!("cannot notify the service manager: {e}"),
                    );
                }
                Outcome::Nothing
            }
            Action::Schedule { after, timer } => {
                let inbox = running.inbox.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    send(&inbox, Event::Timer(timer));
                });
                Outcome::Nothing
            }
            Action::Exit { result, notify } => {
                // Let the writer finish, then clear the run directory.
                if let Some((jobs, writer)) = running.writer.take() {
                    drop(jobs);
                    let _ = writer.join();
                }
                let run_dir = &self.launcher.run_dir;
                state::remove(run_dir);
                let _ = std::fs::remove_file(control::path(run_dir));
                self.sockets.clear();
                for to in notify {
                    if let Some(respond) = running.replies.remove(&to) {
                        let message = match &result {
                            Ok(()) => "stopped".to_string(),
                            Err(e) => e.clone(),
                        };
                        let _ = respond.send(Response {
                            ok: result.is_ok(),
                            message,
                        });
                    }
                }
                Outcome::Exit(result.map_err(anyhow::Error::msg))
            }
        }
    }
}

/// Receives nginx's access log (syslog datagrams on a loopback UDP port) on
/// a thread of its own, so it is drained whatever the event loop is doing,
/// and prints each line under `nginx`, as if read from its stdout.
///
/// nginx sends one datagram per request. Taking them one by one woke this
/// thread and the output thread for every request, which under load cost
/// the 2-core machine a tenth of the requests nginx could pass. So the
/// thread takes every datagram queued, hands them to the output as one
/// batch (one write), then rests for [`ACCESS_LOG_PACE`] while the next
/// ones queue up in the socket's receive buffer, made large enough to hold
/// them (lines are at most that much later on the terminal).
pub(super) fn collect_access_log() -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .context("cannot open a UDP port for nginx's access log")?;
    let address = socket.local_addr()?;
    enlarge_receive_buffer(&socket);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            let mut buffer = vec![0; 64 * 1024];
            let mut lines = output::Batch::new("nginx");
            // Wait for one datagram, then take every other one queued.
            while let Ok(length) = socket.recv(&mut buffer) {
                lines.push(syslog_message(&String::from_utf8_lossy(&buffer[..length])));
                while let Ok(length) = nix::sys::socket::recv(
                    socket.as_raw_fd(),
                    &mut buffer,
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                ) {
                    lines.push(syslog_message(&String::from_utf8_lossy(&buffer[..length])));
                }
                lines.send();
                std::thread::sleep(ACCESS_LOG_PACE);
            }
        })?;
    Ok(address)
}

/// How long the access-log thread rests between batches.
const ACCESS_LOG_PACE: Duration = Duration::from_millis(10);

/// The access log's receive buffer: room for well over a pace's worth of
/// datagrams at any rate nginx can reach on one machine (each costs about
/// a kilobyte of buffer, whatever its length).
const ACCESS_LOG_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Asks for [`ACCESS_LOG_BUFFER_BYTES`] of receive buffer: beyond the
/// system's `net.core.rmem_max` when running as root, up to it otherwise.
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &ACCESS_LOG_BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &ACCESS_LOG_BUFFER_BYTES);
    }
}

/// The message of a syslog datagram (`<190>Dec  2 05:52:55 nginx: TEXT`).
fn syslog_message(datagram: &str) -> &str {
    let text = datagram.trim_end_matches('\n');
    match text.strip_prefix('<').and_then(|_| text.split_once(": ")) {
        Some((_, message)) => message,
        None => text,
    }
}

enum Outcome {
    Nothing,
    Event(Event),
    Exit(anyhow::Result<()>),
}

fn control_event(command: Command) -> Event {
    Event::Control {
        reply: None,
        command,
    }
}

/// Says once, in the supervisor's own words, when the database file stops
/// being usable (removed, replaced, read-only, not a database) and when it
/// is usable again; the workers answer 503 meanwhile (see `store::identity`).
///
/// With a server account, it also holds whichever usable file is at the
/// path as an open connection would (so its `-wal` and `-shm` exist), and
/// prepares and makes a file put back by another account (root restoring a
/// backup) the account's.
async fn watch_database(
    path: PathBuf,
    server_user: Option<ServerUser>,
    mut companions: super::database::Companions,
    api_program: PathBuf,
) {
    // Which file it is does not matter to the workers: they reopen any
    // usable database that takes the old one's place.
    let mut trouble = None;
    let mut last_handover = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticks.tick().await;
        let usable = crate::store::identity::usable(&path);
        if let (Some(user), Ok(identity)) = (&server_user, usable) {
            // Preparing a new file runs a process: off the event loop.
            let (returned, prepared) = {
                let (user, path, api_program) = (user.clone(), path.clone(), api_program.clone());
                tokio::task::spawn_blocking(move || {
                    let prepared = companions.prepare(&user, &path, identity, |path| {
                        super::database::prepare(&api_program, &Location::Sqlite(path.into()))
                            .map_err(anyhow::Error::from)
                    });
                    (companions, prepared)
                })
                .await
                .expect("the database hold does not panic")
            };
            companions = returned;
            let text = match prepared {
                Ok(false) => None,
                Ok(true) => Some(format!("database {}: made {}'s", path.display(), user.name)),
                Err(e) => Some(format!(
                    "database {}: cannot prepare it for {}: {e:#}",
                    path.display(),
                    user.name
                )),
            };
            if let Some(text) = text.filter(|t| last_handover.as_ref() != Some(t)) {
                output::line("supervisor", &text);
                last_handover = Some(text);
            }
        }
        let now = usable.err();
        if now != trouble {
            let text = match now {
                Some(cause) => format!(
                    "database {}: {cause}; the workers answer 503 until a usable database is back at that path",
                    path.display()
                ),
                None => format!("database {}: usable again", path.display()),
            };
            output::line("supervisor", &text);
            trouble = now;
        }
    }
}

/// Forwards every signal the supervisor handles into the event loop. Every
/// catchable signal whose default would end the process is handled here:
/// the stop signals stop, SIGHUP/SIGTTIN/SIGTTOU are operations, the rest
/// are logged and ignored.
fn listen_for_signals(inbox: &mpsc::UnboundedSender<Input>) -> anyhow::Result<()> {
    let kinds = [
        ("SIGTERM", SignalKind::terminate()),
        ("SIGINT", SignalKind::interrupt()),
        ("SIGQUIT", SignalKind::quit()),
        ("SIGHUP", SignalKind::hangup()),
        ("SIGTTIN", SignalKind::from_raw(nix::libc::SIGTTIN)),
        ("SIGTTOU", SignalKind::from_raw(nix::libc::SIGTTOU)),
        ("SIGUSR1", SignalKind::user_defined1()),
        ("SIGUSR2", SignalKind::user_defined2()),
        ("SIGALRM", SignalKind::alarm()),
        ("SIGVTALRM", SignalKind::from_raw(nix::libc::SIGVTALRM)),
        ("SIGPROF", SignalKind::from_raw(nix::libc::SIGPROF)),
        ("SIGIO", SignalKind::io()),
        ("SIGPWR", SignalKind::from_raw(nix::libc::SIGPWR)),
        ("SIGXCPU", SignalKind::from_raw(nix::libc::SIGXCPU)),
        ("SIGXFSZ", SignalKind::from_raw(nix::libc::SIGXFSZ)),
        ("SIGSTKFLT", SignalKind::from_raw(nix::libc::SIGSTKFLT)),
    ];
    for (name, kind) in kinds {
        let mut stream = signal(kind)?;
        let inbox = inbox.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = inbox.send(Input::Signal(name));
            }
        });
    }
    Ok(())
}

/// SIGHUPs nginx's master and waits until the workers it had are gone, so
/// that no request is routed by the old config afterwards.
async fn reload_nginx(master: u32, patience: Duration) -> Result<(), String> {
    let old_workers: Vec<i32> = group_members(master as i32)
        .into_iter()
        .filter(|&pid| pid != master as i32)
        .collect();
    kill(Pid::from_raw(master as i32), Signal::SIGHUP)
        .map_err(|e| format!("cannot signal nginx (pid {master}): {e}"))?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let members = group_members(master as i32);
        if !old_workers.iter().any(|pid| members.contains(pid)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "nginx's old workers were still running {} s after the reload",
                patience.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live (not zombie) processes of process group `pgid`, from /proc.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Fields after the command name: state, ppid, pgrp, ...
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or("", |(_, rest)| rest)
                    .split_whitespace()
                    .collect();
                fields.first() != Some(&"Z")
                    && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// Writes `state.json` and releases replies, in the order they came: a
/// reply leaves only once the state before it is on disk.
fn write_jobs(run_dir: &std::path::Path, jobs: std::sync::mpsc::Receiver<Job>) {
    let write = |snapshot: &StackState| {
        if let Err(e) = state::write(run_dir, snapshot) {
            output::line(
                "supervisor",
                &format!("cannot write {}: {e}", state::path(run_dir).display()),
            );
        }
    };
    while let Ok(first) = jobs.recv() {
        // Of a burst of states only the last needs writing.
        let mut pending: Option<StackState> = None;
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::State(snapshot) => pending = Some(snapshot),
                Job::Reply(respond, response) => {
                    if let Some(snapshot) = pending.take() {
                        write(&snapshot);
                    }
                    let _ = respond.send(response);
                }
            }
            next = jobs.try_recv().ok();
        }
        if let Some(snapshot) = pending {
            write(&snapshot);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_datagrams_are_reduced_to_their_message() {
        assert_eq!(
            syslog_message("<190>Dec  2 05:52:55 nginx: 127.0.0.1 \"GET / HTTP/1.1\" 200"),
            "127.0.0.1 \"GET / HTTP/1.1\" 200"
        );
        assert_eq!(syslog_message("plain: text\n"), "plain: text");
    }
}
