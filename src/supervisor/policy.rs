//! The restart policy (SPEC §6), as a pure state machine over timestamps.
//!
//! Exits are judged by stability, as pm2 does with `min_uptime`:
//! - a child that had been ready for at least `min_uptime` was killed in
//!   service (an operator, the OOM killer, the watchdog): it is restarted at
//!   once, every time, and the exit never counts toward the crash-loop limit;
//! - an *unstable* exit (before becoming ready, or within `min_uptime` of
//!   it) backs off exponentially from `backoff_base` to `backoff_cap`, and
//!   `max_restarts` of them within `window` mark the child failed;
//! - a failed child is tried again after a cool-down that doubles from
//!   `cooldown` to `max_cooldown`, so a passing cause never leaves the site
//!   down for good.
//!
//! The defaults live here and nowhere else; the CLI's defaults name them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// `--min-uptime`'s default, in seconds.
pub const DEFAULT_MIN_UPTIME: &str = "1";
/// `--max-restarts`'s default.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// `--restart-window`'s default, in seconds.
pub const DEFAULT_RESTART_WINDOW: &str = "30";
/// `--cooldown`'s default, in seconds.
pub const DEFAULT_COOLDOWN: &str = "60";

/// Tuning for [`RestartTracker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub min_uptime: Duration,
    pub max_restarts: u32,
    pub window: Duration,
    /// Delay after the first unstable exit; each further one doubles it.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// First cool-down of a failed child; each further one doubles it.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        let seconds = |text: &str| Duration::from_secs(text.parse().expect("a whole number"));
        Self {
            min_uptime: seconds(DEFAULT_MIN_UPTIME),
            max_restarts: DEFAULT_MAX_RESTARTS,
            window: seconds(DEFAULT_RESTART_WINDOW),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            cooldown: seconds(DEFAULT_COOLDOWN),
            max_cooldown: Duration::from_secs(600),
        }
    }
}

/// What to do about a child that just exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Killed in service: start it again now.
    RestartNow,
    /// Unstable: start it again after this delay.
    RestartAfter(Duration),
    /// Too many unstable exits: mark it failed, try again after this cool-down.
    Fail { retry_after: Duration },
}

/// One child's restart history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartTracker {
    unstable: VecDeque<Instant>,
    backoff_step: u32,
    /// The cool-down the next failure gets, once there has been one.
    next_cooldown: Option<Duration>,
    last_failed: Option<Instant>,
}

impl RestartTracker {
    /// Records an exit at `now` of a child that became ready at `ready_at`
    /// (never, if `None`) and decides what happens next.
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        ready_at: Option<Instant>,
        now: Instant,
    ) -> Decision {
        let stable =
            ready_at.is_some_and(|ready| now.saturating_duration_since(ready) >= policy.min_uptime);
        if stable {
            self.backoff_step = 0;
            self.unstable.clear();
            self.next_cooldown = None;
            return Decision::RestartNow;
        }
        self.unstable.push_back(now);
        while self
            .unstable
            .front()
            .is_some_and(|&oldest| now.saturating_duration_since(oldest) > policy.window)
        {
            self.unstable.pop_front();
        }
        if self.unstable.len() >= policy.max_restarts as usize {
            // A failure long after the last one starts the cool-downs afresh.
            if self
                .last_failed
                .is_some_and(|last| now.saturating_duration_since(last) > 2 * policy.max_cooldown)
            {
                self.next_cooldown = None;
            }
            let retry_after = self.next_cooldown.unwrap_or(policy.cooldown);
            self.next_cooldown = Some(retry_after.saturating_mul(2).min(policy.max_cooldown));
            self.last_failed = Some(now);
            self.unstable.clear();
            self.backoff_step = 0;
            return Decision::Fail { retry_after };
        }
        let delay = policy
            .backoff_base
            .saturating_mul(1 << self.backoff_step.min(16))
            .min(policy.backoff_cap);
        self.backoff_step += 1;
        Decision::RestartAfter(delay)
    }

    /// An operator asked for a fresh start (`restart NAME`, `reload`): the
    /// unstable history is forgotten, the cool-down is kept.
    pub fn forgive(&mut self) {
        self.unstable.clear();
        self.backoff_step = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy() -> RestartPolicy {
        RestartPolicy::default()
    }

    /// One row: an exit at `t_ms` of a child ready `ready_ms` before (None:
    /// never ready), and the decision expected.
    fn run(rows: &[(u64, Option<u64>, Decision)]) {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        for (i, &(t_ms, ready_ms, expected)) in rows.iter().enumerate() {
            let now = t0 + MS(t_ms);
            let ready_at = ready_ms.map(|r| now - MS(r));
            assert_eq!(
                tracker.on_exit(&policy(), ready_at, now),
                expected,
                "row {i}"
            );
        }
    }

    #[test]
    fn killed_in_service_restarts_at_once_every_time() {
        let rows: Vec<_> = (0..50)
            .map(|i| (i * 100 + 5_000, Some(1_000), Decision::RestartNow))
            .collect();
        run(&rows);
    }

    #[test]
    fn unstable_exits_back_off_from_100_ms_and_then_fail() {
        use Decision::*;
        run(&[
            (0, None, RestartAfter(MS(100))),
            (200, Some(50), RestartAfter(MS(200))),
            (500, None, RestartAfter(MS(400))),
            (1_000, None, RestartAfter(MS(800))),
            (
                2_000,
                None,
                Fail {
                    retry_after: Duration::from_secs(60),
                },
            ),
        ]);
    }

    #[test]
    fn backoff_stops_at_the_cap() {
        let mut policy = policy();
        policy.max_restarts = 100;
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        let delays: Vec<_> = (0..8u64)
            .map(|i| tracker.on_exit(&policy, None, t0 + MS(i)))
            .collect();
        let after = |ms| Decision::RestartAfter(MS(ms));
        assert_eq!(
            delays,
            [
                after(100),
                after(200),
                after(400),
                after(800),
                after(1600),
                after(3200),
                after(5000),
                after(5000)
            ]
        );
    }

    #[test]
    fn a_stable_exit_resets_the_backoff() {
        use Decision::*;
        run(&[
            (0, None, RestartAfter(MS(100))),
            (200, None, RestartAfter(MS(200))),
            (10_000, Some(5_000), RestartNow),
            (10_100, None, RestartAfter(MS(100))),
        ]);
    }

    #[test]
    fn unstable_exits_spread_beyond_the_window_never_fail() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        for i in 0..20 {
            let decision = tracker.on_exit(&policy(), None, t0 + Duration::from_secs(i * 8));
            assert!(matches!(decision, Decision::RestartAfter(_)), "exit {i}");
        }
    }

    #[test]
    fn cooldowns_double_up_to_ten_minutes() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        let mut cooldowns = Vec::new();
        let mut t = t0;
        for _ in 0..6 {
            loop {
                t += MS(10);
                if let Decision::Fail { retry_after } = tracker.on_exit(&policy(), None, t) {
                    cooldowns.push(retry_after.as_secs());
                    break;
                }
            }
        }
        assert_eq!(cooldowns, [60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn forgiving_clears_the_unstable_history() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        for i in 0..4 {
            tracker.on_exit(&policy(), None, t0 + MS(i));
        }
        tracker.forgive();
        assert_eq!(
            tracker.on_exit(&policy(), None, t0 + MS(10)),
            Decision::RestartAfter(MS(100))
        );
    }
}
