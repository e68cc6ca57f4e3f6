//! The restart policy (SPEC §6), as a pure state machine over timestamps.
//!
//! The first restart is immediate; each further one waits twice as long as
//! the last, up to a cap. A child that stays up for the stable period has its
//! backoff reset. A child that exits `max_restarts` times within the window
//! is given up on (marked failed) so one broken child cannot keep the
//! machine busy while the rest of the stack serves.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tuning for [`RestartTracker`].
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Delay of the second restart in a row; the first is immediate.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Uptime after which a child counts as healthy again.
    pub stable_after: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
            max_restarts: 5,
            window: Duration::from_secs(30),
        }
    }
}

/// What to do about a child that just exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    GiveUp,
}

/// One child's restart history.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    consecutive: u32,
    exits: VecDeque<Instant>,
}

impl RestartTracker {
    /// Records an exit at `now` of a child started at `started` and decides.
    pub fn on_exit(&mut self, policy: &RestartPolicy, started: Instant, now: Instant) -> Decision {
        if now.saturating_duration_since(started) >= policy.stable_after {
            self.consecutive = 0;
        }
        self.exits.push_back(now);
        while let Some(&oldest) = self.exits.front() {
            if now.saturating_duration_since(oldest) > policy.window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
        if self.exits.len() >= policy.max_restarts as usize {
            return Decision::GiveUp;
        }
        let delay = match self.consecutive {
            0 => Duration::ZERO,
            n => policy
                .base_delay
                .saturating_mul(1 << (n - 1).min(16))
                .min(policy.max_delay),
        };
        self.consecutive += 1;
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::default()
    }

    /// Exits a child after `uptime` at time `t` (ms since the start of the test).
    fn exit(tracker: &mut RestartTracker, t0: Instant, t_ms: u64, uptime_ms: u64) -> Decision {
        let now = t0 + Duration::from_millis(t_ms);
        tracker.on_exit(&policy(), now - Duration::from_millis(uptime_ms), now)
    }

    #[test]
    fn backoff_starts_at_zero_and_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut policy = policy();
        policy.max_restarts = 100;
        let mut tracker = RestartTracker::default();
        let delays: Vec<_> = (0..9u64)
            .map(|i| {
                let now = t0 + Duration::from_secs(i);
                tracker.on_exit(&policy, now, now)
            })
            .collect();
        let ms = |ms| Decision::RestartAfter(Duration::from_millis(ms));
        assert_eq!(
            delays,
            [
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        assert_eq!(
            exit(&mut tracker, t0, 100, 100),
            Decision::RestartAfter(Duration::ZERO)
        );
        assert_eq!(
            exit(&mut tracker, t0, 200, 50),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        // Up for longer than the stable period: immediate again.
        assert_eq!(
            exit(&mut tracker, t0, 20_000, 15_000),
            Decision::RestartAfter(Duration::ZERO)
        );
    }

    #[test]
    fn too_many_exits_in_the_window_give_up() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        for i in 0..4 {
            assert!(matches!(
                exit(&mut tracker, t0, i * 100, 10),
                Decision::RestartAfter(_)
            ));
        }
        assert_eq!(exit(&mut tracker, t0, 500, 10), Decision::GiveUp);
    }

    #[test]
    fn exits_spread_beyond_the_window_never_give_up() {
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        for i in 0..20 {
            let decision = exit(&mut tracker, t0, i * 8_000, 7_000);
            assert!(matches!(decision, Decision::RestartAfter(_)), "exit {i}");
        }
    }
}
