//! The core, driven without processes: table-style transition tests, and a
//! property test that feeds it thousands of random event sequences against
//! a simulated world and checks the invariants after every step.

use std::collections::BTreeMap;

use super::*;
use crate::plan::api_name;

const GRACE: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_UPTIME: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        policy: RestartPolicy {
            min_uptime: MIN_UPTIME,
            ..RestartPolicy::default()
        },
        grace: GRACE,
        start_timeout: START_TIMEOUT,
        health_misses: 3,
        api_base_port: 9000,
        supervisor_pid: 1,
        announce: "gallery is up: open http://127.0.0.1:8080/".into(),
        worker_prefix: String::new(),
        remote: Vec::new(),
        epoch: (Instant::now(), UNIX_EPOCH + Duration::from_secs(1_000_000)),
    }
}

fn children(workers: usize) -> Vec<ChildSpec> {
    let mut specs = vec![ChildSpec {
        name: "static".into(),
        role: Role::Static,
        port: 8082,
    }];
    specs.extend((1..=workers).map(|k| ChildSpec {
        name: api_name(k),
        role: Role::Api,
        port: 9000 + k as u16 - 1,
    }));
    specs.push(ChildSpec {
        name: "nginx".into(),
        role: Role::Nginx,
        port: 8080,
    });
    specs
}

/// A process of the simulated world.
#[derive(Debug, Clone)]
struct WorldProc {
    slot: String,
    pid: u32,
    /// The last signal it was sent, if any.
    signalled: Option<Signal>,
}

/// The core plus a world that does what its actions say, by hand.
struct Sim {
    core: Core,
    now: Instant,
    live: BTreeMap<ProcId, WorldProc>,
    timers: Vec<(Instant, Timer)>,
    binds: Vec<(u64, Vec<(String, u16)>)>,
    nginx: Vec<(u64, Vec<u16>, Option<u32>)>,
    replies: Vec<(ReplyTo, bool, String)>,
    logs: Vec<String>,
    notified: Vec<ServiceState>,
    written: Option<StackState>,
    exit: Option<(Result<(), String>, Vec<ReplyTo>)>,
    /// Every action of the last step.
    last: Vec<Action>,
    next_pid: u32,
    /// Spawns that fail at once (the program is missing) while true.
    spawn_fails: bool,
}

impl Sim {
    fn new(workers: usize) -> Sim {
        Sim::with(settings(), children(workers))
    }

    fn with(settings: Settings, children: Vec<ChildSpec>) -> Sim {
        Sim {
            now: settings.epoch.0,
            core: Core::new(settings, children),
            live: BTreeMap::new(),
            timers: Vec::new(),
            binds: Vec::new(),
            nginx: Vec::new(),
            replies: Vec::new(),
            logs: Vec::new(),
            notified: Vec::new(),
            written: None,
            exit: None,
            last: Vec::new(),
            next_pid: 100,
            spawn_fails: false,
        }
    }

    /// A stack that is up: servers and nginx ready.
    fn up(workers: usize) -> Sim {
        let mut sim = Sim::new(workers);
        sim.send(Event::Start);
        for name in sim.names().into_iter().filter(|n| n != "nginx") {
            sim.ready(&name);
        }
        sim.answer_nginx(Ok(()));
        sim.ready("nginx");
        assert!(sim.logs.iter().any(|l| l.starts_with("gallery is up")));
        sim
    }

    /// Feeds an event and everything the world answers at once.
    fn send(&mut self, event: Event) -> Vec<Action> {
        let mut queue = VecDeque::from([event]);
        let mut all = Vec::new();
        while let Some(event) = queue.pop_front() {
            let actions = self.core.on_event(event, self.now);
            for action in &actions {
                if let Some(follow) = self.apply(action) {
                    queue.push_back(follow);
                }
            }
            all.extend(actions);
        }
        self.last = all.clone();
        all
    }

    fn apply(&mut self, action: &Action) -> Option<Event> {
        match action {
            Action::Spawn { proc, spec } => {
                assert!(self.exit.is_none(), "spawn after exit");
                if self.spawn_fails {
                    return Some(Event::Exited {
                        proc: *proc,
                        status: "could not start: missing".into(),
                    });
                }
                self.next_pid += 1;
                self.live.insert(
                    *proc,
                    WorldProc {
                        slot: spec.name.clone(),
                        pid: self.next_pid,
                        signalled: None,
                    },
                );
                return Some(Event::Spawned {
                    proc: *proc,
                    pid: self.next_pid,
                });
            }
            Action::Signal { pid, signal, .. } => {
                if let Some(p) = self.live.values_mut().find(|p| p.pid == *pid) {
                    // SIGKILL sticks; a later SIGTERM does not undo it.
                    if p.signalled != Some(Signal::SIGKILL) {
                        p.signalled = Some(*signal);
                    }
                }
            }
            Action::Bind { token, sockets } => self.binds.push((*token, sockets.clone())),
            Action::ApplyNginx {
                token,
                api_ports,
                reload_pid,
            } => self.nginx.push((*token, api_ports.clone(), *reload_pid)),
            Action::WriteState(state) => self.written = Some(state.clone()),
            Action::Reply { to, ok, message } => self.replies.push((*to, *ok, message.clone())),
            Action::Log(line) => self.logs.push(line.clone()),
            Action::Notify(state) => self.notified.push(*state),
            Action::Schedule { after, timer } => {
                self.timers.push((self.now + *after, timer.clone()))
            }
            Action::Exit { result, notify } => {
                assert!(self.exit.is_none(), "exit twice");
                self.exit = Some((result.clone(), notify.clone()));
            }
            Action::Probe { .. } | Action::Watch { .. } | Action::CloseSocket { .. } => {}
        }
        None
    }

    fn names(&self) -> Vec<String> {
        self.core
            .slots
            .iter()
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// The live, unsignalled process of `slot` that the core serves with.
    fn serving(&self, slot: &str) -> ProcId {
        let index = self.core.slot_index(slot).expect("slot");
        self.core.slots[index].serving.as_ref().expect("serving").id
    }

    fn incoming(&self, slot: &str) -> Option<ProcId> {
        let index = self.core.slot_index(slot)?;
        self.core.slots[index].incoming.as_ref().map(|p| p.id)
    }

    fn pid(&self, slot: &str) -> Option<u32> {
        self.written
            .as_ref()?
            .children
            .iter()
            .find(|c| c.name == slot)?
            .pid
    }

    fn state_of(&self, slot: &str) -> Phase {
        self.written
            .as_ref()
            .expect("state written")
            .children
            .iter()
            .find(|c| c.name == slot)
            .expect("child in state")
            .state
    }

    fn ready(&mut self, slot: &str) -> Vec<Action> {
        let proc = self.incoming(slot).unwrap_or_else(|| self.serving(slot));
        self.send(Event::Ready { proc })
    }

    fn exit(&mut self, proc: ProcId, status: &str) -> Vec<Action> {
        self.live.remove(&proc);
        self.send(Event::Exited {
            proc,
            status: status.into(),
        })
    }

    fn crash(&mut self, slot: &str) -> Vec<Action> {
        let proc = self.serving(slot);
        self.exit(proc, "signal 9 (SIGKILL)")
    }

    /// Every signalled process exits.
    fn reap_signalled(&mut self) {
        let signalled: Vec<ProcId> = self
            .live
            .iter()
            .filter(|(_, p)| p.signalled.is_some())
            .map(|(id, _)| *id)
            .collect();
        for proc in signalled {
            if self.live.contains_key(&proc) {
                self.exit(proc, "exit code 0");
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            self.timers.sort_by_key(|(at, _)| *at);
            match self.timers.first() {
                Some((at, _)) if *at <= until => {
                    let (at, timer) = self.timers.remove(0);
                    self.now = self.now.max(at);
                    self.send(Event::Timer(timer));
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn answer_nginx(&mut self, result: Result<(), String>) {
        let (token, _, _) = self.nginx.remove(0);
        self.send(Event::NginxApplied { token, result });
    }

    fn answer_bind(&mut self, ok: bool) {
        let (token, sockets) = self.binds.remove(0);
        let result = if ok {
            Ok(sockets.iter().map(|(_, port)| *port).collect())
        } else {
            Err(format!("port {} is already in use", sockets[0].1))
        };
        self.send(Event::Bound { token, result });
    }

    fn control(&mut self, reply: ReplyTo, command: Command) -> Vec<Action> {
        self.send(Event::Control {
            reply: Some(reply),
            command,
        })
    }

    fn reply(&self, to: ReplyTo) -> Option<(bool, String)> {
        self.replies
            .iter()
            .find(|(r, _, _)| *r == to)
            .map(|(_, ok, message)| (*ok, message.clone()))
    }

    /// Signals of the last step to processes still running (not the
    /// clean-up of the group of one that exited).
    fn signals_sent(&self) -> Vec<(u32, Signal)> {
        self.last
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid, signal, .. } if self.live.values().any(|p| p.pid == *pid) => {
                    Some((*pid, *signal))
                }
                _ => None,
            })
            .collect()
    }

    fn spawned(&self) -> Vec<String> {
        self.last
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { spec, .. } => Some(spec.name.clone()),
                _ => None,
            })
            .collect()
    }

    fn api_names_in_state(&self) -> Vec<String> {
        self.written
            .as_ref()
            .unwrap()
            .children
            .iter()
            .filter(|c| c.role == Role::Api)
            .map(|c| c.name.clone())
            .collect()
    }
}

// ---- start -----------------------------------------------------------------

#[test]
fn start_runs_the_servers_then_nginx_then_announces() {
    let mut sim = Sim::new(2);
    sim.send(Event::Start);
    assert_eq!(sim.spawned(), ["static", "api-1", "api-2"]);
    assert!(sim.last.iter().any(|a| matches!(a, Action::Probe { .. })));
    sim.ready("static");
    sim.ready("api-1");
    assert!(sim.nginx.is_empty(), "nginx waits for every server");
    sim.ready("api-2");
    assert_eq!(sim.nginx.len(), 1);
    assert_eq!(sim.nginx[0].1, [9000, 9001]);
    assert_eq!(sim.nginx[0].2, None, "first config: no reload");
    sim.answer_nginx(Ok(()));
    assert_eq!(sim.spawned(), ["nginx"]);
    assert!(sim.notified.is_empty(), "not ready before the front door");
    sim.ready("nginx");
    assert_eq!(sim.notified, [ServiceState::Ready]);
    let up = sim
        .logs
        .iter()
        .position(|l| l == "gallery is up: open http://127.0.0.1:8080/");
    assert!(up.is_some(), "{:?}", sim.logs);
    assert!(sim.logs.iter().any(|l| l.starts_with("api-1       pid ")));
    for name in sim.names() {
        assert_eq!(sim.state_of(&name), Phase::Running, "{name}");
    }
}

#[test]
fn a_refused_nginx_config_stops_the_start_with_its_reason() {
    let mut sim = Sim::new(1);
    sim.send(Event::Start);
    sim.ready("static");
    sim.ready("api-1");
    sim.answer_nginx(Err("nginx rejected the generated config: bad".into()));
    assert!(sim.spawned().is_empty());
    sim.reap_signalled();
    let (result, _) = sim.exit.clone().expect("exit");
    assert_eq!(
        result,
        Err("nginx rejected the generated config: bad".into())
    );
    assert!(sim.live.is_empty());
}

#[test]
fn a_static_server_that_never_starts_fails_the_start() {
    let mut sim = Sim::new(1);
    sim.spawn_fails = true;
    sim.send(Event::Start);
    sim.advance(Duration::from_secs(5));
    let (result, _) = sim.exit.clone().expect("exit after the crash loop");
    assert!(
        result
            .unwrap_err()
            .contains("the static server failed to start")
    );
}

// ---- restart policy --------------------------------------------------------

#[test]
fn a_crash_in_service_restarts_at_once_and_never_counts() {
    let mut sim = Sim::up(2);
    for round in 0..20 {
        sim.advance(MIN_UPTIME * 2);
        sim.crash("api-1");
        assert_eq!(sim.spawned(), ["api-1"], "round {round}: at once");
        sim.ready("api-1");
        assert_eq!(sim.state_of("api-1"), Phase::Running);
    }
    assert!(sim.logs.iter().all(|l| !l.contains("marked failed")));
    let restarts = sim.written.as_ref().unwrap().children[1].restarts;
    assert_eq!(restarts, 20);
}

#[test]
fn an_unstable_crash_loop_backs_off_fails_and_is_retried_after_the_cool_down() {
    let mut sim = Sim::up(2);
    let delays_ms = [100, 200, 400, 800];
    for (n, delay) in delays_ms.into_iter().enumerate() {
        sim.crash("api-2");
        assert!(sim.spawned().is_empty(), "exit {n}: waits");
        assert_eq!(sim.state_of("api-2"), Phase::Backoff);
        assert!(sim.logs.last().unwrap().contains(&format!("in {delay} ms")));
        sim.advance(Duration::from_millis(delay - 1));
        assert!(sim.spawned().is_empty());
        sim.advance(Duration::from_millis(1));
        assert_eq!(
            sim.spawned(),
            ["api-2"],
            "exit {n}: restarted after {delay} ms"
        );
    }
    sim.crash("api-2");
    assert_eq!(sim.state_of("api-2"), Phase::Failed);
    assert!(
        sim.last.contains(&Action::CloseSocket {
            slot: "api-2".into()
        }),
        "a failed worker's socket is closed"
    );
    assert!(
        sim.logs
            .iter()
            .any(|l| l == "api-2 exited 5 times within 30 s: marked failed, trying again in 60 s")
    );
    // The rest keeps serving.
    assert_eq!(sim.state_of("api-1"), Phase::Running);
    sim.advance(Duration::from_secs(59));
    assert_eq!(sim.state_of("api-2"), Phase::Failed);
    sim.advance(Duration::from_secs(1));
    assert!(
        sim.logs
            .iter()
            .any(|l| l == "trying api-2 again after its cool-down")
    );
    assert_eq!(sim.binds.len(), 1, "its socket is bound again first");
    sim.answer_bind(true);
    assert_eq!(sim.spawned(), ["api-2"]);
    sim.ready("api-2");
    assert_eq!(sim.state_of("api-2"), Phase::Running);
}

#[test]
fn a_second_failure_doubles_the_cool_down() {
    let mut sim = Sim::up(1);
    for _ in 0..5 {
        sim.crash("api-1");
        sim.advance(Duration::from_secs(1));
    }
    sim.advance(Duration::from_secs(60));
    sim.answer_bind(true);
    for _ in 0..5 {
        sim.crash("api-1");
        sim.advance(Duration::from_secs(1));
    }
    assert!(
        sim.logs
            .iter()
            .any(|l| l.ends_with("trying again in 120 s")),
        "{:?}",
        sim.logs
    );
}

#[test]
fn a_child_that_never_answers_is_killed_at_the_start_timeout() {
    let mut sim = Sim::up(1);
    sim.advance(MIN_UPTIME);
    sim.crash("api-1");
    let pid = sim.pid("api-1").unwrap();
    sim.advance(START_TIMEOUT);
    assert_eq!(sim.signals_sent(), [(pid, Signal::SIGKILL)]);
    assert!(
        sim.logs
            .iter()
            .any(|l| l.contains("did not answer within 30 s: killing it"))
    );
}

// ---- watchdog --------------------------------------------------------------

#[test]
fn health_misses_in_a_row_kill_and_restart_the_child() {
    let mut sim = Sim::up(2);
    sim.advance(Duration::from_secs(5));
    let proc = sim.serving("api-2");
    let pid = sim.pid("api-2").unwrap();
    sim.send(Event::HealthMiss { proc });
    sim.send(Event::HealthMiss { proc });
    sim.send(Event::HealthOk { proc });
    sim.send(Event::HealthMiss { proc });
    sim.send(Event::HealthMiss { proc });
    assert!(sim.signals_sent().is_empty(), "an answer resets the count");
    assert_eq!(
        sim.written.as_ref().unwrap().children[2].health,
        Some(Health { misses: 2 })
    );
    sim.send(Event::HealthMiss { proc });
    assert_eq!(sim.signals_sent(), [(pid, Signal::SIGKILL)]);
    assert_eq!(
        sim.logs.last().unwrap(),
        &format!("api-2 (pid {pid}) missed 3 health checks: killing")
    );
    sim.reap_signalled();
    assert_eq!(
        sim.spawned(),
        ["api-2"],
        "restarted at once, as after a crash"
    );
}

// ---- stop ------------------------------------------------------------------

#[test]
fn stop_goes_nginx_first_then_the_servers_then_exits() {
    let mut sim = Sim::up(2);
    let nginx = sim.pid("nginx").unwrap();
    sim.send(Event::StopSignal("SIGTERM".into()));
    assert_eq!(sim.notified, [ServiceState::Ready, ServiceState::Stopping]);
    assert_eq!(sim.signals_sent(), [(nginx, Signal::SIGQUIT)]);
    for name in ["static", "api-1", "nginx"] {
        assert_eq!(sim.state_of(name), Phase::Stopping);
    }
    sim.reap_signalled();
    let terms: Vec<_> = sim.live.values().map(|p| p.signalled).collect();
    assert_eq!(terms, [Some(Signal::SIGTERM); 3], "the servers after nginx");
    sim.reap_signalled();
    assert_eq!(sim.exit, Some((Ok(()), vec![])));
    assert!(sim.logs.iter().any(|l| l == "stopped"));
}

#[test]
fn a_server_that_does_not_drain_is_killed_after_the_grace_period() {
    let mut sim = Sim::up(1);
    sim.send(Event::StopSignal("SIGINT".into()));
    sim.reap_signalled();
    let api = sim.serving("api-1");
    sim.exit(sim.serving("static"), "exit code 0");
    sim.advance(GRACE);
    assert_eq!(sim.live[&api].signalled, Some(Signal::SIGKILL));
    sim.reap_signalled();
    assert!(sim.exit.is_some());
}

#[test]
fn a_second_stop_signal_kills_everything_at_once() {
    let mut sim = Sim::up(2);
    sim.send(Event::StopSignal("SIGTERM".into()));
    sim.send(Event::StopSignal("SIGINT".into()));
    assert_eq!(sim.signals_sent().len(), 4);
    assert!(
        sim.signals_sent()
            .iter()
            .all(|(_, s)| *s == Signal::SIGKILL)
    );
    sim.reap_signalled();
    let (result, _) = sim.exit.clone().unwrap();
    assert!(result.unwrap_err().contains("second signal"));
}

#[test]
fn the_stop_command_answers_once_everything_is_down() {
    let mut sim = Sim::up(1);
    sim.control(7, Command::Stop);
    sim.reap_signalled();
    sim.reap_signalled();
    assert_eq!(sim.exit, Some((Ok(()), vec![7])));
}

// ---- reload and restart ----------------------------------------------------

#[test]
fn reload_replaces_one_child_at_a_time_and_reloads_nginx_in_place() {
    let mut sim = Sim::up(2);
    let old: Vec<u32> = ["static", "api-1", "api-2", "nginx"]
        .iter()
        .map(|n| sim.pid(n).unwrap())
        .collect();
    sim.control(1, Command::Reload);
    for (i, name) in ["static", "api-1", "api-2"].into_iter().enumerate() {
        assert_eq!(sim.spawned(), [name], "one child at a time");
        assert!(
            sim.signals_sent().is_empty(),
            "the old one serves until the new one answers"
        );
        sim.ready(name);
        assert_eq!(sim.signals_sent(), [(old[i], Signal::SIGTERM)]);
        assert_ne!(sim.pid(name), Some(old[i]));
        assert!(
            sim.spawned().is_empty(),
            "the next waits for the old one to drain"
        );
        sim.reap_signalled();
    }
    assert!(
        sim.nginx.is_empty(),
        "nginx's config is unchanged: no reload"
    );
    assert_eq!(sim.pid("nginx"), Some(old[3]));
    let (ok, message) = sim.reply(1).unwrap();
    assert!(ok, "{message}");
    assert!(message.contains("api-2 (pid"), "{message}");
    assert_eq!(
        sim.written.as_ref().unwrap().children[1].restarts,
        0,
        "a reload is no restart"
    );
}

#[test]
fn nginx_is_reloaded_in_place_when_its_config_changed_or_when_asked() {
    let mut sim = Sim::up(1);
    let nginx = sim.pid("nginx").unwrap();
    sim.control(1, Command::Restart("nginx".into()));
    assert_eq!(sim.nginx[0].1, [9000]);
    assert_eq!(sim.nginx[0].2, Some(nginx), "reloaded in place");
    sim.answer_nginx(Ok(()));
    assert!(sim.reply(1).unwrap().1.contains("reloaded in place"));
    // A refused config leaves nginx's config unknown: the next reload applies it.
    sim.control(2, Command::Restart("nginx".into()));
    sim.answer_nginx(Err("refused".into()));
    assert!(!sim.reply(2).unwrap().0);
    sim.control(3, Command::Reload);
    sim.ready("static");
    sim.reap_signalled();
    sim.ready("api-1");
    sim.reap_signalled();
    assert_eq!(sim.nginx.len(), 1);
    assert_eq!(sim.nginx[0].2, Some(nginx));
}

#[test]
fn a_reload_whose_new_process_never_answers_stops_and_keeps_the_old_one() {
    let mut sim = Sim::up(2);
    sim.control(1, Command::Reload);
    sim.ready("static");
    sim.reap_signalled();
    let old = sim.pid("api-1").unwrap();
    assert_eq!(sim.spawned(), ["api-1"]);
    sim.advance(START_TIMEOUT);
    sim.reap_signalled();
    let (ok, message) = sim.reply(1).unwrap();
    assert!(!ok);
    assert_eq!(
        message,
        format!(
            "api-1: the new process did not answer within 30 s; the old process (pid {old}) keeps serving"
        )
    );
    assert_eq!(sim.pid("api-1"), Some(old));
    assert_eq!(sim.state_of("api-1"), Phase::Running);
    assert!(sim.nginx.is_empty(), "the rollout stopped there");
}

#[test]
fn a_reload_whose_new_process_exits_names_the_child_and_why() {
    let mut sim = Sim::up(1);
    sim.control(1, Command::Reload);
    sim.ready("static");
    sim.reap_signalled();
    let new = sim.incoming("api-1").unwrap();
    sim.exit(new, "exit code 1");
    let (ok, message) = sim.reply(1).unwrap();
    assert!(!ok);
    assert!(message.starts_with("api-1: the new process exited before it was ready (exit code 1)"));
    // Exits of a reload's new process never count toward the crash loop.
    assert!(sim.core.slots[1].tracker == RestartTracker::default());
}

#[test]
fn restart_replaces_only_the_named_child() {
    let mut sim = Sim::up(3);
    let before: Vec<_> = sim.names().iter().map(|n| sim.pid(n)).collect();
    sim.control(1, Command::Restart("api-2".into()));
    assert_eq!(sim.spawned(), ["api-2"]);
    sim.ready("api-2");
    sim.reap_signalled();
    assert!(sim.reply(1).unwrap().0);
    let after: Vec<_> = sim.names().iter().map(|n| sim.pid(n)).collect();
    let changed: Vec<_> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert_eq!(changed, [2]);
    sim.control(2, Command::Restart("nope".into()));
    let (ok, message) = sim.reply(2).unwrap();
    assert!(!ok && message.contains("\"nope\""), "{message}");
}

#[test]
fn restart_revives_a_failed_child_at_once() {
    let mut sim = Sim::up(2);
    for _ in 0..5 {
        sim.crash("api-1");
        sim.advance(Duration::from_secs(1));
    }
    assert_eq!(sim.state_of("api-1"), Phase::Failed);
    sim.control(1, Command::Restart("api-1".into()));
    sim.answer_bind(true);
    assert_eq!(sim.spawned(), ["api-1"]);
    sim.ready("api-1");
    assert!(sim.reply(1).unwrap().0);
    assert_eq!(sim.state_of("api-1"), Phase::Running);
    // The cool-down timer it had is void now.
    sim.advance(Duration::from_secs(120));
    assert_eq!(sim.state_of("api-1"), Phase::Running);
}

#[test]
fn commands_wait_their_turn() {
    let mut sim = Sim::up(1);
    sim.control(1, Command::Restart("static".into()));
    sim.control(2, Command::Restart("api-1".into()));
    assert!(sim.spawned().is_empty(), "the second waits");
    sim.ready("static");
    sim.reap_signalled();
    assert_eq!(sim.spawned(), ["api-1"]);
    assert!(sim.reply(1).unwrap().0);
}

#[test]
fn stop_during_a_reload_answers_the_reload() {
    let mut sim = Sim::up(1);
    sim.control(1, Command::Reload);
    sim.control(2, Command::Scale(3));
    sim.send(Event::StopSignal("SIGTERM".into()));
    assert_eq!(
        sim.reply(1),
        Some((false, "the supervisor is stopping".into()))
    );
    assert_eq!(
        sim.reply(2),
        Some((false, "the supervisor is stopping".into()))
    );
    sim.reap_signalled();
    sim.reap_signalled();
    assert!(sim.exit.is_some() && sim.live.is_empty());
}

// ---- scale -----------------------------------------------------------------

#[test]
fn scale_up_binds_starts_waits_then_reloads_nginx() {
    let mut sim = Sim::up(2);
    sim.control(1, Command::Scale(4));
    assert_eq!(
        sim.binds[0].1,
        [("api-3".into(), 9002), ("api-4".into(), 9003)]
    );
    sim.answer_bind(true);
    assert_eq!(sim.spawned(), ["api-3", "api-4"]);
    sim.ready("api-3");
    assert!(sim.nginx.is_empty(), "nginx waits for every new worker");
    sim.ready("api-4");
    assert_eq!(sim.nginx[0].1, [9000, 9001, 9002, 9003]);
    assert!(sim.reply(1).is_none());
    sim.answer_nginx(Ok(()));
    let (ok, message) = sim.reply(1).unwrap();
    assert!(ok, "{message}");
    assert_eq!(
        sim.api_names_in_state(),
        ["api-1", "api-2", "api-3", "api-4"]
    );
    let names = sim.names();
    assert_eq!(names.last().unwrap(), "nginx");
}

#[test]
fn scale_up_on_a_busy_port_changes_nothing() {
    let mut sim = Sim::up(2);
    sim.control(1, Command::Scale(3));
    sim.answer_bind(false);
    let (ok, message) = sim.reply(1).unwrap();
    assert!(!ok && message.contains("port 9002"), "{message}");
    assert_eq!(sim.api_names_in_state(), ["api-1", "api-2"]);
    assert!(sim.nginx.is_empty());
}

#[test]
fn scale_up_whose_new_worker_fails_takes_the_new_workers_back() {
    let mut sim = Sim::up(1);
    sim.control(1, Command::Scale(3));
    sim.answer_bind(true);
    sim.ready("api-2");
    let new = sim.serving("api-3");
    sim.exit(new, "exit code 1");
    let (ok, message) = sim.reply(1).unwrap();
    assert!(!ok && message.contains("api-3"), "{message}");
    sim.reap_signalled();
    assert_eq!(sim.api_names_in_state(), ["api-1"]);
    assert!(sim.live.values().all(|p| p.slot != "api-2"));
}

#[test]
fn scale_down_takes_workers_out_of_nginx_first_then_drains_them() {
    let mut sim = Sim::up(4);
    let removed = [sim.pid("api-3").unwrap(), sim.pid("api-4").unwrap()];
    sim.control(1, Command::Scale(2));
    assert_eq!(sim.nginx[0].1, [9000, 9001]);
    assert!(
        sim.signals_sent().is_empty(),
        "still serving until nginx has the new upstream"
    );
    sim.answer_nginx(Ok(()));
    assert_eq!(
        sim.signals_sent(),
        [(removed[0], Signal::SIGTERM), (removed[1], Signal::SIGTERM)]
    );
    assert!(sim.reply(1).is_none(), "answers once they are gone");
    sim.reap_signalled();
    assert!(sim.last.contains(&Action::CloseSocket {
        slot: "api-4".into()
    }));
    assert!(sim.reply(1).unwrap().0);
    assert_eq!(sim.api_names_in_state(), ["api-1", "api-2"]);
}

#[test]
fn signals_scale_by_one_and_never_below_one() {
    let mut sim = Sim::up(1);
    sim.send(Event::Control {
        reply: None,
        command: Command::RemoveWorker,
    });
    assert!(sim.logs.last().unwrap().contains("not removing it"));
    sim.send(Event::Control {
        reply: None,
        command: Command::AddWorker,
    });
    sim.answer_bind(true);
    sim.ready("api-2");
    sim.answer_nginx(Ok(()));
    assert_eq!(sim.api_names_in_state(), ["api-1", "api-2"]);
    assert!(
        sim.logs
            .last()
            .unwrap()
            .starts_with("scaled to 2 API workers")
    );
}

// ---- roles (SPEC §10) ------------------------------------------------------

/// `--role workers --name-prefix b-`: only the API workers, no nginx.
fn workers_only(workers: usize) -> Sim {
    let settings = Settings {
        announce: "gallery workers are up: b-api-1 on 127.0.0.2:9000".into(),
        worker_prefix: "b-".into(),
        ..settings()
    };
    let specs = (1..=workers)
        .map(|k| ChildSpec {
            name: worker_name("b-", k),
            role: Role::Api,
            port: 9000 + k as u16 - 1,
        })
        .collect();
    Sim::with(settings, specs)
}

#[test]
fn workers_without_nginx_are_up_once_they_answer() {
    let mut sim = workers_only(2);
    sim.send(Event::Start);
    assert_eq!(sim.spawned(), ["b-api-1", "b-api-2"]);
    sim.ready("b-api-1");
    assert!(sim.notified.is_empty());
    sim.ready("b-api-2");
    assert!(sim.nginx.is_empty(), "no nginx to configure");
    assert_eq!(sim.notified, [ServiceState::Ready]);
    assert!(
        sim.logs
            .iter()
            .any(|l| l.starts_with("gallery workers are up: b-api-1")),
        "{:?}",
        sim.logs
    );
    assert_eq!(sim.api_names_in_state(), ["b-api-1", "b-api-2"]);
    // A crash in service is restarted as anywhere.
    sim.advance(Duration::from_secs(5));
    sim.crash("b-api-2");
    assert_eq!(sim.spawned(), ["b-api-2"]);
}

#[test]
fn workers_without_nginx_scale_and_stop_without_waiting_for_it() {
    let mut sim = workers_only(1);
    sim.send(Event::Start);
    sim.ready("b-api-1");
    sim.control(1, Command::Scale(2));
    assert_eq!(sim.binds[0].1, [("b-api-2".into(), 9001)]);
    sim.answer_bind(true);
    sim.ready("b-api-2");
    let (ok, message) = sim.reply(1).expect("answered once ready");
    assert!(
        ok && message.contains("added b-api-2 (port 9001)"),
        "{message}"
    );
    assert!(sim.nginx.is_empty());
    let removed = sim.pid("b-api-2").unwrap();
    sim.control(2, Command::Scale(1));
    assert_eq!(sim.signals_sent(), [(removed, Signal::SIGTERM)]);
    sim.reap_signalled();
    assert!(sim.reply(2).unwrap().0);
    assert_eq!(sim.api_names_in_state(), ["b-api-1"]);
    sim.control(3, Command::Reload);
    sim.ready("b-api-1");
    sim.reap_signalled();
    let (ok, message) = sim.reply(3).unwrap();
    assert!(ok && message.starts_with("replaced b-api-1"), "{message}");
    let worker = sim.pid("b-api-1").unwrap();
    sim.send(Event::StopSignal("SIGTERM".into()));
    assert_eq!(sim.signals_sent(), [(worker, Signal::SIGTERM)], "at once");
    sim.reap_signalled();
    assert_eq!(sim.exit.clone().unwrap().0, Ok(()));
}

/// `--role front --upstream 127.0.0.2:9001`: static and nginx only.
fn front_only() -> Sim {
    let settings = Settings {
        remote: vec!["127.0.0.2:9001,weight=2".parse().unwrap()],
        ..settings()
    };
    let mut specs = children(0);
    assert_eq!(specs.len(), 2);
    specs.retain(|s| s.role != Role::Api);
    Sim::with(settings, specs)
}

#[test]
fn a_front_starts_nginx_over_no_local_worker_and_lists_the_remote_ones() {
    let mut sim = front_only();
    sim.send(Event::Start);
    assert_eq!(sim.spawned(), ["static"]);
    sim.ready("static");
    assert_eq!(sim.nginx[0].1, Vec::<u16>::new(), "no local worker");
    sim.answer_nginx(Ok(()));
    sim.ready("nginx");
    assert_eq!(sim.notified, [ServiceState::Ready]);
    let state = sim.written.clone().unwrap();
    let remote = state
        .children
        .iter()
        .find(|c| c.remote)
        .expect("remote entry");
    assert_eq!(remote.name, "remote-1");
    assert_eq!(remote.address.as_deref(), Some("127.0.0.2:9001"));
    assert_eq!(
        (remote.pid, remote.weight, remote.state),
        (None, Some(2), Phase::Remote)
    );
    for command in [Command::Scale(2), Command::AddWorker, Command::RemoveWorker] {
        sim.control(1, command);
        let (ok, message) = sim.reply(1).unwrap();
        assert!(!ok && message.contains("--role front"), "{message}");
        sim.replies.clear();
    }
    assert!(sim.binds.is_empty());
    // Restart by name still finds only supervised children.
    sim.control(2, Command::Restart("remote-1".into()));
    let (ok, message) = sim.reply(2).unwrap();
    assert!(!ok && message.contains("no child named"), "{message}");
}

// ---- the property test -----------------------------------------------------

/// Checks the invariants of the core against the simulated world.
fn check_invariants(sim: &Sim) {
    let core = &sim.core;
    // state.json always matches the core.
    if core.mode != Mode::Done {
        assert_eq!(
            sim.written.as_ref(),
            Some(&core.snapshot()),
            "state.json is stale"
        );
    }
    // Every live process is one the core knows about.
    for (id, p) in &sim.live {
        assert!(
            core.find(*id).is_some(),
            "orphan process {id} of {}",
            p.slot
        );
    }
    // At most one serving generation per slot, but for a replacement's overlap.
    for slot in &core.slots {
        let unsignalled = sim
            .live
            .iter()
            .filter(|(id, p)| {
                p.slot == slot.spec.name
                    && p.signalled.is_none()
                    && !slot.draining.iter().any(|d| d.id == **id)
            })
            .count();
        let allowed = 1 + usize::from(slot.incoming.is_some());
        assert!(
            unsignalled <= allowed,
            "{} runs {unsignalled} processes",
            slot.spec.name
        );
        assert!(
            slot.incoming.is_none() || slot.serving.is_some(),
            "an incoming without a serving"
        );
    }
    // No child is left without a process, a pending restart or `failed`.
    if matches!(core.mode, Mode::Up | Mode::Starting { .. }) {
        for slot in core.slots.iter().filter(|s| !s.removing) {
            let pending = slot.restart_timer.is_some_and(|token| {
                sim.timers
                    .iter()
                    .any(|(_, t)| matches!(t, Timer::RestartDue { token: t, slot: s } if *t == token && *s == slot.spec.name))
            });
            let nginx_not_yet =
                slot.spec.role == Role::Nginx && matches!(core.mode, Mode::Starting { .. });
            assert!(
                slot.serving.is_some() || slot.binding || pending || nginx_not_yet,
                "{} is left with nothing to come",
                slot.spec.name
            );
            assert!(
                !slot.failed || pending || slot.binding,
                "{} failed with no cool-down",
                slot.spec.name
            );
        }
    }
}

/// One random step, chosen by `kind` with parameter `param`.
fn random_step(sim: &mut Sim, kind: u8, param: u16) {
    let pick = |n: usize| usize::from(param) % n.max(1);
    let live: Vec<ProcId> = sim.live.keys().copied().collect();
    match kind % 14 {
        0 | 1 if !live.is_empty() => {
            let proc = live[pick(live.len())];
            sim.send(Event::Ready { proc });
        }
        2 if !live.is_empty() => {
            let proc = live[pick(live.len())];
            sim.exit(proc, "signal 9 (SIGKILL)");
        }
        3 => sim.reap_signalled(),
        4 if !live.is_empty() => {
            let proc = live[pick(live.len())];
            sim.send(Event::HealthMiss { proc });
        }
        5 if !live.is_empty() => {
            let proc = live[pick(live.len())];
            sim.send(Event::HealthOk { proc });
        }
        6 | 7 => sim.advance(Duration::from_millis(u64::from(param) * 4)),
        8 if !sim.binds.is_empty() => sim.answer_bind(!param.is_multiple_of(4)),
        9 if !sim.nginx.is_empty() => {
            let result = if param.is_multiple_of(5) {
                Err("refused".into())
            } else {
                Ok(())
            };
            sim.answer_nginx(result);
        }
        10 => {
            let command = match param % 6 {
                0 => Command::Reload,
                1 => Command::Scale(1 + param % 6),
                2 => Command::AddWorker,
                3 => Command::RemoveWorker,
                _ => {
                    let names = sim.names();
                    let name = names
                        .get(pick(names.len() + 1))
                        .cloned()
                        .unwrap_or("nope".into());
                    Command::Restart(name)
                }
            };
            sim.control(u64::from(param), command);
        }
        11 => sim.spawn_fails = param.is_multiple_of(7),
        12 if param.is_multiple_of(50) => {
            sim.send(Event::StopSignal("SIGTERM".into()));
        }
        _ => {}
    }
}

/// Drives a stopping core to its end: processes exit, timers fire, nginx
/// and binds answer.
fn finish_stop(sim: &mut Sim) {
    sim.send(Event::StopSignal("SIGTERM".into()));
    for _ in 0..100 {
        if sim.exit.is_some() {
            break;
        }
        sim.reap_signalled();
        while !sim.nginx.is_empty() {
            sim.answer_nginx(Ok(()));
        }
        while !sim.binds.is_empty() {
            sim.answer_bind(true);
        }
        sim.advance(GRACE);
        check_invariants(sim);
    }
    assert!(sim.exit.is_some(), "the stop ended");
    assert!(
        sim.live.is_empty(),
        "a stop ends with nothing running: {:?}",
        sim.live
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 4000,
        failure_persistence: None,
        ..Default::default()
    })]

    #[test]
    fn random_event_sequences_keep_every_invariant(
        steps in proptest::collection::vec((0u8..14, 0u16..2000), 1..250),
        workers in 1usize..4,
        from_up in proptest::bool::ANY,
    ) {
        let mut sim = if from_up { Sim::up(workers) } else {
            let mut sim = Sim::new(workers);
            sim.send(Event::Start);
            sim
        };
        check_invariants(&sim);
        for (kind, param) in steps {
            random_step(&mut sim, kind, param);
            check_invariants(&sim);
            if sim.exit.is_some() {
                break;
            }
        }
        finish_stop(&mut sim);
    }
}
