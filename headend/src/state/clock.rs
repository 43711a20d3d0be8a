//! The clock check: the headend refuses to put on the air a time more
//! than `max_clock_jump_secs` ahead of the last time it persisted.
//!
//! Every ECM and EMM carries the headend's time, and a card keeps the
//! newest authenticated time it has seen for good (`docs/PROTOCOL.md`
//! 5.1): one forward jump of the headend's clock would make every
//! entitlement look ended until re-issued. So each run persists the time
//! it puts on the air (in `runs.clock_ms`, at its first step and then at
//! least once a minute), and a step whose clock is further ahead of the
//! newest persisted time than the bound makes nothing: no ECM, no EMM, no
//! renewal, and API writes are refused (fail closed: the channels are
//! withheld once their current crypto period ends). It is logged once at
//! ERROR, shown in `headend status` and in the `iodoform_clock_jump_refused`
//! gauge, and lasts until an operator accepts the jump (`headend clock
//! accept`, or `headend run --accept-clock-jump` for a jump found at the
//! start). A clock that goes back is no jump: epochs never go back anyway.
//!
//! The bound is measured from the time persisted, which is up to a minute
//! old while the daemon runs, and as old as the stop at a start: a daemon
//! stopped for longer than the bound needs the operator at its next start.

use super::fields::{rfc3339, secs};
use super::{Clash, Headend, Result, StateError};
use crate::store;

/// The persisted clock is brought up to date this often.
pub const CLOCK_PERSIST_MS: u64 = 60_000;
/// The default `max_clock_jump_secs`: one hour.
pub const DEFAULT_MAX_CLOCK_JUMP_MS: u64 = 3_600_000;

/// The clock check's state.
#[derive(Debug, Clone)]
pub(super) struct ClockCheck {
    /// The newest time persisted, by this run or an earlier one.
    pub(super) persisted_ms: Option<u64>,
    pub(super) max_jump_ms: u64,
    /// Accept a jump found at the first step (`--accept-clock-jump`).
    pub(super) accept_at_start: bool,
    pub(super) started: bool,
    /// The time refused at the last step, while refused.
    pub(super) refused_ms: Option<u64>,
}

impl ClockCheck {
    pub(super) fn new(persisted_ms: Option<u64>) -> ClockCheck {
        ClockCheck {
            persisted_ms,
            max_jump_ms: DEFAULT_MAX_CLOCK_JUMP_MS,
            accept_at_start: false,
            started: false,
            refused_ms: None,
        }
    }

    /// Whether `now_ms` is further ahead of the persisted time than the
    /// bound.
    fn jumps(&self, now_ms: u64) -> bool {
        self.persisted_ms
            .is_some_and(|p| now_ms > p.saturating_add(self.max_jump_ms))
    }
}

impl Headend {
    /// Sets the bound (`max_clock_jump_secs`) and whether a jump found at
    /// the first step is accepted (`headend run --accept-clock-jump`).
    pub fn set_clock_policy(&mut self, max_jump_ms: u64, accept_jump_at_start: bool) {
        self.clock.max_jump_ms = max_jump_ms;
        self.clock.accept_at_start = accept_jump_at_start && !self.clock.started;
    }

    /// The clock check at `now_ms`: false if the time is refused. A time
    /// that passes is persisted if the persisted one is a minute old.
    pub(super) fn clock_step(&mut self, now_ms: u64) -> Result<bool> {
        let first = !self.clock.started;
        self.clock.started = true;
        if self.clock.jumps(now_ms) {
            if first && self.clock.accept_at_start {
                self.clock.accept_at_start = false;
                self.accept_jump(now_ms, "--accept-clock-jump")?;
                return Ok(true);
            }
            if self.clock.refused_ms.is_none() {
                tracing::error!("{}", self.clock_error(now_ms));
            }
            self.clock.refused_ms = Some(now_ms);
            return Ok(false);
        }
        self.clock.accept_at_start = false;
        if let Some(refused) = self.clock.refused_ms.take() {
            tracing::warn!(
                refused = %rfc3339(secs(refused)),
                now = %rfc3339(secs(now_ms)),
                "the clock is back within max_clock_jump_secs of the last time put on the air; the headend seals again"
            );
        }
        if self
            .clock
            .persisted_ms
            .is_none_or(|p| now_ms >= p.saturating_add(CLOCK_PERSIST_MS))
        {
            store::runs::set_clock(&self.conn, self.run, now_ms)?;
            self.clock.persisted_ms = Some(now_ms);
        }
        Ok(true)
    }

    /// The clock check for an API write: refused with the reason and the
    /// fix while the clock is.
    pub fn check_clock(&mut self, now_ms: u64) -> Result<()> {
        if self.clock_step(now_ms)? {
            Ok(())
        } else {
            Err(self.clock_error(now_ms))
        }
    }

    fn clock_error(&self, now_ms: u64) -> StateError {
        let persisted = self.clock.persisted_ms.unwrap_or(0);
        StateError::ClockJump {
            now: rfc3339(secs(now_ms)),
            persisted: rfc3339(secs(persisted)),
            ahead_secs: now_ms.saturating_sub(persisted) / 1000,
            max_secs: self.clock.max_jump_ms / 1000,
        }
    }

    /// Whether the clock is refused now (as of the last step).
    pub fn clock_refused(&self) -> bool {
        self.clock.refused_ms.is_some()
    }

    /// `headend clock accept`: the operator has checked the clock and
    /// accepts its jump; the time is persisted and the headend seals again.
    pub fn accept_clock(&mut self, now_ms: u64) -> Result<api::ClockAccepted> {
        if !self.clock.jumps(now_ms) {
            self.clock.refused_ms = None;
            return Err(Clash::NoClockJump.into());
        }
        self.accept_jump(now_ms, "operator request")
    }

    fn accept_jump(&mut self, now_ms: u64, why: &str) -> Result<api::ClockAccepted> {
        let from = self.clock.persisted_ms.unwrap_or(0);
        store::runs::set_clock(&self.conn, self.run, now_ms)?;
        self.clock.persisted_ms = Some(now_ms);
        self.clock.refused_ms = None;
        let a = api::ClockAccepted {
            from: rfc3339(secs(from)),
            to: rfc3339(secs(now_ms)),
            jump_secs: now_ms.saturating_sub(from) / 1000,
        };
        tracing::warn!(
            from = %a.from,
            to = %a.to,
            jump_secs = a.jump_secs,
            "clock jump accepted ({why}): the headend seals with the new time"
        );
        Ok(a)
    }

    /// The clock check as `headend status` shows it.
    pub fn clock_status(&self) -> api::ClockStatus {
        let c = &self.clock;
        let refused = c.refused_ms;
        api::ClockStatus {
            persisted: c.persisted_ms.map(|p| rfc3339(secs(p))),
            persisted_unix_ms: c.persisted_ms,
            max_jump_secs: c.max_jump_ms / 1000,
            refused: refused.is_some(),
            ahead_secs: refused.map(|r| r.saturating_sub(c.persisted_ms.unwrap_or(0)) / 1000),
            fix: refused.map(|_| {
                "check the system clock (NTP); if it is right, run `headend clock accept`".into()
            }),
        }
    }

    /// Seconds the clock is ahead of the persisted time while refused, 0
    /// otherwise (the `iodoform_clock_jump_refused` gauge is 1 while
    /// refused).
    pub(super) fn clock_ahead_seconds(&self) -> f64 {
        match (self.clock.refused_ms, self.clock.persisted_ms) {
            (Some(r), Some(p)) => r.saturating_sub(p) as f64 / 1000.0,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::restore::tests::{fresh, open};
    use super::*;

    const T0: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn ecm_epoch(h: &Headend) -> Option<u64> {
        h.output().current_ecm(7).map(|e| e.epoch)
    }

    #[test]
    fn a_clock_jump_makes_nothing_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (db, key) = fresh(dir.path());
        let mut h = open(&db, &key, T0);
        // The first step persists the clock; then at most once a minute.
        h.tick(T0).unwrap();
        assert_eq!(h.clock_status().persisted_unix_ms, Some(T0));
        h.tick(T0 + 30_000).unwrap();
        assert_eq!(h.clock_status().persisted_unix_ms, Some(T0));
        h.tick(T0 + 60_000).unwrap();
        assert_eq!(h.clock_status().persisted_unix_ms, Some(T0 + 60_000));
        // Within the bound: fine, and nothing to accept.
        let near = T0 + 60_000 + HOUR;
        assert!(matches!(
            h.accept_clock(near),
            Err(StateError::Clash(Clash::NoClockJump))
        ));
        assert!(!h.clock_refused());

        // Two hours ahead: no ECM, writes refused, said in the status and
        // the gauges.
        let jumped = T0 + 2 * HOUR;
        let before = ecm_epoch(&h);
        h.tick(jumped).unwrap();
        assert_eq!(ecm_epoch(&h), before, "no ECM with the jumped time");
        assert!(h.clock_refused());
        let s = h.status(jumped).clock;
        assert!(s.refused);
        assert_eq!(s.ahead_secs, Some((2 * HOUR - 60_000) / 1000));
        assert!(s.fix.unwrap().contains("headend clock accept"));
        let g = h.gauges(jumped);
        assert!(g.clock_jump_refused);
        assert_eq!(g.clock_ahead_seconds, (2 * HOUR - 60_000) as f64 / 1000.0);
        let e = h.check_clock(jumped).unwrap_err();
        assert!(matches!(e, StateError::ClockJump { .. }));
        assert!(e.to_string().contains("headend clock accept"), "{e}");
        assert_eq!(
            h.clock_status().persisted_unix_ms,
            Some(T0 + 60_000),
            "a refused time is not persisted"
        );

        // Accepted: sealed with it, and persisted.
        let a = h.accept_clock(jumped + 10).unwrap();
        assert_eq!(a.jump_secs, (2 * HOUR - 60_000 + 10) / 1000);
        h.tick(jumped + 20).unwrap();
        assert_eq!(ecm_epoch(&h), Some((jumped + 20) / 1000));
        assert!(!h.gauges(jumped + 20).clock_jump_refused);
        // A clock gone back is no jump.
        h.tick(jumped - HOUR).unwrap();
        assert!(!h.clock_refused());
        drop(h);

        // The next start measures from what the last run persisted: three
        // hours later it is refused, unless accepted at the start.
        let later = jumped + 3 * HOUR;
        let mut h = open(&db, &key, later);
        h.tick(later).unwrap();
        assert!(h.clock_refused());
        drop(h);
        let mut h = open(&db, &key, later);
        h.set_clock_policy(DEFAULT_MAX_CLOCK_JUMP_MS, true);
        h.tick(later).unwrap();
        assert!(!h.clock_refused());
        assert_eq!(h.clock_status().persisted_unix_ms, Some(later));
        // Only at the start: a later jump is refused again.
        h.tick(later + 2 * HOUR).unwrap();
        assert!(h.clock_refused());
    }
}
