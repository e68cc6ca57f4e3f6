//! The running stack: one event loop that owns every child's state.
//!
//! Each child generation gets one task that reports its readiness (or its
//! absence) and then its exit; restart timers report when they are due;
//! signals end the loop. Everything that changes a child happens here, on
//! the supervisor's single runtime thread, so there are no locks and every
//! child is forked from the same long-lived thread (which
//! `PR_SET_PDEATHSIG` needs). Events about an earlier generation of a child
//! are recognised by their generation number and ignored.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::plan::{ChildSpec, Plan, Role};
use super::policy::{Decision, RestartPolicy, RestartTracker};
use super::spawn::{self, Launch};
use super::state::{self, ChildState, Phase, StackState};
use super::{output, probe};

/// How long a new child may take to answer before it is killed and retried.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the children in `slots` and supervises them until a stop signal
/// (Ok) or a failed start (Err), then stops them in order.
pub(super) async fn supervise(
    slots: Vec<Slot>,
    plan: Plan,
    nginx: PathBuf,
    run_dir: PathBuf,
    policy: RestartPolicy,
    grace: Duration,
) -> anyhow::Result<()> {
    let (events, inbox) = mpsc::unbounded_channel();
    let mut stack = Stack {
        width: output::name_width(slots.iter().map(|s| s.spec.name.len())),
        slots,
        plan,
        nginx,
        run_dir,
        policy,
        grace,
        events,
        up: false,
    };
    stack.supervise(inbox).await
}

/// One child and everything the supervisor knows about it.
pub(super) struct Slot {
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
    pub(super) fn new(spec: ChildSpec, launch: Launch, listener: Option<TcpListener>) -> Slot {
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
        SocketAddr::new(self.plan.connect_ip(), port)
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
                let host = match self.plan.connect_ip() {
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
