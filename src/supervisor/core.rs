//! The supervisor's decisions, apart from all I/O: [`Core::on_event`] takes
//! what happened (a process started, answered, missed a health check or
//! exited; a timer fired; a control command or signal arrived; nginx took a
//! new config) and the time, and returns the [`Action`]s to perform (spawn,
//! signal, bind or close a socket, apply the nginx config, write
//! `state.json`, reply, log, schedule a timer, exit). The executor in
//! `stack.rs` performs them and feeds the outcomes back as events; it
//! decides nothing.
//!
//! Each slot (`static`, `api-K`, `nginx`) holds at most one *serving*
//! process, at most one *incoming* replacement (during `reload`/`restart`),
//! and any number of *draining* old processes (SIGTERMed, on a grace timer).
//! Processes are known by a [`ProcId`] that is never reused, so events about
//! a process that has been replaced are recognised and ignored.
//!
//! Lifecycle operations (`reload`/`restart`, `scale`) run one at a time from
//! a queue; `stop` (a command or a signal) preempts them. A stop goes in
//! order: nginx (SIGQUIT), then every server (SIGTERM), each on a grace
//! timer that ends in SIGKILL; a second stop signal kills everything at once.
//!
//! `state.json` is derived: after every event the snapshot is rebuilt and a
//! `WriteState` action is emitted when it changed, so the file always
//! matches the core.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use super::policy::{Decision, RestartPolicy, RestartTracker};
use super::state::{ChildState, Health, Phase, StackState};
use crate::plan::{ChildSpec, Role, Upstream, worker_name};

/// One process the core has asked for; never reused.
pub type ProcId = u64;
/// Who waits for the outcome of a control command.
pub type ReplyTo = u64;

/// An operator's request, from the control socket or a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Reload,
    Restart(String),
    Scale(u16),
    /// SIGTTIN: one API worker more.
    AddWorker,
    /// SIGTTOU: one API worker fewer.
    RemoveWorker,
    Stop,
}

/// Something the executor tells the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin: start the servers, then nginx.
    Start,
    Spawned {
        proc: ProcId,
        pid: u32,
    },
    Exited {
        proc: ProcId,
        status: String,
    },
    Ready {
        proc: ProcId,
    },
    HealthOk {
        proc: ProcId,
    },
    HealthMiss {
        proc: ProcId,
    },
    Timer(Timer),
    Bound {
        token: u64,
        result: Result<Vec<u16>, String>,
    },
    NginxApplied {
        token: u64,
        result: Result<(), String>,
    },
    Control {
        reply: Option<ReplyTo>,
        command: Command,
    },
    /// SIGTERM, SIGINT or SIGQUIT, by name.
    StopSignal(String),
}

/// A timer the core asked for, reported back when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// A backoff or cool-down of a slot ended (ignored unless `token` is current).
    RestartDue { slot: String, token: u64 },
    /// A process had this long to become ready.
    ReadyTimeout { proc: ProcId },
    /// A stopping process had this long to exit.
    GraceOver { proc: ProcId },
}

/// Something the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a process for `spec` on its slot's socket; report `Spawned` or `Exited`.
    Spawn {
        proc: ProcId,
        spec: ChildSpec,
    },
    /// Probe until this process itself answers; report `Ready`.
    Probe {
        proc: ProcId,
        pid: u32,
        spec: ChildSpec,
    },
    /// Health-check the slot's port every interval; report `HealthOk`/`HealthMiss`.
    Watch {
        proc: ProcId,
        spec: ChildSpec,
    },
    /// Send `signal` to `pid` (to its whole process group if `group`).
    Signal {
        pid: u32,
        signal: Signal,
        group: bool,
    },
    /// Bind these (name, port) sockets, all or none; report `Bound` with the ports.
    Bind {
        token: u64,
        sockets: Vec<(String, u16)>,
    },
    /// Close a slot's socket.
    CloseSocket {
        slot: String,
    },
    /// Write and check (`nginx -t`) the config with these API ports, then
    /// SIGHUP the master at `reload_pid` and wait until its old workers are
    /// gone; report `NginxApplied`.
    ApplyNginx {
        token: u64,
        api_ports: Vec<u16>,
        reload_pid: Option<u32>,
    },
    WriteState(StackState),
    Reply {
        to: ReplyTo,
        ok: bool,
        message: String,
    },
    Log(String),
    /// Tell a service manager (systemd's `NOTIFY_SOCKET`) how the stack is.
    Notify(ServiceState),
    Schedule {
        after: Duration,
        timer: Timer,
    },
    /// Supervision is over: remove what the run directory holds, tell
    /// `notify` that the stack stopped, and exit with `result`.
    Exit {
        result: Result<(), String>,
        notify: Vec<ReplyTo>,
    },
}

/// What a service manager is told ([`Action::Notify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// The front door answers: the stack is up (`READY=1`).
    Ready,
    /// The stack is stopping (`STOPPING=1`).
    Stopping,
}

/// The fixed settings of a core.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: RestartPolicy,
    pub grace: Duration,
    pub start_timeout: Duration,
    pub health_misses: u32,
    /// Port of api-1 (0: any free port for every worker).
    pub api_base_port: u16,
    pub supervisor_pid: u32,
    /// The line announced once the stack is up ("gallery is up: open URL").
    pub announce: String,
    /// Put before each API worker's name (`--name-prefix`).
    pub worker_prefix: String,
    /// Other hosts' workers in nginx's upstream: listed in `state.json`,
    /// never supervised.
    pub remote: Vec<Upstream>,
    /// A moment and the wall-clock time at it, to give `started_at` in Unix time.
    pub epoch: (Instant, SystemTime),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    id: ProcId,
    pid: Option<u32>,
    spawned: Instant,
    ready_at: Option<Instant>,
    /// Health checks missed in a row; `None` until the first check.
    misses: Option<u32>,
    /// Killed for not becoming ready in time (said in its exit message).
    timed_out: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    spec: ChildSpec,
    serving: Option<Proc>,
    incoming: Option<Proc>,
    draining: Vec<Proc>,
    restarts: u32,
    last_exit: Option<String>,
    tracker: RestartTracker,
    failed: bool,
    /// The token of the pending restart timer, if one is pending.
    restart_timer: Option<u64>,
    /// Waiting for its socket to be bound again before it can start.
    binding: bool,
    socket_open: bool,
    /// Being removed by `scale`: never restarted, dropped once it has no process.
    removing: bool,
}

impl Slot {
    fn new(spec: ChildSpec) -> Slot {
        Slot {
            socket_open: spec.role != Role::Nginx,
            spec,
            serving: None,
            incoming: None,
            draining: Vec::new(),
            restarts: 0,
            last_exit: None,
            tracker: RestartTracker::default(),
            failed: false,
            restart_timer: None,
            binding: false,
            removing: false,
        }
    }

    fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.serving
            .iter()
            .chain(self.incoming.iter())
            .chain(self.draining.iter())
    }

    fn is_ready(&self) -> bool {
        self.serving.as_ref().is_some_and(|p| p.ready_at.is_some())
    }

    fn is_api(&self) -> bool {
        self.spec.role == Role::Api
    }

    /// A server whose socket was closed must have it bound again to start.
    fn needs_bind(&self) -> bool {
        !self.socket_open && self.spec.role != Role::Nginx
    }

    fn phase(&self, stopping: bool) -> Phase {
        if (stopping || self.removing) && self.procs().next().is_some() {
            Phase::Stopping
        } else if self.is_ready() {
            Phase::Running
        } else if self.serving.is_some() || self.binding {
            Phase::Starting
        } else if self.failed {
            Phase::Failed
        } else if self.restart_timer.is_some() {
            Phase::Backoff
        } else if stopping || self.removing {
            Phase::Stopping
        } else {
            Phase::Starting
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Before `Start`.
    Idle,
    /// Servers starting; then nginx's config (`nginx_token`), then nginx.
    Starting {
        nginx_token: Option<u64>,
    },
    Up,
    Stopping {
        /// nginx first, then the servers.
        servers_signalled: bool,
        forced: bool,
        result: Result<(), String>,
        notify: Vec<ReplyTo>,
    },
    Done,
}

/// A `reload` or `restart` in progress: one slot at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A new process starts beside the serving one.
    Replacing { slot: String, proc: ProcId },
    /// The old process was SIGTERMed and drains.
    Draining { proc: ProcId },
    /// A child without a running process is started afresh (socket being
    /// bound when `proc` is `None`).
    Fresh { slot: String, proc: Option<ProcId> },
    /// nginx is reloaded in place.
    Nginx { token: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    Rollout {
        reply: Option<ReplyTo>,
        pending: VecDeque<String>,
        step: Option<Step>,
        done: Vec<String>,
        /// Reload nginx even when its config is unchanged (`restart nginx`).
        force_nginx: bool,
    },
    ScaleUp {
        reply: Option<ReplyTo>,
        names: Vec<String>,
        stage: ScaleUpStage,
    },
    ScaleDown {
        reply: Option<ReplyTo>,
        names: Vec<String>,
        /// `Some` while nginx takes the shorter upstream.
        nginx_token: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScaleUpStage {
    Binding { token: u64 },
    Starting,
    Nginx { token: u64 },
}

/// What a `Bound` event answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BindPurpose {
    /// A failed child's socket, before it is tried again.
    Revive {
        slot: String,
    },
    ScaleUp,
}

/// The supervisor's whole state and decisions.
#[derive(Debug, Clone)]
pub struct Core {
    settings: Settings,
    slots: Vec<Slot>,
    mode: Mode,
    operation: Option<Operation>,
    queue: VecDeque<(Option<ReplyTo>, Command)>,
    binds: BTreeMap<u64, BindPurpose>,
    next_id: u64,
    written: Option<StackState>,
    /// The API ports of the config nginx last took (`None`: unknown).
    nginx_upstream: Option<Vec<u16>>,
}

/// Where a process sits in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Serving,
    Incoming,
    Draining(usize),
}

impl Core {
    /// A core for `children` (static, api-1..N, nginx, in that order).
    pub fn new(settings: Settings, children: Vec<ChildSpec>) -> Core {
        Core {
            settings,
            slots: children.into_iter().map(Slot::new).collect(),
            mode: Mode::Idle,
            operation: None,
            queue: VecDeque::new(),
            binds: BTreeMap::new(),
            next_id: 0,
            written: None,
            nginx_upstream: None,
        }
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub fn on_event(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle(event, now, &mut out);
        self.settle(now, &mut out);
        let snapshot = self.snapshot();
        if self.mode != Mode::Done && self.written.as_ref() != Some(&snapshot) {
            out.push(Action::WriteState(snapshot.clone()));
            self.written = Some(snapshot);
        }
        out
    }

    /// What `state.json` should say now.
    pub fn snapshot(&self) -> StackState {
        let stopping = matches!(self.mode, Mode::Stopping { .. } | Mode::Done);
        let (epoch, wall) = self.settings.epoch;
        let unix = |at: Instant| {
            let time = if at >= epoch {
                wall + (at - epoch)
            } else {
                wall - (epoch - at)
            };
            time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        };
        StackState {
            supervisor_pid: self.settings.supervisor_pid,
            children: self
                .slots
                .iter()
                .map(|slot| ChildState {
                    name: slot.spec.name.clone(),
                    role: slot.spec.role,
                    pid: slot.serving.as_ref().and_then(|p| p.pid),
                    port: slot.spec.port,
                    state: slot.phase(stopping),
                    restarts: slot.restarts,
                    last_exit: slot.last_exit.clone(),
                    started_at: slot.serving.as_ref().map(|p| unix(p.spawned)),
                    health: slot
                        .serving
                        .as_ref()
                        .and_then(|p| p.misses)
                        .map(|misses| Health { misses }),
                    remote: false,
                    address: None,
                    weight: None,
                })
                .chain(
                    self.settings
                        .remote
                        .iter()
                        .enumerate()
                        .map(|(i, upstream)| ChildState::remote(i + 1, upstream)),
                )
                .collect(),
        }
    }

    /// True once the core has asked to exit.
    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    // ---- helpers -------------------------------------------------------

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn slot_index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.spec.name == name)
    }

    fn find(&self, proc: ProcId) -> Option<(usize, Place)> {
        self.slots.iter().enumerate().find_map(|(i, slot)| {
            if slot.serving.as_ref().is_some_and(|p| p.id == proc) {
                Some((i, Place::Serving))
            } else if slot.incoming.as_ref().is_some_and(|p| p.id == proc) {
                Some((i, Place::Incoming))
            } else {
                slot.draining
                    .iter()
                    .position(|p| p.id == proc)
                    .map(|d| (i, Place::Draining(d)))
            }
        })
    }

    fn proc_mut(&mut self, index: usize, place: Place) -> &mut Proc {
        let slot = &mut self.slots[index];
        match place {
            Place::Serving => slot.serving.as_mut().expect("found serving"),
            Place::Incoming => slot.incoming.as_mut().expect("found incoming"),
            Place::Draining(d) => &mut slot.draining[d],
        }
    }

    fn nginx_index(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.spec.role == Role::Nginx)
    }

    fn nginx_pid(&self) -> Option<u32> {
        let nginx = &self.slots[self.nginx_index()?];
        nginx.serving.as_ref().filter(|p| p.ready_at.is_some())?.pid
    }

    /// The ports of the API workers nginx should route to.
    fn upstream_ports(&self) -> Vec<u16> {
        self.slots
            .iter()
            .filter(|s| s.is_api() && !s.removing)
            .map(|s| s.spec.port)
            .collect()
    }

    fn api_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.is_api() && !s.removing)
            .count()
    }

    fn describe(slot: &Slot, proc: &Proc) -> String {
        match proc.pid {
            Some(pid) => format!("{} (pid {pid})", slot.spec.name),
            None => format!("{} (no pid)", slot.spec.name),
        }
    }

    /// Starts a new process in `index`, as its serving process or as the
    /// incoming replacement.
    fn spawn(
        &mut self,
        index: usize,
        incoming: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> ProcId {
        let id = self.next_id();
        let proc = Proc {
            id,
            pid: None,
            spawned: now,
            ready_at: None,
            misses: None,
            timed_out: false,
        };
        let slot = &mut self.slots[index];
        if incoming {
            slot.incoming = Some(proc);
        } else {
            slot.serving = Some(proc);
        }
        out.push(Action::Spawn {
            proc: id,
            spec: slot.spec.clone(),
        });
        out.push(Action::Schedule {
            after: self.settings.start_timeout,
            timer: Timer::ReadyTimeout { proc: id },
        });
        id
    }

    /// Starts a slot's restart timer (a backoff or a cool-down); an earlier
    /// one still pending is void from now on.
    fn schedule_restart(&mut self, index: usize, after: Duration, out: &mut Vec<Action>) {
        let token = self.next_id();
        let slot = &mut self.slots[index];
        slot.restart_timer = Some(token);
        out.push(Action::Schedule {
            after,
            timer: Timer::RestartDue {
                slot: slot.spec.name.clone(),
                token,
            },
        });
    }

    /// SIGTERMs (SIGQUIT for nginx) a process and starts its grace timer.
    fn terminate(&self, index: usize, proc: &Proc, out: &mut Vec<Action>) {
        if let Some(pid) = proc.pid {
            let signal = if self.slots[index].spec.role == Role::Nginx {
                Signal::SIGQUIT
            } else {
                Signal::SIGTERM
            };
            out.push(Action::Signal {
                pid,
                signal,
                group: false,
            });
        }
        out.push(Action::Schedule {
            after: self.settings.grace,
            timer: Timer::GraceOver { proc: proc.id },
        });
    }

    fn kill_group(proc: &Proc, out: &mut Vec<Action>) {
        if let Some(pid) = proc.pid {
            out.push(Action::Signal {
                pid,
                signal: Signal::SIGKILL,
                group: true,
            });
        }
    }

    fn reply(to: Option<ReplyTo>, ok: bool, message: String, out: &mut Vec<Action>) {
        if let Some(to) = to {
            out.push(Action::Reply { to, ok, message });
        } else {
            out.push(Action::Log(message));
        }
    }

    fn apply_nginx(&mut self, reload: bool, out: &mut Vec<Action>) -> u64 {
        let token = self.next_id();
        let ports = self.upstream_ports();
        self.nginx_upstream = Some(ports.clone());
        out.push(Action::ApplyNginx {
            token,
            api_ports: ports,
            reload_pid: if reload { self.nginx_pid() } else { None },
        });
        token
    }

    /// Forgets a failed or backing-off child's wait and starts it now (after
    /// binding its socket again if it was closed). Returns the new process,
    /// or `None` while the socket is being bound.
    fn start_afresh(
        &mut self,
        index: usize,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Option<ProcId> {
        let slot = &mut self.slots[index];
        slot.restart_timer = None;
        slot.failed = false;
        slot.tracker.forgive();
        if slot.binding {
            // Its socket is on its way; the process starts when it comes.
            return None;
        }
        if !slot.needs_bind() {
            Some(self.spawn(index, false, now, out))
        } else {
            slot.binding = true;
            let token = self.next_id();
            let slot = &self.slots[index];
            self.binds.insert(
                token,
                BindPurpose::Revive {
                    slot: slot.spec.name.clone(),
                },
            );
            out.push(Action::Bind {
                token,
                sockets: vec![(slot.spec.name.clone(), slot.spec.port)],
            });
            None
        }
    }

    // ---- events --------------------------------------------------------

    fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Start => {
                if self.mode != Mode::Idle {
                    return;
                }
                self.mode = Mode::Starting { nginx_token: None };
                for index in 0..self.slots.len() {
                    if self.slots[index].spec.role != Role::Nginx {
                        self.spawn(index, false, now, out);
                    }
                }
            }
            Event::Spawned { proc, pid } => self.on_spawned(proc, pid, out),
            Event::Exited { proc, status } => self.on_exited(proc, status, now, out),
            Event::Ready { proc } => self.on_ready(proc, now, out),
            Event::HealthOk { proc } => {
                if let Some((index, Place::Serving)) = self.find(proc) {
                    self.proc_mut(index, Place::Serving).misses = Some(0);
                }
            }
            Event::HealthMiss { proc } => self.on_health_miss(proc, out),
            Event::Timer(timer) => self.on_timer(timer, now, out),
            Event::Bound { token, result } => self.on_bound(token, result, now, out),
            Event::NginxApplied { token, result } => self.on_nginx_applied(token, result, now, out),
            Event::Control { reply, command } => self.on_control(reply, command, out),
            Event::StopSignal(name) => {
                out.push(Action::Log(format!(
                    "{name} received: stopping (a second signal stops at once)"
                )));
                self.begin_stop(Ok(()), None, out);
            }
        }
    }

    fn on_spawned(&mut self, proc: ProcId, pid: u32, out: &mut Vec<Action>) {
        let Some((index, place)) = self.find(proc) else {
            return;
        };
        let stopping = matches!(self.mode, Mode::Stopping { .. });
        let p = self.proc_mut(index, place);
        p.pid = Some(pid);
        let slot = &self.slots[index];
        out.push(Action::Log(format!(
            "started {} (pid {pid})",
            slot.spec.name
        )));
        if stopping || slot.removing {
            // Started just before a stop began: stop it too.
            let p = self.proc_mut(index, place).clone();
            self.terminate(index, &p, out);
            return;
        }
        out.push(Action::Probe {
            proc,
            pid,
            spec: slot.spec.clone(),
        });
    }

    fn on_ready(&mut self, proc: ProcId, now: Instant, out: &mut Vec<Action>) {
        if matches!(self.mode, Mode::Stopping { .. } | Mode::Done) {
            return;
        }
        let Some((index, place)) = self.find(proc) else {
            return;
        };
        match place {
            Place::Draining(_) => return,
            Place::Serving => {
                let p = self.proc_mut(index, place);
                if p.ready_at.is_some() {
                    return;
                }
                p.ready_at = Some(now);
            }
            Place::Incoming => {
                let slot = &mut self.slots[index];
                let mut new = slot.incoming.take().expect("incoming");
                new.ready_at = Some(now);
                let old = slot.serving.replace(new);
                if let Some(old) = old {
                    out.push(Action::Log(format!(
                        "{} answers: stopping the old {}",
                        Self::describe(slot, slot.serving.as_ref().expect("just set")),
                        Self::describe(slot, &old)
                    )));
                    self.terminate(index, &old, out);
                    let name = self.slots[index].spec.name.clone();
                    if let Some(Operation::Rollout { step, done, .. }) = &mut self.operation
                        && *step
                            == Some(Step::Replacing {
                                slot: name.clone(),
                                proc,
                            })
                    {
                        done.push(name);
                        *step = Some(Step::Draining { proc: old.id });
                    }
                    self.slots[index].draining.push(old);
                }
            }
        }
        let slot = &self.slots[index];
        let serving = slot.serving.as_ref().expect("ready serving");
        if slot.spec.role != Role::Nginx {
            out.push(Action::Watch {
                proc,
                spec: slot.spec.clone(),
            });
        }
        if self.mode == Mode::Up && place == Place::Serving {
            out.push(Action::Log(format!(
                "{} is answering on port {}",
                Self::describe(slot, serving),
                slot.spec.port
            )));
        }
        // A step waiting for exactly this process is done.
        if let Some(Operation::Rollout { step, done, .. }) = &mut self.operation {
            let name = &self.slots[index].spec.name;
            let finished = match step {
                Some(Step::Replacing { proc: p, .. }) | Some(Step::Fresh { proc: Some(p), .. }) => {
                    *p == proc
                }
                _ => false,
            };
            if finished {
                done.push(name.clone());
                *step = None;
            }
        }
    }

    fn on_health_miss(&mut self, proc: ProcId, out: &mut Vec<Action>) {
        if self.mode != Mode::Up {
            return;
        }
        let Some((index, Place::Serving)) = self.find(proc) else {
            return;
        };
        if self.slots[index].removing {
            return;
        }
        let limit = self.settings.health_misses;
        let p = self.proc_mut(index, Place::Serving);
        if p.ready_at.is_none() {
            return;
        }
        let misses = p.misses.unwrap_or(0) + 1;
        p.misses = Some(misses);
        if misses == limit {
            let p = p.clone();
            out.push(Action::Log(format!(
                "{} missed {misses} health checks: killing",
                Self::describe(&self.slots[index], &p)
            )));
            Self::kill_group(&p, out);
        }
    }

    fn on_exited(&mut self, proc: ProcId, status: String, now: Instant, out: &mut Vec<Action>) {
        let Some((index, place)) = self.find(proc) else {
            return;
        };
        let slot = &mut self.slots[index];
        let gone = match place {
            Place::Serving => slot.serving.take(),
            Place::Incoming => slot.incoming.take(),
            Place::Draining(d) => Some(slot.draining.remove(d)),
        }
        .expect("found");
        // Whatever it left in its process group (nginx's workers) goes too.
        Self::kill_group(&gone, out);
        let who = Self::describe(slot, &gone);
        let name = slot.spec.name.clone();

        if place == Place::Serving
            && (self.slots[index].removing || matches!(self.mode, Mode::Stopping { .. }))
        {
            // Going away anyway: a replacement that was starting stands in.
            let slot = &mut self.slots[index];
            slot.serving = slot.incoming.take();
        }
        if let Mode::Stopping { .. } = self.mode {
            out.push(Action::Log(format!("{who} stopped: {status}")));
            if place == Place::Serving {
                self.slots[index].last_exit = Some(status);
            }
            return;
        }
        match place {
            Place::Draining(_) => {
                out.push(Action::Log(format!("old {who} stopped: {status}")));
                if let Some(Operation::Rollout { step, .. }) = &mut self.operation
                    && *step == Some(Step::Draining { proc })
                {
                    *step = None;
                }
            }
            Place::Incoming => {
                let why = if gone.timed_out {
                    format!(
                        "did not answer within {} s",
                        self.settings.start_timeout.as_secs_f64()
                    )
                } else {
                    format!("exited before it was ready ({status})")
                };
                out.push(Action::Log(format!("new {who} {why}")));
                if let Some(Operation::Rollout { step, .. }) = &self.operation
                    && *step
                        == Some(Step::Replacing {
                            slot: name.clone(),
                            proc,
                        })
                {
                    let serving = self.slots[index].serving.as_ref().and_then(|p| p.pid);
                    let kept = serving.map_or(String::new(), |pid| {
                        format!("; the old process (pid {pid}) keeps serving")
                    });
                    self.fail_operation(format!("{name}: the new process {why}{kept}"), out);
                }
            }
            Place::Serving => {
                let slot = &mut self.slots[index];
                slot.last_exit = Some(status.clone());
                out.push(Action::Log(format!("{who} exited: {status}")));
                if slot.removing {
                    return;
                }
                if let Some(mut next) = slot.incoming.take() {
                    // A replacement was already starting: it takes over.
                    next.misses = None;
                    slot.serving = Some(next);
                    slot.restarts += 1;
                    return;
                }
                let decision = slot
                    .tracker
                    .on_exit(&self.settings.policy, gone.ready_at, now);
                let waited_on = self.operation_waits_on(&name, proc);
                match decision {
                    Decision::RestartNow => {
                        self.slots[index].restarts += 1;
                        out.push(Action::Log(format!("restarting {name} now")));
                        let new = self.spawn(index, false, now, out);
                        self.retarget_fresh(&name, new);
                    }
                    Decision::RestartAfter(delay) => {
                        out.push(Action::Log(format!(
                            "restarting {name} in {} ms",
                            delay.as_millis()
                        )));
                        self.schedule_restart(index, delay, out);
                    }
                    Decision::Fail { retry_after } => {
                        let policy = &self.settings.policy;
                        out.push(Action::Log(format!(
                            "{name} exited {} times within {} s: marked failed, trying again in {} s",
                            policy.max_restarts,
                            policy.window.as_secs_f64(),
                            retry_after.as_secs_f64()
                        )));
                        let slot = &mut self.slots[index];
                        slot.failed = true;
                        if slot.socket_open {
                            // Nobody accepts there now: refuse, so nginx skips it at once.
                            slot.socket_open = false;
                            out.push(Action::CloseSocket { slot: name.clone() });
                        }
                        self.schedule_restart(index, retry_after, out);
                    }
                }
                if waited_on {
                    let why = format!("{name} exited before it was ready ({status})");
                    self.fail_operation(why, out);
                }
            }
        }
    }

    /// Whether the operation in progress waits for `proc` of `slot` to be ready.
    fn operation_waits_on(&self, slot: &str, proc: ProcId) -> bool {
        match &self.operation {
            Some(Operation::Rollout {
                step: Some(Step::Fresh { proc: Some(p), .. }),
                ..
            }) => *p == proc,
            Some(Operation::ScaleUp {
                names,
                stage: ScaleUpStage::Starting,
                ..
            }) => names.iter().any(|n| n == slot),
            _ => false,
        }
    }

    /// A restarted process replaces the one a `Fresh` step was waiting for.
    fn retarget_fresh(&mut self, name: &str, new: ProcId) {
        if let Some(Operation::Rollout {
            step: Some(Step::Fresh { slot, proc }),
            ..
        }) = &mut self.operation
            && slot == name
        {
            *proc = Some(new);
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Action>) {
        match timer {
            Timer::RestartDue { slot, token } => {
                if !matches!(self.mode, Mode::Up | Mode::Starting { .. }) {
                    return;
                }
                let Some(index) = self.slot_index(&slot) else {
                    return;
                };
                let s = &mut self.slots[index];
                if s.restart_timer != Some(token) || s.removing || s.serving.is_some() {
                    return;
                }
                s.restart_timer = None;
                s.restarts += 1;
                if s.failed {
                    s.failed = false;
                    out.push(Action::Log(format!(
                        "trying {slot} again after its cool-down"
                    )));
                    if s.needs_bind() {
                        // `start_afresh` forgets nothing here: the history
                        // was cleared when it failed.
                        self.start_afresh(index, now, out);
                        return;
                    }
                }
                self.spawn(index, false, now, out);
            }
            Timer::ReadyTimeout { proc } => {
                let Some((index, place)) = self.find(proc) else {
                    return;
                };
                if matches!(place, Place::Draining(_)) {
                    return;
                }
                let p = self.proc_mut(index, place);
                if p.ready_at.is_some() {
                    return;
                }
                p.timed_out = true;
                let p = p.clone();
                out.push(Action::Log(format!(
                    "{} did not answer within {} s: killing it",
                    Self::describe(&self.slots[index], &p),
                    self.settings.start_timeout.as_secs_f64()
                )));
                Self::kill_group(&p, out);
            }
            Timer::GraceOver { proc } => {
                let Some((index, place)) = self.find(proc) else {
                    return;
                };
                let stopping = matches!(self.mode, Mode::Stopping { .. });
                if !(stopping || self.slots[index].removing || matches!(place, Place::Draining(_)))
                {
                    return;
                }
                let p = self.proc_mut(index, place).clone();
                out.push(Action::Log(format!(
                    "{} did not stop within {} s: killing it",
                    Self::describe(&self.slots[index], &p),
                    self.settings.grace.as_secs_f64()
                )));
                Self::kill_group(&p, out);
            }
        }
    }

    fn on_bound(
        &mut self,
        token: u64,
        result: Result<Vec<u16>, String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(purpose) = self.binds.remove(&token) else {
            return;
        };
        match purpose {
            BindPurpose::Revive { slot } => {
                let Some(index) = self.slot_index(&slot) else {
                    return;
                };
                self.slots[index].binding = false;
                if matches!(self.mode, Mode::Stopping { .. } | Mode::Done)
                    || self.slots[index].removing
                {
                    if result.is_ok() {
                        out.push(Action::CloseSocket { slot });
                    }
                    return;
                }
                match result {
                    Ok(_) => {
                        self.slots[index].socket_open = true;
                        let proc = self.spawn(index, false, now, out);
                        self.retarget_fresh(&slot, proc);
                    }
                    Err(error) => {
                        self.slots[index].failed = true;
                        let retry_after = self.settings.policy.cooldown;
                        out.push(Action::Log(format!(
                            "cannot start {slot} again: {error}; trying again in {} s",
                            retry_after.as_secs_f64()
                        )));
                        self.schedule_restart(index, retry_after, out);
                        if let Some(Operation::Rollout {
                            step: Some(Step::Fresh { slot: s, .. }),
                            ..
                        }) = &self.operation
                            && *s == slot
                        {
                            self.fail_operation(format!("{slot}: {error}"), out);
                        }
                    }
                }
            }
            BindPurpose::ScaleUp => {
                // A scale cancelled by a stop leaves its sockets to the exit.
                let Some(Operation::ScaleUp {
                    names,
                    stage,
                    reply,
                }) = &mut self.operation
                else {
                    return;
                };
                if *stage != (ScaleUpStage::Binding { token }) {
                    return;
                }
                match result {
                    Err(error) => {
                        let reply = *reply;
                        self.operation = None;
                        Self::reply(
                            reply,
                            false,
                            format!("cannot scale: {error}; nothing changed"),
                            out,
                        );
                    }
                    Ok(ports) => {
                        *stage = ScaleUpStage::Starting;
                        let names = names.clone();
                        let nginx = self.nginx_index().unwrap_or(self.slots.len());
                        for (offset, (name, port)) in names.into_iter().zip(ports).enumerate() {
                            let slot = Slot::new(ChildSpec {
                                name,
                                role: Role::Api,
                                port,
                            });
                            self.slots.insert(nginx + offset, slot);
                            self.spawn(nginx + offset, false, now, out);
                        }
                    }
                }
            }
        }
    }

    fn on_nginx_applied(
        &mut self,
        token: u64,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if result.is_err() {
            self.nginx_upstream = None;
        }
        if self.mode
            == (Mode::Starting {
                nginx_token: Some(token),
            })
        {
            match result {
                Ok(()) => {
                    if let Some(nginx) = self.nginx_index() {
                        self.spawn(nginx, false, now, out);
                    }
                }
                Err(error) => self.begin_stop(Err(error), None, out),
            }
            return;
        }
        match &mut self.operation {
            Some(Operation::Rollout { step, done, .. }) if *step == Some(Step::Nginx { token }) => {
                match result {
                    Ok(()) => {
                        done.push("nginx".into());
                        *step = None;
                    }
                    Err(error) => self.fail_operation(format!("nginx: {error}"), out),
                }
            }
            Some(Operation::ScaleUp {
                stage,
                reply,
                names,
            }) if *stage == (ScaleUpStage::Nginx { token }) => {
                let (reply, names) = (*reply, names.clone());
                match result {
                    Ok(()) => {
                        self.operation = None;
                        self.report_scaled_up(reply, &names, out);
                    }
                    Err(error) => {
                        self.fail_operation(format!("nginx refused the new upstream: {error}"), out)
                    }
                }
            }
            Some(Operation::ScaleDown {
                nginx_token, names, ..
            }) if *nginx_token == Some(token) => match result {
                Ok(()) => {
                    *nginx_token = None;
                    let names = names.clone();
                    self.drain_removed(&names, out);
                }
                Err(error) => {
                    for name in names.clone() {
                        if let Some(index) = self.slot_index(&name) {
                            // Kept after all; one that exited meanwhile starts again.
                            self.slots[index].removing = false;
                            if self.slots[index].serving.is_none() {
                                self.slots[index].restarts += 1;
                                self.start_afresh(index, now, out);
                            }
                        }
                    }
                    self.fail_operation(format!("nginx refused the new upstream: {error}"), out);
                }
            },
            _ => {}
        }
    }

    fn report_scaled_up(&self, reply: Option<ReplyTo>, names: &[String], out: &mut Vec<Action>) {
        let added: Vec<String> = names
            .iter()
            .filter_map(|n| self.slot_index(n))
            .map(|i| {
                let s = &self.slots[i];
                format!("{} (port {})", s.spec.name, s.spec.port)
            })
            .collect();
        Self::reply(
            reply,
            true,
            format!(
                "scaled to {} API workers: added {}",
                self.api_count(),
                added.join(", ")
            ),
            out,
        );
    }

    fn on_control(&mut self, reply: Option<ReplyTo>, command: Command, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Stopping { .. } | Mode::Done => {
                if command == Command::Stop {
                    self.begin_stop(Ok(()), reply, out);
                } else {
                    Self::reply(reply, false, "the supervisor is stopping".into(), out);
                }
            }
            _ if command == Command::Stop => {
                out.push(Action::Log("stop requested: stopping".into()));
                self.begin_stop(Ok(()), reply, out);
            }
            _ => self.queue.push_back((reply, command)),
        }
    }

    // ---- operations ----------------------------------------------------

    fn fail_operation(&mut self, message: String, out: &mut Vec<Action>) {
        let Some(operation) = self.operation.take() else {
            return;
        };
        let reply = match operation {
            Operation::Rollout { reply, .. } => reply,
            Operation::ScaleDown { reply, .. } => reply,
            Operation::ScaleUp { reply, names, .. } => {
                // Take back the workers that were being added.
                for name in names {
                    if let Some(index) = self.slot_index(&name) {
                        self.slots[index].removing = true;
                        self.slots[index].restart_timer = None;
                        let procs: Vec<Proc> = self.slots[index].procs().cloned().collect();
                        for p in procs {
                            Self::kill_group(&p, out);
                        }
                    }
                }
                reply
            }
        };
        Self::reply(reply, false, message, out);
    }

    /// Starts the next queued command when nothing else runs.
    fn start_next(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Workers still being taken out keep their names until they are gone.
        while self.operation.is_none()
            && self.mode == Mode::Up
            && !self.slots.iter().any(|s| s.removing)
        {
            let Some((reply, command)) = self.queue.pop_front() else {
                return;
            };
            let current = self.api_count();
            match command {
                Command::Reload => {
                    let pending = self.slots.iter().map(|s| s.spec.name.clone()).collect();
                    out.push(Action::Log(
                        "reload: replacing every child, one at a time".into(),
                    ));
                    self.operation = Some(Operation::Rollout {
                        reply,
                        pending,
                        step: None,
                        done: Vec::new(),
                        force_nginx: false,
                    });
                }
                Command::Restart(name) => {
                    if self.slot_index(&name).is_none() {
                        let names: Vec<_> =
                            self.slots.iter().map(|s| s.spec.name.as_str()).collect();
                        Self::reply(
                            reply,
                            false,
                            format!(
                                "no child named {name:?} (the children are {})",
                                names.join(", ")
                            ),
                            out,
                        );
                        continue;
                    }
                    out.push(Action::Log(format!("restart: replacing {name}")));
                    self.operation = Some(Operation::Rollout {
                        reply,
                        pending: [name].into(),
                        step: None,
                        done: Vec::new(),
                        force_nginx: true,
                    });
                }
                Command::AddWorker | Command::RemoveWorker | Command::Scale(_) if current == 0 => {
                    Self::reply(
                        reply,
                        false,
                        "this supervisor runs no API workers (--role front): scale them on their own hosts".into(),
                        out,
                    );
                }
                Command::AddWorker if current >= 64 => {
                    Self::reply(
                        reply,
                        false,
                        "already 64 API workers, the most there can be".into(),
                        out,
                    );
                }
                Command::AddWorker => self.scale(reply, current + 1, out),
                Command::RemoveWorker if current <= 1 => {
                    Self::reply(
                        reply,
                        false,
                        "only one API worker left: not removing it".into(),
                        out,
                    );
                }
                Command::RemoveWorker => self.scale(reply, current - 1, out),
                Command::Scale(n) => self.scale(reply, usize::from(n), out),
                Command::Stop => unreachable!("stop is never queued"),
            }
            self.advance_rollout(now, out);
        }
    }

    fn scale(&mut self, reply: Option<ReplyTo>, target: usize, out: &mut Vec<Action>) {
        let current = self.api_count();
        if target == current {
            Self::reply(reply, true, format!("already {current} API workers"), out);
            return;
        }
        if target > current {
            let base = u32::from(self.settings.api_base_port);
            let mut sockets = Vec::new();
            for k in current + 1..=target {
                let port = if base == 0 { 0 } else { base + k as u32 - 1 };
                if port > u32::from(u16::MAX) {
                    Self::reply(
                        reply,
                        false,
                        format!(
                            "cannot scale to {target}: worker {k} would need port {port}; nothing changed"
                        ),
                        out,
                    );
                    return;
                }
                sockets.push((worker_name(&self.settings.worker_prefix, k), port as u16));
            }
            let token = self.next_id();
            out.push(Action::Log(format!(
                "scale: adding {} API workers",
                target - current
            )));
            self.binds.insert(token, BindPurpose::ScaleUp);
            self.operation = Some(Operation::ScaleUp {
                reply,
                names: sockets.iter().map(|(n, _)| n.clone()).collect(),
                stage: ScaleUpStage::Binding { token },
            });
            out.push(Action::Bind { token, sockets });
        } else {
            let names: Vec<String> = (target + 1..=current)
                .map(|k| worker_name(&self.settings.worker_prefix, k))
                .collect();
            out.push(Action::Log(format!("scale: removing {}", names.join(", "))));
            for name in &names {
                if let Some(index) = self.slot_index(name) {
                    self.slots[index].removing = true;
                }
            }
            if self.nginx_index().is_none() {
                // No nginx here (`--role workers`): nothing routes to them
                // but what a front elsewhere retries; they drain at once.
                self.drain_removed(&names, out);
                self.operation = Some(Operation::ScaleDown {
                    reply,
                    names,
                    nginx_token: None,
                });
                return;
            }
            let token = self.apply_nginx(true, out);
            self.operation = Some(Operation::ScaleDown {
                reply,
                names,
                nginx_token: Some(token),
            });
        }
    }

    /// SIGTERMs the processes of workers being removed (out of nginx's
    /// upstream by now, where there is one).
    fn drain_removed(&mut self, names: &[String], out: &mut Vec<Action>) {
        for name in names {
            let Some(index) = self.slot_index(name) else {
                continue;
            };
            self.slots[index].restart_timer = None;
            let procs: Vec<Proc> = self.slots[index].procs().cloned().collect();
            for p in procs {
                self.terminate(index, &p, out);
            }
        }
    }

    /// Moves a rollout on to its next slot when its step is done.
    fn advance_rollout(&mut self, now: Instant, out: &mut Vec<Action>) {
        loop {
            let Some(Operation::Rollout {
                pending,
                step,
                force_nginx,
                ..
            }) = &mut self.operation
            else {
                return;
            };
            let force_nginx = *force_nginx;
            if step.is_some() {
                return;
            }
            let Some(name) = pending.pop_front() else {
                let Some(Operation::Rollout { reply, done, .. }) = self.operation.take() else {
                    unreachable!()
                };
                let pids: Vec<String> = done
                    .iter()
                    .filter_map(|n| self.slot_index(n))
                    .map(|i| {
                        let s = &self.slots[i];
                        match s.serving.as_ref().and_then(|p| p.pid) {
                            Some(pid) if s.spec.role != Role::Nginx => {
                                format!("{} (pid {pid})", s.spec.name)
                            }
                            Some(pid) => format!("{} (reloaded in place, pid {pid})", s.spec.name),
                            None => s.spec.name.clone(),
                        }
                    })
                    .collect();
                Self::reply(reply, true, format!("replaced {}", pids.join(", ")), out);
                return;
            };
            let Some(index) = self.slot_index(&name) else {
                continue;
            };
            if self.slots[index].removing {
                continue;
            }
            let is_nginx = self.slots[index].spec.role == Role::Nginx;
            if is_nginx
                && self.nginx_pid().is_some()
                && !force_nginx
                && self.nginx_upstream.as_ref() == Some(&self.upstream_ports())
            {
                // Reloading nginx closes its idle client keepalive
                // connections, and a client that sends on one at that moment
                // gets a reset; with the same config it would gain nothing.
                out.push(Action::Log(
                    "nginx: its config is unchanged: left running as it is".into(),
                ));
                continue;
            }
            let next = if is_nginx && self.nginx_pid().is_some() {
                Step::Nginx {
                    token: self.apply_nginx(true, out),
                }
            } else if self.slots[index].serving.is_some()
                && self.slots[index].spec.role != Role::Nginx
            {
                Step::Replacing {
                    slot: name.clone(),
                    proc: self.spawn(index, true, now, out),
                }
            } else if self.slots[index].serving.is_some() {
                // nginx still starting: wait for it as it is.
                Step::Fresh {
                    slot: name.clone(),
                    proc: self.slots[index].serving.as_ref().map(|p| p.id),
                }
            } else {
                out.push(Action::Log(format!("starting {name} afresh")));
                Step::Fresh {
                    slot: name.clone(),
                    proc: self.start_afresh(index, now, out),
                }
            };
            if let Some(Operation::Rollout { step, .. }) = &mut self.operation {
                *step = Some(next);
            }
        }
    }

    /// Progress that follows from the state, checked after every event.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Workers being removed are dropped once they have no process left.
        let mut index = 0;
        while index < self.slots.len() {
            let slot = &self.slots[index];
            let scale_down_waits_for_nginx = matches!(
                &self.operation,
                Some(Operation::ScaleDown { nginx_token: Some(_), names, .. }) if names.contains(&slot.spec.name)
            );
            if slot.removing
                && !slot.binding
                && slot.procs().next().is_none()
                && !scale_down_waits_for_nginx
            {
                if slot.socket_open {
                    out.push(Action::CloseSocket {
                        slot: slot.spec.name.clone(),
                    });
                }
                out.push(Action::Log(format!("{} removed", slot.spec.name)));
                self.slots.remove(index);
            } else {
                index += 1;
            }
        }
        match &self.operation {
            Some(Operation::ScaleDown {
                reply,
                names,
                nginx_token: None,
            }) if names.iter().all(|n| self.slot_index(n).is_none()) => {
                let reply = *reply;
                self.operation = None;
                Self::reply(
                    reply,
                    true,
                    format!("scaled to {} API workers", self.api_count()),
                    out,
                );
            }
            Some(Operation::ScaleUp {
                names,
                stage: ScaleUpStage::Starting,
                ..
            }) if names
                .iter()
                .all(|n| self.slot_index(n).is_some_and(|i| self.slots[i].is_ready())) =>
            {
                if self.nginx_index().is_none() {
                    // No nginx here (`--role workers`): ready is done.
                    if let Some(Operation::ScaleUp { reply, names, .. }) = self.operation.take() {
                        self.report_scaled_up(reply, &names, out);
                    }
                } else {
                    let token = self.apply_nginx(true, out);
                    if let Some(Operation::ScaleUp { stage, .. }) = &mut self.operation {
                        *stage = ScaleUpStage::Nginx { token };
                    }
                }
            }
            _ => {}
        }
        self.advance_rollout(now, out);
        if let Mode::Starting { nginx_token } = self.mode {
            self.advance_start(nginx_token, out);
        }
        self.advance_stop(out);
        self.start_next(now, out);
    }

    /// Moves a stop on: the servers once nginx is gone, the exit once
    /// everything is.
    fn advance_stop(&mut self, out: &mut Vec<Action>) {
        let Mode::Stopping {
            servers_signalled,
            forced,
            result,
            notify,
        } = self.mode.clone()
        else {
            return;
        };
        let nginx_running = self
            .nginx_index()
            .is_some_and(|i| self.slots[i].procs().next().is_some());
        if !servers_signalled && !nginx_running {
            self.mode = Mode::Stopping {
                servers_signalled: true,
                forced,
                result: result.clone(),
                notify: notify.clone(),
            };
            for index in 0..self.slots.len() {
                let procs: Vec<Proc> = self.slots[index].procs().cloned().collect();
                for p in procs {
                    self.terminate(index, &p, out);
                }
            }
        }
        if self.slots.iter().all(|s| s.procs().next().is_none()) {
            self.mode = Mode::Done;
            if result.is_ok() {
                out.push(Action::Log("stopped".into()));
            }
            out.push(Action::Exit { result, notify });
        }
    }

    fn advance_start(&mut self, nginx_token: Option<u64>, out: &mut Vec<Action>) {
        let nginx = self.nginx_index();
        let servers = || self.slots.iter().filter(|s| s.spec.role != Role::Nginx);
        if nginx_token.is_none() {
            if !servers().all(|s| s.is_ready() || s.failed) {
                return;
            }
            if let Some(s) = servers().find(|s| s.spec.role == Role::Static && s.failed) {
                let why = format!(
                    "the static server failed to start ({}); see its output above",
                    s.last_exit.as_deref().unwrap_or("no exit status")
                );
                return self.begin_stop(Err(why), None, out);
            }
            // A front (`--role front`) has no workers of its own to fail.
            let mut workers = servers().filter(|s| s.is_api()).peekable();
            if workers.peek().is_some() && workers.all(|s| s.failed) {
                let why = "every API worker failed to start; see their output above".to_string();
                return self.begin_stop(Err(why), None, out);
            }
            if nginx.is_some() {
                let token = self.apply_nginx(false, out);
                self.mode = Mode::Starting {
                    nginx_token: Some(token),
                };
                return;
            }
            // No nginx here (`--role workers`): up once the workers are.
        } else if let Some(nginx) = nginx {
            let slot = &self.slots[nginx];
            if slot.failed {
                let why = format!(
                    "nginx failed to start ({}); see its output above",
                    slot.last_exit.as_deref().unwrap_or("no exit status")
                );
                return self.begin_stop(Err(why), None, out);
            }
            if !slot.is_ready() {
                return;
            }
        }
        self.mode = Mode::Up;
        for slot in &self.slots {
            let pid = slot
                .serving
                .as_ref()
                .and_then(|p| p.pid)
                .map_or("-".to_string(), |p| p.to_string());
            let state = if slot.is_ready() {
                String::new()
            } else {
                format!("  ({})", slot.phase(false).as_str())
            };
            out.push(Action::Log(format!(
                "{:<10}  pid {pid:>7}  port {}{state}",
                slot.spec.name, slot.spec.port
            )));
        }
        out.push(Action::Log(self.settings.announce.clone()));
        out.push(Action::Notify(ServiceState::Ready));
    }

    fn begin_stop(
        &mut self,
        result: Result<(), String>,
        reply: Option<ReplyTo>,
        out: &mut Vec<Action>,
    ) {
        if let Mode::Stopping { forced, notify, .. } = &mut self.mode {
            notify.extend(reply);
            if reply.is_some() || *forced {
                return;
            }
            // A second signal: everything goes now.
            *forced = true;
            if let Mode::Stopping { result, .. } = &mut self.mode {
                *result = Err("stopped at once on a second signal; children were killed".into());
            }
            for slot in &self.slots {
                for p in slot.procs() {
                    Self::kill_group(p, out);
                }
            }
            return;
        }
        if self.mode == Mode::Done {
            return;
        }
        if let Some(operation) = self.operation.take() {
            let reply = match operation {
                Operation::Rollout { reply, .. }
                | Operation::ScaleUp { reply, .. }
                | Operation::ScaleDown { reply, .. } => reply,
            };
            Self::reply(reply, false, "the supervisor is stopping".into(), out);
        }
        for (queued, _) in std::mem::take(&mut self.queue) {
            Self::reply(queued, false, "the supervisor is stopping".into(), out);
        }
        for slot in &mut self.slots {
            slot.restart_timer = None;
        }
        out.push(Action::Notify(ServiceState::Stopping));
        self.mode = Mode::Stopping {
            servers_signalled: false,
            forced: false,
            result,
            notify: reply.into_iter().collect(),
        };
        if let Some(nginx) = self.nginx_index() {
            let procs: Vec<Proc> = self.slots[nginx].procs().cloned().collect();
            for p in procs {
                self.terminate(nginx, &p, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
