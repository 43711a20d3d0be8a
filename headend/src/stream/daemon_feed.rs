//! The stream engine inside `headend run`: [`CaOutputFeed`], the
//! [`CaFeed`] on the daemon's [`CaOutput`], the channel config turned into
//! a [`ChannelStreamConfig`], and [`spawn_daemon_channel`], which starts
//! the stream thread of a channel that has an `input` and an `output` (the
//! [`Supervisor`](crate::supervisor::Supervisor) decides when).
//!
//! The daemon's scheduler decides the crypto periods on its own wall
//! clock and publishes each service's current ECM with the CW pair it
//! carries; the engine scrambles with whatever is published, so the CW in
//! use is always the one in the ECM on the air. The EMM carousel is read
//! through a cursor at the channel's EMM bandwidth: every channel carries
//! every EMM.

use super::{spawn_channel, ChannelHandle, ChannelStreamConfig, Shutdown, StreamError};
use crate::output::{CaOutput, EmmMark};
use api::Channel;
use headend_engine::stream::{CaFeed, CryptoPeriod, FeedError};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use tsio::Address;

/// Sections fetched from the log at a time.
const EMM_BATCH: usize = 256;

/// A [`CaFeed`] reading the daemon's [`CaOutput`].
#[derive(Debug)]
pub struct CaOutputFeed {
    output: CaOutput,
    cursor: u64,
    /// Fetched, not yet handed out (the next did not fit the budget).
    pending: VecDeque<Arc<[u8]>>,
    dropped: u64,
    /// How far this channel has sent the EMM log, for the backlog metric.
    mark: EmmMark,
}

impl CaOutputFeed {
    /// Starts with the EMMs published from now on: the carousel repeats,
    /// so a channel that starts late misses nothing for long.
    pub fn new(output: CaOutput) -> Self {
        let cursor = output.emm_cursor();
        let mark = output.emm_mark(cursor);
        CaOutputFeed {
            output,
            cursor,
            pending: VecDeque::new(),
            dropped: 0,
            mark,
        }
    }

    /// EMM sections that the log dropped before this channel could send
    /// them: the daemon's carousel is faster than the channel's EMM
    /// bandwidth.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl CaFeed for CaOutputFeed {
    fn period(&mut self, service: u16, _now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        let e = self
            .output
            .current_ecm(service)
            .ok_or(FeedError::NotReady(service))?;
        Ok(CryptoPeriod {
            epoch: e.epoch,
            cws: e.cws,
            ecm_section: e.section,
            next_ms: e.epoch_start_ms.checked_add(e.period_ms),
        })
    }

    fn emm_sections(&mut self, _now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>> {
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            if self.pending.is_empty() {
                let (got, next, dropped) = self.output.emm_sections_since(self.cursor, EMM_BATCH);
                self.cursor = next;
                if dropped > 0 {
                    self.dropped += dropped;
                    tracing::warn!(
                        dropped,
                        "EMM carousel faster than the channel's EMM bandwidth"
                    );
                }
                if got.is_empty() {
                    break;
                }
                self.pending.extend(got.into_iter().map(|e| e.section));
            }
            match self.pending.front() {
                Some(s) if used + s.len() <= max_bytes => {
                    used += s.len();
                    out.extend(self.pending.pop_front());
                }
                _ => break,
            }
        }
        self.mark.set(
            self.cursor - self.pending.len() as u64,
            crate::daemon::now_ms(),
        );
        out
    }
}

/// The stream of a channel as the daemon holds it (from the config or
/// added through the API), `None` if it has no `input` or no `output`.
/// `members` are the other channels of its multiplex (same input and
/// output): their services are scrambled in the same stream, each on its
/// own ECM PID, and their clear services are sent clear too.
/// Relative file paths are taken from `base` (the config file's
/// folder). A file input ending in `?loop` is played again and again.
pub fn daemon_stream_config(
    ch: &Channel,
    members: &[Channel],
    base: &Path,
) -> Result<Option<ChannelStreamConfig>, StreamError> {
    let c = from_fields(
        &ch.name,
        ch.service_id,
        ch.ecm_pid,
        ch.emm_pid,
        ch.input.as_deref(),
        ch.output.as_deref(),
        base,
    )?;
    Ok(match c {
        Some(mut c) => {
            c.clear_services = ch.clear_services.clone();
            for m in members {
                c = c.service(m.service_id, m.ecm_pid);
                for &s in &m.clear_services {
                    if !c.clear_services.contains(&s) {
                        c.clear_services.push(s);
                    }
                }
            }
            super::validate(&c)?;
            Some(c)
        }
        None => None,
    })
}

fn from_fields(
    name: &str,
    service_id: u16,
    ecm_pid: u16,
    emm_pid: u16,
    input: Option<&str>,
    output: Option<&str>,
    base: &Path,
) -> Result<Option<ChannelStreamConfig>, StreamError> {
    let (Some(input), Some(output)) = (input, output) else {
        return Ok(None);
    };
    // The engine takes the file's path and whether it loops apart.
    let (input, looped) = match super::io::parse_input(input)? {
        Address::File { path, looped } => (file_text(base, path), looped),
        _ => (input.to_owned(), false),
    };
    let output = match super::io::parse_output(output)? {
        Address::File { path, .. } => file_text(base, path),
        _ => output.to_owned(),
    };
    let mut c = ChannelStreamConfig::new(name, input, output, emm_pid).service(service_id, ecm_pid);
    c.loop_input = looped;
    super::validate(&c)?;
    Ok(Some(c))
}

/// A file address as the engine reads it: relative paths taken from
/// `base`, and `file://` kept for a path that would read as another
/// address.
fn file_text(base: &Path, path: std::path::PathBuf) -> String {
    let path = if path.is_relative() {
        base.join(path)
    } else {
        path
    };
    Address::File {
        path,
        looped: false,
    }
    .to_string()
}

/// Starts the stream thread of one channel, fed by `output` and stopped by
/// `shutdown`; `None` if the channel has no `input` or no `output`.
/// Relative file paths are taken from `base`.
pub fn spawn_daemon_channel(
    ch: &Channel,
    members: &[Channel],
    base: &Path,
    output: &CaOutput,
    shutdown: &Shutdown,
) -> Result<Option<ChannelHandle>, StreamError> {
    match daemon_stream_config(ch, members, base)? {
        Some(mut cfg) => {
            cfg.emm_bitrate = output.emm_bitrate();
            spawn_channel(cfg, CaOutputFeed::new(output.clone()), shutdown.clone()).map(Some)
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::EcmOutput;
    use headend_engine::schedule::ControlWordSchedule;
    use headend_engine::stream::Mux;
    use proto::secret::ControlWord;

    fn ecm(epoch: u64) -> EcmOutput {
        let cws = ControlWordSchedule::new(1).unwrap().pair(1, epoch).unwrap();
        let parity = ts::Parity::of_epoch(epoch);
        EcmOutput {
            service: 1,
            ecm_pid: 0x1F0,
            product: 7,
            generation: 1,
            epoch,
            epoch_start_ms: epoch * 1000,
            period_ms: 1000,
            section: ts::psi::ecm_section(parity, &[epoch as u8; 78])
                .unwrap()
                .into(),
            cws,
        }
    }

    #[test]
    fn periods_and_emms_come_from_the_daemon_output() {
        let out = CaOutput::new();
        out.publish_emm(ts::psi::emm_section(ts::psi::TableId(0x82), &[0; 10]).unwrap());
        let mut f = CaOutputFeed::new(out.clone());
        assert!(matches!(f.period(1, 0), Err(FeedError::NotReady(1))));
        out.publish_ecm(ecm(41));
        let p = f.period(1, 0).unwrap();
        assert_eq!(p.epoch, 41);
        p.check().unwrap();
        assert_ne!(p.current(), &ControlWord::from_bytes([0; 16]));
        // Only EMMs published after the feed was made, within the budget.
        assert!(f.emm_sections(0, 1000).is_empty());
        for i in 0..5u8 {
            out.publish_emm(ts::psi::emm_section(ts::psi::TableId(0x82), &[i; 97]).unwrap());
        }
        let a = f.emm_sections(0, 250);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0][3], 0);
        let b = f.emm_sections(0, 10_000);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0][3], 2);
        assert_eq!(f.dropped(), 0);
    }

    #[test]
    fn the_engine_follows_the_published_periods() {
        // A tiny stream: PAT, PMT, then ES packets; the ECM changes midway.
        let out = CaOutput::new();
        out.publish_ecm(ecm(10));
        let cfg = ChannelStreamConfig::new("d", "-", "-", 0x1F1).service(1, 0x1F0);
        let mut mux = Mux::new(&cfg, CaOutputFeed::new(out.clone()), 0).unwrap();
        let mut cc = 0;
        let mut pkts = Vec::new();
        let pat = ts::psi::Pat {
            transport_stream_id: 1,
            version: 0,
            current_next: true,
            programs: vec![ts::psi::PatEntry {
                program_number: 1,
                pid: 0x1000,
            }],
        };
        ts::psi::packetize(&[&pat.to_section().unwrap()], 0, &mut cc, &mut pkts).unwrap();
        let pmt = ts::psi::Pmt {
            program_number: 1,
            version: 0,
            current_next: true,
            pcr_pid: 0x100,
            descriptors: vec![],
            streams: vec![ts::psi::PmtStream {
                stream_type: 0x1B,
                pid: 0x100,
                descriptors: vec![],
            }],
        };
        cc = 0;
        ts::psi::packetize(&[&pmt.to_section().unwrap()], 0x1000, &mut cc, &mut pkts).unwrap();
        for p in &pkts {
            mux.push(p);
        }
        let es = |i: u8| {
            let mut b = ts::packet::PacketBuilder::new(0x100);
            b.continuity_counter = i;
            b.pcr = Some(ts::packet::Pcr::from_27mhz(u64::from(i) * 27_000 * 30));
            b.build(&[i; 184]).unwrap().0
        };
        let mut parities = Vec::new();
        for i in 0..8u8 {
            if i == 4 {
                out.publish_ecm(ecm(11));
            }
            mux.push(&es(i));
            mux.flush();
            let mut o = Vec::new();
            mux.take_output(&mut o);
            parities.extend(
                o.iter()
                    .filter(|p| p.bytes[1] & 0x1F == 1 && p.bytes[2] == 0)
                    .map(|p| p.bytes[3] >> 6),
            );
        }
        // Even epoch 10 (0b10) until the daemon published 11 (odd, 0b11).
        assert_eq!(parities.first(), Some(&0b10));
        assert_eq!(parities.last(), Some(&0b11));
        assert_eq!(mux.stats().cw_changes, 1);
    }

    #[test]
    fn channel_configs_become_stream_configs() {
        let mut ch = Channel {
            name: "one".into(),
            service_id: 5,
            product: 1,
            ecm_pid: 0x101,
            emm_pid: 0x102,
            maturity: 0,
            input: Some("clip.ts?loop".into()),
            output: None,
            clear_services: vec![],
            origin: api::ChannelOrigin::Api,
        };
        let base = Path::new("/etc/iodoform");
        assert!(daemon_stream_config(&ch, &[], base).unwrap().is_none());
        ch.output = Some("udp://127.0.0.1:5002".into());
        let c = daemon_stream_config(&ch, &[], base).unwrap().unwrap();
        assert_eq!(c.input, "/etc/iodoform/clip.ts");
        assert!(c.loop_input);
        assert_eq!(c.services[0].service_id, 5);
        ch.input = Some("udp://127.0.0.1:5000".into());
        let c = daemon_stream_config(&ch, &[], base).unwrap().unwrap();
        assert!(!c.loop_input);
        ch.output = Some("udp://nowhere".into());
        assert!(daemon_stream_config(&ch, &[], base).is_err());
    }
}
