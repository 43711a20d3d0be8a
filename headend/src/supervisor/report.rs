//! What the supervisor reports: each channel's state (on the air,
//! waiting and why, failed and when it is tried again, ended, off) for
//! `headend status`, `/ready` and the per-channel families of `/metrics`.

use super::{unix_ms, Run, Supervisor};
use crate::metrics::{Exposition, Value};
use api::ChannelOrigin;
use headend_engine::stream::{ChannelHealth, Withheld};
use serde::Serialize;
use std::time::Instant;

/// Where a channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    /// Its service is being scrambled and sent.
    OnAir,
    /// Its stream runs but the service is withheld (see the cause): no
    /// input yet, the service not in the input, no control word...
    Waiting,
    /// It could not start, or its stream stopped with an error; it is
    /// tried again later (see the error).
    Failed,
    /// Its input file ended (a file without `?loop` is played once).
    Ended,
    /// It has no input or no output, so no stream.
    Off,
}

impl ChannelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::OnAir => "on_air",
            ChannelState::Waiting => "waiting",
            ChannelState::Failed => "failed",
            ChannelState::Ended => "ended",
            ChannelState::Off => "off",
        }
    }
}

/// One channel as `headend status`, `/ready` and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    pub service_id: u16,
    pub origin: ChannelOrigin,
    pub input: Option<String>,
    pub output: Option<String>,
    pub state: ChannelState,
    /// Why it failed (state `failed`): what went wrong and what to do.
    pub error: Option<String>,
    /// Why its service is withheld (state `waiting`).
    pub cause: Option<Withheld>,
    /// What to do about it: the cause's hint, or for a channel that is
    /// off, how to put it on the air.
    pub fix: Option<String>,
    /// What the cause is about, e.g. "the input has programs 1, 2".
    pub detail: Option<String>,
    pub input_packets: u64,
    pub input_bitrate_bps: u64,
    /// Seconds since the last input packet (since the stream started if
    /// none); `None` without a stream.
    pub input_silence_seconds: Option<f64>,
    /// When a failed channel is tried again.
    pub retry_in_seconds: Option<f64>,
    /// The stream's own report, while it runs (or as it stopped).
    pub health: Option<ChannelHealth>,
}

impl Supervisor {
    /// Every channel's state, in service id order. A channel of a
    /// multiplex shows the state of its own service in the multiplex's
    /// stream, and that stream's input and output figures.
    pub fn statuses(&self) -> Vec<ChannelStatus> {
        let mut st = self.lock();
        self.reap(&mut st);
        let now = Instant::now();
        let now_ms = unix_ms();
        st.slots
            .values()
            .map(|slot| {
                let c = &slot.channel;
                let mut s = ChannelStatus {
                    name: c.name.clone(),
                    service_id: c.service_id,
                    origin: c.origin,
                    input: c.input.clone(),
                    output: c.output.clone(),
                    state: ChannelState::Off,
                    error: None,
                    cause: None,
                    fix: None,
                    detail: None,
                    input_packets: 0,
                    input_bitrate_bps: 0,
                    input_silence_seconds: None,
                    retry_in_seconds: None,
                    health: None,
                };
                // The slot whose stream carries this channel's service.
                let runs = match slot.run {
                    Run::Member(l) => st.slots.get(&l).unwrap_or(slot),
                    _ => slot,
                };
                let health = match &runs.run {
                    Run::Running(h) => Some(h.health()),
                    _ => runs.last_health.clone(),
                }
                .map(|mut h| {
                    h.services.retain(|x| x.service_id == c.service_id);
                    h
                });
                match &runs.run {
                    Run::Off => {
                        let (missing, detail) = match (&c.input, &c.output) {
                            (None, None) => ("an input and an output", "it has no input and no output"),
                            (None, _) => ("an input", "it has no input"),
                            _ => ("an output", "it has no output"),
                        };
                        s.detail = Some(detail.into());
                        s.fix = Some(match c.origin {
                            ChannelOrigin::Api => format!(
                                "give it {missing}: headend channel update {} --input URL --output URL",
                                c.service_id
                            ),
                            ChannelOrigin::Config => {
                                format!("give it {missing} in its [[channels]] table of headend.toml")
                            }
                        });
                    }
                    Run::Pending | Run::Member(_) => {
                        s.state = ChannelState::Waiting;
                        s.detail = Some("starting".into());
                    }
                    Run::Running(_) => {
                        let h = health.as_ref().expect("a running stream has health");
                        if !h.services.is_empty() && h.all_on_air() {
                            s.state = ChannelState::OnAir;
                        } else {
                            s.state = ChannelState::Waiting;
                            if let Some(sv) = h.services.iter().find(|x| !x.on_air) {
                                s.cause = sv.withheld;
                                s.fix = sv.withheld.map(|w| w.fix().to_owned());
                                s.detail = sv.detail.clone();
                            }
                        }
                        s.input_silence_seconds =
                            Some(h.input_silence_ms(now_ms) as f64 / 1000.0);
                    }
                    Run::Failed { error, retry_at } => {
                        s.state = ChannelState::Failed;
                        s.error = Some(error.clone());
                        s.retry_in_seconds =
                            Some(retry_at.saturating_duration_since(now).as_secs_f64());
                    }
                    Run::Ended => {
                        s.state = ChannelState::Ended;
                        s.detail = Some("its input file ended".into());
                        s.fix = Some(
                            "add ?loop to a file input to play it again and again; any change to the channel starts it again"
                                .into(),
                        );
                    }
                }
                if let Some(h) = &health {
                    s.input_packets = h.input_packets;
                    s.input_bitrate_bps = h.input_bitrate_bps;
                }
                s.health = health;
                s
            })
            .collect()
    }

    /// One channel's state.
    pub fn status(&self, service_id: u16) -> Option<ChannelStatus> {
        self.statuses()
            .into_iter()
            .find(|s| s.service_id == service_id)
    }

    /// The channels with an input and an output that are not on the air:
    /// `/ready` answers 503 while there is one.
    pub fn not_on_air(&self) -> Vec<ChannelStatus> {
        self.statuses()
            .into_iter()
            .filter(|s| s.input.is_some() && s.output.is_some() && s.state != ChannelState::OnAir)
            .collect()
    }

    /// Whether every channel with an input and an output is on the air.
    pub fn all_on_air(&self) -> bool {
        self.not_on_air().is_empty()
    }

    /// The per-channel families of `/metrics` (labels `channel` and
    /// `service`): a sample for every channel with an input and an output
    /// (those without are off on purpose), 0 while it has no stream.
    pub fn render_metrics(&self, e: &mut Exposition) {
        let mut statuses = self.statuses();
        statuses.retain(|s| s.input.is_some() && s.output.is_some());
        let now_ms = unix_ms();
        let rows: Vec<(String, String, &ChannelStatus)> = statuses
            .iter()
            .map(|s| (s.name.clone(), s.service_id.to_string(), s))
            .collect();
        fn labels<'a>(r: &'a (String, String, &ChannelStatus)) -> [(&'static str, &'a str); 2] {
            [("channel", r.0.as_str()), ("service", r.1.as_str())]
        }
        let per_channel = |e: &mut Exposition, families: &[PerChannel]| {
            for &(counter, name, help, value) in families {
                let mut f = if counter {
                    e.counter(name, help)
                } else {
                    e.gauge(name, help)
                };
                for r in &rows {
                    f.sample(&labels(r), value(r.2, now_ms));
                }
            }
        };
        per_channel(e, &BEFORE_WITHHELD);
        {
            let mut f = e.counter(
                "iodoform_channel_withheld_packets_total",
                "Packets of the channel's service dropped instead of sent, by cause (see `headend status` for the fix).",
            );
            for r in &rows {
                let hh = health(r.2);
                for cause in Withheld::ALL {
                    let v: u64 = hh
                        .services
                        .iter()
                        .map(|s| s.withheld_packets.get(&cause).copied().unwrap_or(0))
                        .sum();
                    f.sample(
                        &[
                            ("channel", r.0.as_str()),
                            ("service", r.1.as_str()),
                            ("cause", cause.as_str()),
                        ],
                        v,
                    );
                }
            }
        }
        per_channel(e, &AFTER_WITHHELD);
    }
}

/// A `/metrics` family with a sample a channel: counter (`true`) or
/// gauge, name, help, and what it reads off the channel's status at a
/// time (Unix ms).
type PerChannel = (
    bool,
    &'static str,
    &'static str,
    fn(&ChannelStatus, u64) -> Value,
);

/// The channel's stream's counters; all 0 without a stream.
fn health(s: &ChannelStatus) -> ChannelHealth {
    s.health.clone().unwrap_or_default()
}

/// The per-channel families before `iodoform_channel_withheld_packets_total`.
const BEFORE_WITHHELD: [PerChannel; 6] = [
    (
        true,
        "iodoform_channel_input_packets_total",
        "TS packets read from the channel's input (since its stream last started).",
        |s, _| health(s).input_packets.into(),
    ),
    (
        false,
        "iodoform_channel_input_bitrate_bits_per_second",
        "The channel's input bitrate over the last second or two.",
        |s, _| health(s).input_bitrate_bps.into(),
    ),
    (
        true,
        "iodoform_channel_input_continuity_errors_total",
        "Continuity counters that jumped in the channel's input (TR 101 290 1.4): packets lost before the headend read them (encoder, network, or a full input socket buffer).",
        |s, _| health(s).input_cc_errors.into(),
    ),
    (
        false,
        "iodoform_channel_input_silence_seconds",
        "Seconds since the channel's last input packet (since its stream started if none yet); 0 without a stream.",
        |s, now_ms| {
            let v = s.health.as_ref().filter(|_| s.input_silence_seconds.is_some());
            v.map_or(0.0, |h| h.input_silence_ms(now_ms) as f64 / 1000.0).into()
        },
    ),
    (
        true,
        "iodoform_channel_scrambled_packets_total",
        "Packets of the channel's service sent scrambled.",
        |s, _| Value::from(health(s).services.iter().map(|x| x.scrambled_packets).sum::<u64>()),
    ),
    (
        true,
        "iodoform_channel_clear_packets_total",
        "Packets found clear on a PID that must be scrambled, and dropped. Always 0 unless the headend has a bug: alert if it grows.",
        |s, _| health(s).clear_packets.into(),
    ),
];

/// The per-channel families after `iodoform_channel_withheld_packets_total`.
const AFTER_WITHHELD: [PerChannel; 3] = [
    (
        true,
        "iodoform_channel_output_errors_total",
        "Datagrams the channel's output could not send.",
        |s, _| health(s).output_errors.into(),
    ),
    (
        false,
        "iodoform_channel_on_air",
        "1 while the channel's service is scrambled and sent.",
        |s, _| (s.state == ChannelState::OnAir).into(),
    ),
    (
        false,
        "iodoform_channel_failed",
        "1 while the channel is turned off after an error (see `headend status`).",
        |s, _| (s.state == ChannelState::Failed).into(),
    ),
];
