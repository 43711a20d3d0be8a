//! Where the CA module runs: on a thread of its own ([`Port::thread`]),
//! so that a card that takes 300 ms per command never stops the packets,
//! or inline ([`Port::inline`]), answering each job before `send`
//! returns, for a pipeline that must be deterministic.
//!
//! Either way the pipeline hands the port one job at a time and takes the
//! answers back with [`Port::try_next`] or [`Port::wait_next`]: which job
//! goes next (ECMs before EMMs, the newest ECM only) is decided by the
//! caller, not here.
//!
//! What it must never do: run two jobs on the card at once, or lose an
//! answer (each job sent gives exactly one [`Done`]).

use super::ca::{CaModule, EcmOutcome, EmmOutcome};
use crate::card::LinkError;
use crate::error::Failure;
use cardlink::TransportError;
use proto::apdu::StatusWord;
use proto::card::EntitlementRecord;
use proto::ecm::EcmHeader;
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One command for the card.
#[derive(Debug)]
pub(super) enum Job {
    /// An ECM (the bytes without the section header).
    Ecm { header: EcmHeader, body: Vec<u8> },
    /// An EMM (the bytes without the section header), and the hash the
    /// pipeline remembers it by.
    Emm { hash: u64, body: Vec<u8> },
}

/// What the card said.
#[derive(Debug)]
pub(super) enum Answer {
    Ecm {
        header: EcmHeader,
        outcome: EcmOutcome,
        /// For a refusal on dates: the card's record and clock, to say
        /// which way the dates are off.
        entitlement: Option<(EntitlementRecord, u64)>,
    },
    Emm {
        hash: u64,
        outcome: EmmOutcome,
    },
}

/// A job done.
#[derive(Debug)]
pub(super) struct Done {
    /// `Err`: the module cannot go on (no card any more).
    pub answer: Result<Answer, Failure>,
    /// When the card started on it.
    pub started: Instant,
    /// How long the card took.
    pub card_time: Duration,
    /// The card's address after the job (a reconnect may bring another).
    pub card_id: u32,
    pub reconnects: u64,
}

/// Runs one job on the module.
fn execute<C: CaModule>(card: &mut C, job: Job) -> Done {
    let started = Instant::now();
    let answer = match job {
        Job::Ecm { header, body } => card.process_ecm(&body).map(|outcome| {
            let entitlement = match outcome {
                EcmOutcome::Refused(StatusWord::ECM_OUTSIDE_DATES) => {
                    card.entitlement(header.product)
                }
                _ => None,
            };
            Answer::Ecm {
                header,
                outcome,
                entitlement,
            }
        }),
        Job::Emm { hash, body } => card
            .process_emm(&body)
            .map(|outcome| Answer::Emm { hash, outcome }),
    };
    Done {
        answer,
        started,
        card_time: started.elapsed(),
        card_id: card.card_id(),
        reconnects: card.reconnects(),
    }
}

/// The CA module, inline or on its thread.
#[derive(Debug)]
pub(super) enum Port<C> {
    Inline {
        card: C,
        done: VecDeque<Done>,
    },
    Thread {
        jobs: Option<Sender<Job>>,
        done: Receiver<Done>,
        thread: Option<JoinHandle<Option<C>>>,
        card_id: u32,
        reconnects: u64,
    },
}

impl<C: CaModule + Send + 'static> Port<C> {
    pub(super) fn inline(card: C) -> Self {
        Port::Inline {
            card,
            done: VecDeque::new(),
        }
    }

    /// The module on a thread of its own; inline if the thread cannot be
    /// started.
    pub(super) fn thread(card: C) -> Self {
        let card_id = card.card_id();
        let reconnects = card.reconnects();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        // The card moves to the thread once it has started, so that it
        // stays here when the thread cannot be started.
        let (card_tx, card_rx) = mpsc::sync_channel::<C>(1);
        let spawned = std::thread::Builder::new()
            .name("card".into())
            .spawn(move || {
                let mut card = card_rx.recv().ok()?;
                while let Ok(job) = jobs_rx.recv() {
                    if done_tx.send(execute(&mut card, job)).is_err() {
                        break;
                    }
                }
                Some(card)
            });
        match spawned {
            Ok(thread) => {
                // The thread waits for it: the send cannot fail.
                let _ = card_tx.send(card);
                Port::Thread {
                    jobs: Some(jobs_tx),
                    done: done_rx,
                    thread: Some(thread),
                    card_id,
                    reconnects,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the card thread; the card is called in stream order");
                Port::inline(card)
            }
        }
    }
}

impl<C: CaModule> Port<C> {
    /// Hands the card a job (inline: does it now).
    pub(super) fn send(&mut self, job: Job) {
        match self {
            Port::Inline { card, done } => done.push_back(execute(card, job)),
            Port::Thread { jobs, .. } => {
                // A thread that is gone (it panicked) shows as a closed
                // answer channel in `try_next` and `wait_next`.
                if let Some(j) = jobs.as_ref() {
                    let _ = j.send(job);
                }
            }
        }
    }

    /// An answer, if one is ready.
    pub(super) fn try_next(&mut self) -> Option<Done> {
        match self {
            Port::Inline { done, .. } => done.pop_front(),
            Port::Thread { done, .. } => match done.try_recv() {
                Ok(d) => Some(self.note(d)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(gone()),
            },
        }
    }

    /// The next answer, waiting for it.
    pub(super) fn wait_next(&mut self) -> Done {
        match self {
            Port::Inline { done, .. } => done.pop_front().unwrap_or_else(gone),
            Port::Thread { done, .. } => match done.recv() {
                Ok(d) => self.note(d),
                Err(_) => gone(),
            },
        }
    }

    fn note(&mut self, d: Done) -> Done {
        if let Port::Thread {
            card_id,
            reconnects,
            ..
        } = self
        {
            *card_id = d.card_id;
            *reconnects = d.reconnects;
        }
        d
    }

    pub(super) fn card_id(&self) -> u32 {
        match self {
            Port::Inline { card, .. } => card.card_id(),
            Port::Thread { card_id, .. } => *card_id,
        }
    }

    pub(super) fn reconnects(&self) -> u64 {
        match self {
            Port::Inline { card, .. } => card.reconnects(),
            Port::Thread { reconnects, .. } => *reconnects,
        }
    }

    /// The module back, once the job in hand is done.
    pub(super) fn into_card(self) -> C {
        match self {
            Port::Inline { card, .. } => card,
            Port::Thread {
                mut jobs,
                mut thread,
                ..
            } => {
                drop(jobs.take());
                match thread.take().map(JoinHandle::join) {
                    Some(Ok(Some(card))) => card,
                    _ => panic!("the card thread panicked"),
                }
            }
        }
    }
}

/// The answer when the module's thread is gone (it panicked).
fn gone() -> Done {
    Done {
        answer: Err(Failure::Card(LinkError::NoCard {
            what: "the card thread".into(),
            why: TransportError::Other(
                "it stopped unexpectedly (a bug: please report it); restart the receiver".into(),
            ),
            waited: None,
        })),
        started: Instant::now(),
        card_time: Duration::ZERO,
        card_id: 0,
        reconnects: 0,
    }
}
