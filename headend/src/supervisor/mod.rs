//! The channel supervisor: the owner of the stream threads inside
//! `headend run`.
//!
//! It keeps one stream thread per channel that has an input and an
//! output, and reconciles them with the channel table after every channel
//! add, update or remove ([`Supervisor::kick_and_wait`]) and every second.
//! Channels with the same input and the same output (written alike) are
//! one multiplex: one stream thread, run by the channel of the lowest
//! service id, scrambles all their services, each with its own product and
//! ECM PID; a change to any of them, or to who is in the multiplex, starts
//! that stream again.
//!
//! * a removed channel's stream is stopped at once; a channel whose stream
//!   settings changed (input, output, PIDs, clear services, name) is
//!   stopped and started again on the new ones, the old thread joined
//!   first so that the new one can bind the same ports;
//! * before a stream starts, the channel passes the shared channel checks
//!   again ([`crate::config::check_channel`]: an input file may have gone
//!   since it was stored) and its UDP input port is tried;
//! * a channel that fails (a check, or its stream thread stopping with an
//!   error) is turned off and reported, with the error, in
//!   [`Supervisor::statuses`] and `/metrics`. The error is logged once;
//!   the channel is tried again after 5 s, then after twice as long each
//!   time up to a minute, and at once when it is changed. The other
//!   channels run on: a channel stored in the database never stops the
//!   daemon.
//!
//! It never sends anything itself and never holds the state's lock while
//! it waits for a stream thread. What it reports (each channel's state,
//! and the per-channel metrics) is in `report`.

use crate::config::{check_channel, parse_input, ChannelSpec, InputUrl};
use crate::output::CaOutput;
use crate::state::Headend;
use crate::stream::{spawn_daemon_channel, ChannelHandle, Shutdown};
use api::{Channel, ChannelOrigin};
use headend_engine::stream::ChannelHealth;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod report;
pub use report::{ChannelState, ChannelStatus};

/// How often the channel table is looked at without a kick, and finished
/// or failed streams dealt with.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The wait before a failed channel is tried again the first time.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two tries.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// What a channel's stream is doing.
#[derive(Debug)]
enum Run {
    /// No input or no output.
    Off,
    /// To be started at the next reconcile.
    Pending,
    Running(ChannelHandle),
    /// In the multiplex whose stream the channel of this service id runs.
    Member(u16),
    Failed {
        error: String,
        retry_at: Instant,
    },
    Ended,
}

#[derive(Debug)]
struct Slot {
    channel: Channel,
    /// The other channels of its multiplex, when it runs the stream.
    members: Vec<Channel>,
    run: Run,
    /// The health as the last stream stopped: its counters stay visible.
    last_health: Option<ChannelHealth>,
    /// The last error logged, so that a retry failing the same way is
    /// not logged again.
    logged: Option<String>,
    /// Failures in a row: the wait before the next try grows with them.
    /// A stream that ran for [`MAX_RETRY`] starts the count again.
    attempts: u32,
    started: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    slots: BTreeMap<u16, Slot>,
    /// Reconciles asked for, and the last one done.
    requested: u64,
    done: u64,
    stop: bool,
}

/// Owns the channel streams of a daemon. Shared (`Arc`) between the
/// supervisor thread, the API and the metrics.
#[derive(Debug)]
pub struct Supervisor {
    output: CaOutput,
    base: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
}

/// Whether two versions of a channel need their stream started again.
fn stream_differs(a: &Channel, b: &Channel) -> bool {
    a.name != b.name
        || a.ecm_pid != b.ecm_pid
        || a.emm_pid != b.emm_pid
        || a.input != b.input
        || a.output != b.output
        || a.clear_services != b.clear_services
}

fn has_stream(c: &Channel) -> bool {
    c.input.is_some() && c.output.is_some()
}

/// The multiplex of each channel with a stream: service id → the service
/// id of the channel that runs it (the lowest of those with the same
/// input and output), and the other channels of each multiplex by the
/// one that runs it.
fn multiplexes(want: &BTreeMap<u16, Channel>) -> (BTreeMap<u16, u16>, BTreeMap<u16, Vec<Channel>>) {
    let mut by_url: BTreeMap<(&str, &str), Vec<&Channel>> = BTreeMap::new();
    for c in want.values() {
        if let (Some(i), Some(o)) = (c.input.as_deref(), c.output.as_deref()) {
            by_url.entry((i, o)).or_default().push(c);
        }
    }
    let (mut leader_of, mut members) = (BTreeMap::new(), BTreeMap::new());
    for group in by_url.values() {
        // `want` is in service id order.
        let leader = group[0].service_id;
        for c in group {
            leader_of.insert(c.service_id, leader);
        }
        members.insert(leader, group[1..].iter().map(|c| (*c).clone()).collect());
    }
    (leader_of, members)
}

/// The run of a channel that is (re)started: in another's multiplex, to
/// start, or off.
fn first_run(c: &Channel, leader: Option<u16>) -> Run {
    match leader {
        Some(l) if l != c.service_id => Run::Member(l),
        _ if has_stream(c) => Run::Pending,
        _ => Run::Off,
    }
}

/// Whether two member lists need the stream started again.
fn members_differ(a: &[Channel], b: &[Channel]) -> bool {
    a.len() != b.len()
        || a.iter()
            .zip(b)
            .any(|(x, y)| x.service_id != y.service_id || stream_differs(x, y))
}

fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(MAX_RETRY)
}

fn unix_ms() -> u64 {
    crate::daemon::now_ms()
}

impl Supervisor {
    /// A supervisor whose streams carry the ECMs and EMMs of `output`;
    /// relative file paths are taken from `base` (the config's folder).
    pub fn new(output: CaOutput, base: &Path) -> Supervisor {
        Supervisor {
            output,
            base: base.to_path_buf(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the supervisor thread, which reconciles at once, then on
    /// every kick and every second, until [`Supervisor::shutdown`].
    pub fn spawn(self: &Arc<Self>, core: Arc<Mutex<Headend>>) -> std::io::Result<JoinHandle<()>> {
        let sup = self.clone();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || sup.run(&core))
    }

    fn run(&self, core: &Mutex<Headend>) {
        let mut first = true;
        loop {
            let target = {
                let mut st = self.lock();
                if !first && st.requested == st.done && !st.stop {
                    st = self
                        .changed
                        .wait_timeout(st, RECONCILE_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if st.stop {
                    break;
                }
                st.requested
            };
            first = false;
            // A bug in one reconcile must not leave the streams without
            // an owner: it is logged, and the next one starts afresh.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reconcile(core)))
                .is_err()
            {
                tracing::error!("channel supervisor: a reconcile panicked; trying again");
            }
            let mut st = self.lock();
            st.done = st.done.max(target);
            self.changed.notify_all();
        }
        self.stop_all();
        let mut st = self.lock();
        st.done = st.requested;
        self.changed.notify_all();
    }

    /// Asks for a reconcile now and waits (at most `timeout`) until it is
    /// done: when a channel change is answered, its stream has been
    /// started, stopped or restarted.
    pub fn kick_and_wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        st.requested += 1;
        let target = st.requested;
        self.changed.notify_all();
        while st.done < target && !st.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Has a failed or ended channel tried again at the next reconcile
    /// (a channel change does, even one that leaves its stream settings as
    /// they were: the operator may have fixed what it needed, a file say).
    pub fn retry(&self, service_id: u16) {
        let mut st = self.lock();
        let service_id = match st.slots.get(&service_id).map(|s| &s.run) {
            Some(Run::Member(l)) => *l,
            _ => service_id,
        };
        if let Some(slot) = st.slots.get_mut(&service_id) {
            if matches!(slot.run, Run::Failed { .. } | Run::Ended) {
                slot.run = Run::Pending;
                slot.attempts = 0;
            }
        }
    }

    /// Stops the supervisor thread, which stops every stream.
    pub fn shutdown(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    /// Stops every stream and waits for their threads.
    fn stop_all(&self) {
        let handles: Vec<ChannelHandle> = {
            let mut st = self.lock();
            let slots = std::mem::take(&mut st.slots);
            slots
                .into_values()
                .filter_map(|s| match s.run {
                    Run::Running(h) => Some(h),
                    _ => None,
                })
                .collect()
        };
        for h in &handles {
            h.stop();
        }
        for h in handles {
            // Each stream thread logs how it ended.
            let _ = h.join();
        }
    }

    /// Brings the streams in line with the channel table.
    pub fn reconcile(&self, core: &Mutex<Headend>) {
        let channels = core.lock().unwrap_or_else(|e| e.into_inner()).channels();
        let want: BTreeMap<u16, Channel> =
            channels.into_iter().map(|c| (c.service_id, c)).collect();
        let (leader_of, mut members) = multiplexes(&want);
        // Stop what was removed or changed, outside the lock: a stream
        // takes up to about 100 ms to notice.
        let mut stopping = Vec::new();
        {
            let mut st = self.lock();
            st.slots.retain(|service, slot| {
                if want.contains_key(service) {
                    return true;
                }
                if let Run::Running(h) = std::mem::replace(&mut slot.run, Run::Off) {
                    h.stop();
                    stopping.push(h);
                }
                tracing::info!(service, channel = %slot.channel.name, "channel removed: its stream is stopped");
                false
            });
            for (service, c) in &want {
                let leader = leader_of.get(service).copied();
                let group = members.remove(service).unwrap_or_default();
                match st.slots.get_mut(service) {
                    None => {
                        st.slots.insert(
                            *service,
                            Slot {
                                channel: c.clone(),
                                members: group,
                                run: first_run(c, leader),
                                last_health: None,
                                logged: None,
                                attempts: 0,
                                started: None,
                            },
                        );
                    }
                    Some(slot)
                        if stream_differs(&slot.channel, c)
                            || members_differ(&slot.members, &group)
                            || matches!(slot.run, Run::Member(l) if Some(l) != leader)
                            || (!matches!(slot.run, Run::Member(_))
                                && leader.is_some_and(|l| l != *service)) =>
                    {
                        if let Run::Running(h) = std::mem::replace(&mut slot.run, Run::Off) {
                            h.stop();
                            stopping.push(h);
                            tracing::info!(
                                service,
                                channel = %c.name,
                                "channel changed: its stream starts again on the new settings"
                            );
                        }
                        slot.channel = c.clone();
                        slot.members = group;
                        slot.run = first_run(c, leader);
                        slot.last_health = None;
                        slot.logged = None;
                        slot.attempts = 0;
                    }
                    // A new product or maturity: the ECMs follow; the
                    // stream goes on.
                    Some(slot) => slot.channel = c.clone(),
                }
            }
            self.reap(&mut st);
        }
        for h in stopping {
            let _ = h.join();
        }
        // Start what should run.
        let now = Instant::now();
        let due = {
            let st = self.lock();
            st.slots.values().any(|s| match &s.run {
                Run::Pending => true,
                Run::Failed { retry_at, .. } => *retry_at <= now,
                _ => false,
            })
        };
        if !due {
            return;
        }
        // Every channel's current ECM, before its stream asks for it: a
        // file input is read at once, and what is read before the CA side
        // is ready is dropped (never sent clear).
        if let Err(e) = core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .publish_ecms(unix_ms())
        {
            tracing::warn!(error = %e, "ECMs not made before the streams start; the scheduler retries");
        }
        let mut st = self.lock();
        // headend.toml's channels first: they win a clash with one stored
        // in the database.
        let mut order: Vec<u16> = st.slots.keys().copied().collect();
        order.sort_by_key(|s| (st.slots[s].channel.origin, *s));
        for service in order {
            let slot = &st.slots[&service];
            let go = match &slot.run {
                Run::Pending => true,
                Run::Failed { retry_at, .. } => *retry_at <= now,
                _ => false,
            };
            if !go {
                continue;
            }
            // The channels this one must coexist with: those running, and
            // those of headend.toml.
            let others: Vec<ChannelSpec<'_>> = st
                .slots
                .values()
                .filter(|o| o.channel.service_id != service)
                .filter(|o| {
                    matches!(o.run, Run::Running(_)) || o.channel.origin == ChannelOrigin::Config
                })
                .map(|o| ChannelSpec::of(&o.channel))
                .collect();
            let started = self.start(&slot.channel, &slot.members, &others);
            let slot = st.slots.get_mut(&service).expect("in the order");
            match started {
                Ok(Some(h)) => {
                    if slot.logged.take().is_some() {
                        tracing::info!(service, channel = %slot.channel.name, "channel started again");
                    }
                    slot.run = Run::Running(h);
                    slot.started = Some(Instant::now());
                }
                Ok(None) => slot.run = Run::Off,
                Err(e) => self.failed(slot, e),
            }
        }
    }

    /// Checks a channel (and the others of its multiplex) again and
    /// starts its stream.
    fn start(
        &self,
        c: &Channel,
        members: &[Channel],
        others: &[ChannelSpec<'_>],
    ) -> Result<Option<ChannelHandle>, String> {
        check_channel(&ChannelSpec::of(c), others, &self.base).map_err(|p| p.to_string())?;
        for m in members {
            let others: Vec<ChannelSpec<'_>> = others
                .iter()
                .copied()
                .filter(|o| o.service_id != m.service_id)
                .chain([ChannelSpec::of(c)])
                .collect();
            check_channel(&ChannelSpec::of(m), &others, &self.base).map_err(|p| {
                format!(
                    "channel {:?} (service {}) of its multiplex: {p}",
                    m.name, m.service_id
                )
            })?;
        }
        if let Some(InputUrl::Udp(a)) = c
            .input
            .as_deref()
            .map(parse_input)
            .transpose()
            .ok()
            .flatten()
        {
            // The stream thread would fail the same way, later and with
            // less to say.
            let bind: std::net::SocketAddr = if a.ip().is_multicast() {
                (std::net::Ipv4Addr::UNSPECIFIED, a.port()).into()
            } else {
                a
            };
            std::net::UdpSocket::bind(bind).map_err(|e| {
                format!(
                    "input: cannot listen on udp://{a} ({e}): stop what holds the port, or give the channel another input"
                )
            })?;
        }
        spawn_daemon_channel(c, members, &self.base, &self.output, &Shutdown::new())
            .map_err(|e| format!("the stream could not start: {e}"))
    }

    /// Turns a channel off for `error`, logs it unless it is the error
    /// logged last, and sets when it is tried again.
    fn failed(&self, slot: &mut Slot, error: String) {
        let c = &slot.channel;
        let error = format!("channel {:?} ({}): {error}", c.name, c.origin.describe());
        if slot
            .started
            .take()
            .is_some_and(|t| t.elapsed() >= MAX_RETRY)
        {
            slot.attempts = 0;
        }
        slot.attempts += 1;
        let attempts = slot.attempts;
        let wait = backoff(attempts);
        if slot.logged.as_deref() != Some(error.as_str()) {
            tracing::error!(
                service = c.service_id,
                channel = %c.name,
                origin = c.origin.describe(),
                retry_in_s = wait.as_secs(),
                "channel off the air: {error}"
            );
            slot.logged = Some(error.clone());
        } else {
            tracing::debug!(service = c.service_id, channel = %c.name, attempts, "channel failed again");
        }
        slot.run = Run::Failed {
            error,
            retry_at: Instant::now() + wait,
        };
    }

    /// Deals with stream threads that have stopped on their own.
    fn reap(&self, st: &mut State) {
        for slot in st.slots.values_mut() {
            let finished = matches!(&slot.run, Run::Running(h) if h.is_finished());
            if !finished {
                continue;
            }
            let Run::Running(h) = std::mem::replace(&mut slot.run, Run::Off) else {
                continue;
            };
            slot.last_health = Some(h.health());
            let error = match h.join() {
                Ok(_) => {
                    tracing::info!(
                        service = slot.channel.service_id,
                        channel = %slot.channel.name,
                        "channel off the air: its input file ended (add ?loop to play it again and again)"
                    );
                    slot.run = Run::Ended;
                    continue;
                }
                Err(e) => e,
            };
            self.failed(slot, format!("the stream stopped: {error}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_minute() {
        let v: Vec<u64> = (1..=7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(v, [5, 10, 20, 40, 60, 60, 60]);
    }
}
