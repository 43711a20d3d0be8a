//! One run of the receiver: open the input, the output and the card,
//! push the stream through the [`Pipeline`], and report how it ended.

use crate::card::{CardConnector, CardLink, LinkOptions};
use crate::error::{exit, Failure};
use crate::io::{open_output, Address, Chunk, Input};
use crate::pipeline::{PacketSink, Pipeline, PipelineOptions, INPUT_GAP, OUTAGE_AFTER};
use crate::stats::{Stats, StatusLine};
use proto::crypto::X25519Secret;
use serde_json::json;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ts::PacketReader;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: Address,
    pub output: Address,
    pub pipeline: PipelineOptions,
    pub link: LinkOptions,
    /// Give up when no input arrives for this long; `None` waits for ever
    /// (a live input may pause while the headend restarts).
    pub input_timeout: Option<Duration>,
    /// Draw the live status line (only sensible on a terminal).
    pub status_line: bool,
    /// Set to end the run cleanly (a signal, a benchmark).
    pub stop: Option<Arc<AtomicBool>>,
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    pub stats: Stats,
    pub service: Option<u16>,
    pub card_id: Option<u32>,
    /// `None`: the input ended (or the output was closed) normally.
    pub failure: Option<Failure>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        self.failure.as_ref().map_or(exit::OK, Failure::exit_code)
    }

    /// The report as JSON, for `--stats-json`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "exit_code": self.exit_code(),
            "reason": self.failure.as_ref().map(ToString::to_string),
            "service": self.service,
            "card_id": self.card_id,
            "stats": self.stats,
        })
    }
}

/// How often the loop wakes without input (status line, stop flag).
const TICK: Duration = Duration::from_millis(200);
/// How soon the input loop comes back, while the card has work, to take
/// its answer and give it the next job: a live stream's packets come in
/// bursts, and without this the card would do one command per burst.
const CARD_POLL: Duration = Duration::from_millis(2);

/// Runs the receiver until the input ends, the output closes, `stop` is
/// set, or something fails.
pub fn run(cfg: &RunConfig, connector: Box<dyn CardConnector>, identity: X25519Secret) -> Report {
    let mut report = Report {
        stats: Stats::default(),
        service: None,
        card_id: None,
        failure: None,
    };
    let (input, mut sink, first, card) = match open_all(cfg, connector, identity) {
        Ok(opened) => opened,
        Err(failure) => {
            report.failure = Some(failure);
            return report;
        }
    };
    report.card_id = Some(card.card_id());
    let opts = PipelineOptions {
        live: cfg.input.is_udp(),
        ..cfg.pipeline.clone()
    };
    let mut pipeline = Pipeline::new(card, opts);
    let mut status = StatusLine::new(cfg.status_line);
    let result = pump(
        cfg,
        &input,
        first,
        sink.as_mut(),
        &mut pipeline,
        &mut status,
    );
    status.clear();
    report.stats = pipeline.stats();
    report.stats.datagrams_dropped = input.dropped();
    report.service = pipeline.service();
    report.card_id = Some(pipeline.card_id());
    report.failure = match result {
        Ok(()) => None,
        // A player that quits closes its pipe: that ends the run, it is
        // not a failure.
        Err(Failure::Output { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => None,
        Err(Failure::Output { what, source }) if what.is_empty() => Some(Failure::Output {
            what: cfg.output.to_string(),
            source,
        }),
        Err(e) => Some(e),
    };
    report
}

/// What a run opens: the input, the output, what the input began with
/// (read to check it is TS) and the card.
type Opened = (Input, Box<dyn PacketSink>, VecDeque<Chunk>, CardLink);

/// The run's input, output, the first chunks of the input and the card,
/// in that order, or the first of them that cannot be opened. An input
/// that is not TS is refused before the card is waited for.
fn open_all(
    cfg: &RunConfig,
    connector: Box<dyn CardConnector>,
    identity: X25519Secret,
) -> Result<Opened, Failure> {
    let input = Input::open(&cfg.input).map_err(|e| Failure::Input {
        what: cfg.input.to_string(),
        source: e.source,
    })?;
    let sink = open_output(&cfg.output).map_err(|e| Failure::Output {
        what: cfg.output.to_string(),
        source: e.source,
    })?;
    let first = probe(cfg, &input)?;
    let card = CardLink::open(connector, identity, cfg.link)?;
    Ok((input, sink, first, card))
}

/// How long the probe waits for the input to start before it leaves the
/// check to the pipeline (a live stream may not have started yet).
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Reads the start of the input until it shows packet sync, and returns
/// what it read (for the pipeline). An input without sync in its first
/// [`PipelineOptions::sync_limit`] bytes, or that ends without a packet,
/// is not TS: that is said at once, not after a wait for the card.
fn probe(cfg: &RunConfig, input: &Input) -> Result<VecDeque<Chunk>, Failure> {
    let mut reader = PacketReader::new();
    let mut read = VecDeque::new();
    let started = Instant::now();
    while started.elapsed() < PROBE_WAIT {
        if cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        let Some(chunk) = input.next(TICK) else {
            continue;
        };
        let end = match &chunk {
            Chunk::Data(d, _) => {
                reader.push(d);
                false
            }
            Chunk::End => {
                reader.finish();
                true
            }
            Chunk::Failed(_) => {
                read.push_back(chunk);
                return Ok(read);
            }
        };
        read.push_back(chunk);
        if reader.next_packet().is_some() {
            return Ok(read);
        }
        let skipped = reader.stats().skipped_bytes;
        if skipped >= cfg.pipeline.sync_limit {
            return Err(Failure::NotTs(format!(
                "no packet sync in the first {skipped} bytes"
            )));
        }
        if end {
            return Err(Failure::NotTs(if skipped == 0 {
                "the input is empty".into()
            } else {
                format!("no packet sync in its {skipped} bytes")
            }));
        }
    }
    Ok(read)
}

fn pump(
    cfg: &RunConfig,
    input: &Input,
    mut first: VecDeque<Chunk>,
    sink: &mut dyn PacketSink,
    pipeline: &mut Pipeline,
    status: &mut StatusLine,
) -> Result<(), Failure> {
    let mut last_data = Instant::now();
    let mut last_came: Option<Instant> = None;
    loop {
        if cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return pipeline.stop(sink);
        }
        let next = match first.pop_front() {
            Some(c) => Some(c),
            None if pipeline.card_working() => input.next(CARD_POLL),
            None => input.next(TICK),
        };
        match next {
            Some(Chunk::Data(d, came)) => {
                last_data = Instant::now();
                if let Some(t) = came {
                    if let Some(gap) = last_came.map(|l| t.saturating_duration_since(l)) {
                        if gap >= OUTAGE_AFTER {
                            pipeline.input_outage(gap);
                        } else if gap > INPUT_GAP {
                            pipeline.input_gap("the input was silent");
                        }
                    }
                    last_came = Some(t);
                }
                pipeline.push(&d, sink)?;
                sink.flush().map_err(|source| Failure::Output {
                    what: String::new(),
                    source,
                })?;
            }
            Some(Chunk::End) => return pipeline.finish(sink),
            Some(Chunk::Failed(e)) => {
                return Err(Failure::Input {
                    what: cfg.input.to_string(),
                    source: e.source,
                })
            }
            None => {
                pipeline.poll_card()?;
                if let Some(t) = cfg.input_timeout {
                    if last_data.elapsed() >= t {
                        return Err(Failure::Input {
                            what: cfg.input.to_string(),
                            source: io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no data for {:.0} s", t.as_secs_f64()),
                            ),
                        });
                    }
                }
            }
        }
        let mut s = pipeline.stats();
        s.datagrams_dropped = input.dropped();
        status.update(&s);
    }
}
