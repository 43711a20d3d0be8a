//! The daemon's state and every operation on it: the database, the key
//! engine, the EMM-U carousel and the ECM scheduler, behind one `&mut`.
//!
//! Every write follows one order, which is what makes a crash harmless:
//!
//! 1. validate the request against the state, refusing bad input before
//!    anything is written;
//! 2. write the change, and any fresh key it needs (sealed under the
//!    master key), in **one** SQLite transaction, and commit it
//!    (`synchronous = FULL`: on disk when `COMMIT` returns);
//! 3. only then apply it to the in-memory engine and emit messages.
//!
//! So no EMM or ECM ever carries a key, a control word or a sequence
//! number that a restart could fail to find again. See
//! `docs/OPERATIONS.md`, "Crash safety", for the argument per key. The
//! operations in the submodules below all keep this order: they open and
//! commit the transactions, and [`crate::store`] holds the statements.
//!
//! Time comes in as Unix milliseconds, so tests can drive it. Nothing here
//! logs a key: the tracing calls name ids, generations and epochs only.
//!
//! * products: products and the renewal of their keys;
//! * channels: channels from headend.toml and from the API;
//! * cards, subscriptions: cards, what they hold and who they pair with;
//! * carousel: the EMM-U carousel and its fast lane;
//! * [`seq`]: the EMM sequence blocks;
//! * simulcrypt: what the SimulCrypt ECMG takes from the state;
//! * ecm: the ECM scheduler;
//! * clock: the clock check (no time more than `max_clock_jump_secs`
//!   ahead of the last one persisted goes on the air);
//! * restore: backups, and a run on a database restored from one;
//! * status: the status JSON and the gauges;
//! * [`StateError`]: why an operation failed, in the domain's terms.

use crate::atrest::MasterKey;
use crate::config::ChannelConfig;
use crate::metrics::Metrics;
use crate::output::CaOutput;
use crate::store;
use api::{Channel, Product};
use carousel::Carousel;
use headend_engine::engine::KeyEngine;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use ts::psi::TableId;

mod cards;
mod carousel;
mod channels;
mod clock;
mod ecm;
mod error;
mod fields;
mod products;
mod restore;
mod sd;
pub mod seq;
mod simulcrypt;
mod status;
mod subscriptions;
#[cfg(test)]
mod tests;

pub use carousel::{FAST_REPEAT_MS, FAST_WINDOW_MS};
pub use clock::{CLOCK_PERSIST_MS, DEFAULT_MAX_CLOCK_JUMP_MS};
pub use error::{Clash, StateError, Unknown};
pub use fields::{parse_date, rfc3339};
pub use seq::{next_seq_floor, BLOCK_SHIFT};

/// EMM section table_ids: EMM-U and EMM-G.
pub const EMM_U_TABLE: TableId = TableId(0x82);
pub const EMM_G_TABLE: TableId = TableId(0x83);

type Result<T, E = StateError> = std::result::Result<T, E>;

/// The daemon's timing, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub period_ms: u64,
    pub renewal_ms: u64,
    pub cycle_ms: u64,
    /// The EMM bandwidth every channel carries, bit/s of TS: what the
    /// carousel paces itself to.
    pub emm_bitrate: u64,
}

/// The headend's state.
pub struct Headend {
    conn: Connection,
    mk: MasterKey,
    engine: KeyEngine,
    timing: Timing,
    run: u64,
    /// The current EMM sequence block (see [`next_seq_floor`]): its floor,
    /// when it started, and bounds on what one card may have had from it.
    seq_floor: u64,
    block_started_ms: u64,
    block_ticks: u64,
    block_one_offs: u64,
    products: BTreeMap<u32, Product>,
    channels: BTreeMap<u16, Channel>,
    /// The folder that relative channel file paths are taken from (the
    /// config's).
    channel_base: std::path::PathBuf,
    pairings: HashMap<u32, [u8; 32]>,
    cards_revoked: u64,
    carousel: Carousel,
    /// The renewal under way per product, if any.
    renewals: BTreeMap<u32, products::Pending>,
    /// Subset Difference: the forest and the cards' places in it.
    sd: Option<sd::SdState>,
    output: CaOutput,
    metrics: Arc<Metrics>,
    last_tick_ms: u64,
    ticks: u64,
    emm_buf: Vec<u8>,
    /// EMM-U sections made in this run and their bytes: their mean size
    /// prices the carousel's part of the EMM backlog.
    emm_u_sections: u64,
    emm_u_bytes: u64,
    /// The clock check (see `clock`).
    clock: clock::ClockCheck,
    /// The first epoch whose ECM may be sealed fresh (see `ecm`), while
    /// an earlier run may have sealed ones this database does not record.
    ecm_fresh_from: Option<u64>,
    ecm_held_logged: bool,
    /// The database is a restored backup not yet acted on, and what this
    /// run did about it (see `restore`).
    restore_pending: Option<store::backup::BackupMark>,
    restored: Option<api::RestoreStatus>,
}

impl std::fmt::Debug for Headend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Headend")
            .field("run", &self.run)
            .field("engine", &self.engine)
            .field("products", &self.products.len())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Headend {
    /// Opens the database, starts a new run and loads everything.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        db: &Path,
        mk: MasterKey,
        operator_id: u32,
        timing: Timing,
        config_channels: &[ChannelConfig],
        output: CaOutput,
        metrics: Arc<Metrics>,
        now_ms: u64,
    ) -> Result<Headend> {
        let mut conn = store::open(db, false)?;
        let operator = store::operator::load(&conn, &mk)?;
        if operator.operator_id() != operator_id {
            return Err(StateError::Config {
                field: "operator_id".into(),
                message: format!(
                    "is {operator_id} but the database was made for operator {}",
                    operator.operator_id()
                ),
            });
        }
        let run = {
            let tx = conn.transaction()?;
            let run = store::runs::last_run(&tx)? + 1;
            store::runs::insert_run(&tx, run, now_ms)?;
            tx.commit()?;
            run
        };
        // A new sequence block: every EMM from here on is above every one
        // the earlier runs could have used.
        let floor = seq::new_seq_block(&mut conn, run, now_ms)?;
        // A restored backup, and how far the runs before this one may have
        // gone: their newest clock, and (with any earlier run, or on a
        // backup) the epochs they may have sealed (see `ecm`).
        let mark = store::backup::mark(&conn)?;
        let persisted = store::runs::last_clock(&conn)?.max(mark.and_then(|m| m.restored_ms));
        let ecm_fresh_from =
            (run > 1 || mark.is_some()).then(|| now_ms / timing.period_ms.max(1) + 2);
        let mut engine = KeyEngine::new(operator);
        engine.raise_emm_g_seq(floor);

        let mut h = Headend {
            conn,
            mk,
            engine,
            timing,
            run,
            seq_floor: floor,
            block_started_ms: now_ms,
            block_ticks: 0,
            block_one_offs: 0,
            products: BTreeMap::new(),
            channels: BTreeMap::new(),
            channel_base: std::path::PathBuf::from("."),
            pairings: HashMap::new(),
            cards_revoked: 0,
            carousel: Carousel::default(),
            renewals: BTreeMap::new(),
            sd: None,
            output,
            metrics,
            last_tick_ms: now_ms,
            ticks: 0,
            emm_buf: Vec::with_capacity(1 << 16),
            emm_u_sections: 0,
            emm_u_bytes: 0,
            clock: clock::ClockCheck::new(persisted),
            ecm_fresh_from,
            ecm_held_logged: false,
            restore_pending: mark,
            restored: None,
        };
        // One second of EMM bandwidth to start with.
        h.carousel.budget = timing.emm_bitrate as f64 / 8.0;
        h.load_sd(now_ms)?;
        h.load_products(now_ms)?;
        h.sync_config_channels(config_channels, now_ms)?;
        h.load_channels()?;
        h.load_cards(floor)?;
        h.load_subscriptions()?;
        h.load_fast_lane(now_ms)?;
        h.load_epochs(now_ms)?;
        h.note_restore();
        Ok(h)
    }

    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn output(&self) -> &CaOutput {
        &self.output
    }

    pub fn operator_public(&self) -> headend_engine::operator::OperatorPublic {
        self.engine.operator().public()
    }

    /// Read access to the key engine (tests, benchmarks, embedding).
    pub fn engine(&self) -> &KeyEngine {
        &self.engine
    }

    /// One step of the scheduler: activations, renewals, lapsed
    /// subscriptions, ECMs, the EMM carousel and clean-up. Call it often
    /// (every few tens of ms).
    pub fn tick(&mut self, now_ms: u64) -> Result<()> {
        // A clock too far ahead makes nothing (see `clock`).
        if !self.clock_step(now_ms)? {
            return Ok(());
        }
        self.restore_step(now_ms)?;
        self.ticks += 1;
        self.ensure_seq_room(0, now_ms)?;
        self.block_ticks += 1;
        self.lapse_step(now_ms)?;
        self.renewal_step(now_ms)?;
        self.delivery_step(now_ms)?;
        self.activation_step(now_ms)?;
        // A failed ECM step (counted in iodoform_ecm_failures_total) does
        // not hold up the EMMs: the carousel runs, then the error is
        // reported.
        let ecms = self.ecm_step(now_ms);
        self.carousel_step(now_ms)?;
        if self.ticks % 64 == 0 {
            self.prune()?;
        }
        ecms
    }

    /// Publishes one EMM in its section (EMM-U, or EMM-G if `global`).
    fn emit(&mut self, table: TableId, emm: &[u8], global: bool) {
        match ts::psi::emm_section(table, emm) {
            Ok(s) => {
                self.carousel.budget -= carousel::air_bytes(s.len()) as f64;
                if !global {
                    self.emm_u_sections += 1;
                    self.emm_u_bytes += s.len() as u64;
                }
                self.output.publish_emm(s);
                if global {
                    Metrics::inc(&self.metrics.emm_g_sent);
                } else {
                    Metrics::inc(&self.metrics.emm_u_sent);
                }
            }
            Err(e) => self.internal_error(&format!("EMM section: {e}")),
        }
    }

    /// A fault of the headend that does not stop the operation: counted
    /// and logged.
    fn internal_error(&self, what: &str) {
        Metrics::inc(&self.metrics.internal_errors);
        tracing::error!("{what}");
    }
}
