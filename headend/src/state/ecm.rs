//! The ECM scheduler: each channel's ECM for the current crypto period,
//! made when the period, the product's active generation or the ECM PID
//! changes, and published with the control-word pair it carries.
//!
//! The control words, the sealed ECM and the service's newest epoch are
//! committed in one transaction before the ECM is published, so a restart
//! within the same period puts the same ECM bytes and the same control
//! words on the air, and epochs never go back, even when the clock does.
//!
//! **Fresh epochs only after an earlier run.** An earlier run may have
//! sealed ECMs that this database does not record: the database may be a
//! restored backup, or a copy. Sealing one of those headers again would
//! put a fresh control word under the same (`K_ecm`, nonce), which gives
//! away both plaintexts' XOR and the Poly1305 key. That run sealed at
//! most the epoch of its last clock plus one (the next period's ECM is
//! never made ahead), and its clock was at most this start's (the clock
//! check and "epochs never go back" rely on the same). So when the
//! database records any earlier run, or is a backup, a header of an epoch
//! below `epoch(start) + 2` is put on the air only if its bytes are
//! stored (byte-identical, as after any restart); otherwise the channel
//! gets no ECM for that epoch and its stream withholds it
//! (`no_control_word`, fail closed) for at most two crypto periods. The
//! first start of a database seals at once.

use super::{Headend, Result, StateError};
use crate::metrics::Metrics;
use crate::output::EcmOutput;
use crate::store::{self, control_words::SealedCws};
use headend_engine::schedule::ControlWordSchedule;
use proto::ecm::EcmHeader;
use proto::Codec;

impl Headend {
    /// Each service's newest epoch on the air; a crypto period that would
    /// take a service back to an older epoch is refused.
    pub(super) fn load_epochs(&mut self, now_ms: u64) -> Result<()> {
        let now_epoch = now_ms / self.timing.period_ms;
        for (service, last, period) in store::control_words::epochs(&self.conn)? {
            if period != self.timing.period_ms && now_epoch < last {
                return Err(StateError::Config {
                    field: "crypto_period_ms".into(),
                    message: format!(
                        "service {service} has put epoch {last} of {period} ms periods on the air; \
                         {} ms periods would go back to epoch {now_epoch}, and epochs never go back. \
                         Use a period of at most {period} ms",
                        self.timing.period_ms
                    ),
                });
            }
        }
        Ok(())
    }

    /// Publishes the current ECM of every channel that has none yet (or
    /// whose ECM PID or product changed), at once rather than at the
    /// scheduler's next step: a stream that starts right after finds it.
    pub fn publish_ecms(&mut self, now_ms: u64) -> Result<()> {
        if !self.clock_step(now_ms)? {
            return Ok(());
        }
        self.ecm_step(now_ms)
    }

    /// Makes and publishes the ECMs due; a failure is counted in
    /// `iodoform_ecm_failures_total` (the caller logs it).
    pub(super) fn ecm_step(&mut self, now_ms: u64) -> Result<()> {
        let made = self.make_ecms(now_ms);
        if made.is_err() {
            Metrics::inc(&self.metrics.ecm_failures);
        }
        made
    }

    fn make_ecms(&mut self, now_ms: u64) -> Result<()> {
        let period = self.timing.period_ms;
        if self.ecm_fresh_from.is_some_and(|f| now_ms / period >= f) {
            self.ecm_fresh_from = None;
        }
        let fresh_from = self.ecm_fresh_from;
        let mut held = false;
        let mut todo = Vec::new();
        {
            let mut on_air = ControlWordSchedule::with_store(
                period,
                SealedCws::new(&self.conn, &self.mk, period),
            )
            .map_err(|e| StateError::Internal(format!("control words: {e}")))?;
            for ch in self.channels.values() {
                let Some(p) = self.products.get(&ch.product) else {
                    continue;
                };
                let epoch = on_air.epoch_on_air(ch.service_id, now_ms)?;
                if let Some(cur) = self.output.current_ecm(ch.service_id) {
                    if cur.epoch == epoch
                        && cur.product == p.id
                        && cur.generation == p.active_generation
                        && cur.ecm_pid == ch.ecm_pid
                    {
                        continue;
                    }
                }
                if fresh_from.is_some_and(|f| epoch < f)
                    && store::control_words::ecm(
                        &self.conn,
                        ch.product,
                        p.active_generation,
                        epoch,
                        ch.service_id,
                    )?
                    .is_none()
                {
                    held = true;
                    continue;
                }
                todo.push((ch.clone(), epoch, p.active_generation));
            }
        }
        if held && !self.ecm_held_logged {
            self.ecm_held_logged = true;
            tracing::warn!(
                first_epoch = fresh_from.unwrap_or(0),
                "no ECM is sealed fresh before epoch {} (in at most two crypto periods): an earlier run \
                 may have sealed epochs this database does not record; meanwhile the channels are withheld",
                fresh_from.unwrap_or(0)
            );
        }
        if todo.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let mut schedule =
            ControlWordSchedule::with_store(period, SealedCws::new(&tx, &self.mk, period))
                .map_err(|e| StateError::Internal(format!("control words: {e}")))?;
        let mut made = Vec::new();
        let mut sealed = 0u64;
        for (ch, epoch, generation) in todo {
            // Written into the transaction, with the service's newest
            // epoch: committed with the ECM that carries them.
            let cws = schedule.pair(ch.service_id, epoch)?;
            let header = EcmHeader {
                product: ch.product,
                generation,
                epoch,
                service: ch.service_id,
            };
            let stored =
                store::control_words::ecm(&tx, ch.product, generation, epoch, ch.service_id)?;
            let bytes = match stored {
                Some(b) => b,
                None => {
                    let time = epoch.saturating_mul(period) / 1000;
                    let ecm = self.engine.seal_ecm(header, &cws, time, ch.maturity)?;
                    let b = ecm.to_bytes();
                    store::control_words::insert_ecm(
                        &tx,
                        ch.product,
                        generation,
                        epoch,
                        ch.service_id,
                        &b,
                    )?;
                    sealed += 1;
                    b
                }
            };
            let section = ts::psi::ecm_section(ts::Parity::of_epoch(epoch), &bytes)
                .map_err(|e| StateError::Internal(format!("ECM section: {e}")))?;
            made.push(EcmOutput {
                service: ch.service_id,
                ecm_pid: ch.ecm_pid,
                product: ch.product,
                generation,
                epoch,
                epoch_start_ms: epoch.saturating_mul(period),
                period_ms: period,
                section: section.into(),
                cws,
            });
        }
        tx.commit()?;
        Metrics::add(&self.metrics.ecm_sent, sealed);
        for e in made {
            self.output.publish_ecm(e);
        }
        Ok(())
    }

    /// Drops control words and ECMs of epochs that can never be on the
    /// air again (more than two before each service's newest epoch).
    pub(super) fn prune(&mut self) -> Result<()> {
        store::control_words::prune(&self.conn)?;
        Ok(())
    }
}
