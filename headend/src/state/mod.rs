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
//! `docs/OPERATIONS.md`, "Crash safety", for the argument per key.
//!
//! Time comes in as Unix milliseconds, so tests can drive it. Nothing here
//! logs a key: the tracing calls name ids, generations and epochs only.

use crate::atrest::{row, MasterKey};
use crate::config::{ChannelConfig, ChannelSpec};
use crate::engine::{KeyEngine, MAX_ENTITLEMENTS_PER_CARD};
use crate::metrics::{EmmBacklog, Gauges, Metrics, ProductKeyGauge};
use crate::operator::OperatorKeys;
use crate::output::{CaOutput, EcmOutput};
use crate::schedule::{CwPair, Parity};
use crate::store;
use api::{
    CardView, Channel, ChannelOrigin, ChannelRef, ChannelUpdate, NewCard, NewChannel, NewPairing,
    NewProduct, NewSubscription, Product, ProductRef, Rotated, SubscriptionView,
};
use proto::crypto::{SigningKey, X25519Secret};
use proto::ecm::EcmHeader;
use proto::emm::{EmmCommand, Entitle, EMM_HEADER_LEN};
use proto::secret::{ControlWord, ProductKey, Seed};
use proto::Codec;

mod error;
pub use error::{Clash, StateError, Unknown};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use ts::psi::TableId;

/// Room for EMM sequence numbers in one block, per card: a block is
/// retired long before any card could get this many EMMs in it.
pub const BLOCK_SHIFT: u32 = 20;
const BLOCK_ROOM: u64 = 1 << BLOCK_SHIFT;
/// A block is retired after this long, or sooner if a card could come near
/// its room.
const BLOCK_MAX_AGE_MS: u64 = 10 * 60 * 1000;

/// The floor of a new EMM sequence block: above the whole range of the
/// last block in the database (`last_floor + 2^20`), and at least
/// `now_ms << 20`. The second part keeps a database restored from a backup
/// (whose last block is old) from reusing a sequence number: blocks are
/// made at least a millisecond apart, so every block made before `now`
/// lies below `now_ms << 20`, as long as the clock has not gone back.
pub fn next_seq_floor(last_floor: u64, now_ms: u64) -> Option<u64> {
    let by_chain = last_floor.checked_add(BLOCK_ROOM)?;
    let by_clock = now_ms
        .checked_shl(BLOCK_SHIFT)
        .filter(|v| v >> BLOCK_SHIFT == now_ms)?;
    let floor = by_chain.max(by_clock);
    // Stored as a SQLite INTEGER, with room above it.
    (floor <= i64::MAX as u64 - BLOCK_ROOM).then_some(floor)
}

/// EMM section table_ids: EMM-U and EMM-G.
pub const EMM_U_TABLE: TableId = TableId(0x82);
pub const EMM_G_TABLE: TableId = TableId(0x83);
/// The section size of a carousel EMM-U for one product (section header,
/// EMM header, time, one ENTITLE, tag): the backlog's price of an EMM-U
/// until this run has made some.
const ONE_PRODUCT_EMM_U_SECTION: u64 = 3 + EMM_HEADER_LEN as u64 + 8 + 58 + 16;
/// Longest product or channel name.
const MAX_NAME: usize = 64;

type Result<T, E = StateError> = std::result::Result<T, E>;

/// The daemon's timing, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub period_ms: u64,
    pub renewal_ms: u64,
    pub cycle_ms: u64,
}

/// How often the fast lane repeats a card's EMM-U.
pub const FAST_REPEAT_MS: u64 = 1000;
/// How long a card stays in the fast lane after an operator changed it.
pub const FAST_WINDOW_MS: u64 = 30_000;
/// The fast lane's share of the EMM bandwidth, in EMM-Us per second: about
/// 30 kbit/s of TS, under a third of a channel's default 100 kbit/s.
const FAST_RATE_PER_S: f64 = 20.0;
/// Cards in the fast lane at most; beyond, the oldest leaves early (it had
/// its first EMM-U at once, and has the regular carousel).
const FAST_MAX_CARDS: usize = 4096;

/// A card in the fast lane.
#[derive(Debug, Clone, Copy)]
struct Fast {
    /// When its next repetition is due.
    due_ms: u64,
    /// When it leaves the lane.
    until_ms: u64,
    /// Its EMM-U carries UNPAIR (it was unpaired, and not paired since).
    unpair: bool,
}

/// The EMM-U carousel: every member card gets one EMM-U per cycle, in
/// card id order, and cards whose entitlements changed jump the queue.
///
/// A card the operator just changed (subscribe, pair, unpair) is also put
/// in the *fast lane*: its EMM-U goes out again every [`FAST_REPEAT_MS`]
/// for [`FAST_WINDOW_MS`], whatever the cycle. The queue jump alone sends
/// one EMM-U, at once, which only a receiver already on the air with the
/// card gets; with a 60 s cycle, a receiver switched on a second later
/// would wait up to a minute for the next. The lane's total rate is
/// bounded ([`FAST_RATE_PER_S`]), so many changes at once slow each card's
/// repetitions down rather than outgrow the EMM bandwidth.
#[derive(Debug, Default)]
struct Carousel {
    members: BTreeSet<u32>,
    /// The last member sent in the regular round.
    cursor: u32,
    priority: VecDeque<u32>,
    queued: HashSet<u32>,
    /// Fractional EMMs owed to the regular round.
    credit: f64,
    fast: BTreeMap<u32, Fast>,
    /// Fractional EMMs owed to the fast lane.
    fast_credit: f64,
}

impl Carousel {
    fn prioritize(&mut self, card: u32) {
        if self.members.contains(&card) && self.queued.insert(card) {
            self.priority.push_back(card);
        }
    }

    /// Puts `card` in the fast lane from `now_ms` (its first repetition is
    /// one [`FAST_REPEAT_MS`] later: the change itself is sent at once by
    /// the caller). `unpair`: its EMM-Us carry UNPAIR.
    fn fast_lane(&mut self, card: u32, unpair: bool, now_ms: u64) {
        if !self.fast.contains_key(&card) && self.fast.len() >= FAST_MAX_CARDS {
            if let Some((&oldest, _)) = self.fast.iter().min_by_key(|(_, f)| f.until_ms) {
                self.fast.remove(&oldest);
            }
        }
        self.fast.insert(
            card,
            Fast {
                due_ms: now_ms + FAST_REPEAT_MS,
                until_ms: now_ms + FAST_WINDOW_MS,
                unpair,
            },
        );
    }

    /// The fast-lane cards due at `now_ms`, oldest due first, within the
    /// lane's rate; each is rescheduled or leaves the lane. `dt_ms`: time
    /// since the last call.
    fn take_fast(&mut self, now_ms: u64, dt_ms: u64, out: &mut Vec<(u32, bool)>) {
        if self.fast.is_empty() {
            self.fast_credit = 0.0;
            return;
        }
        self.fast_credit =
            (self.fast_credit + FAST_RATE_PER_S * dt_ms as f64 / 1000.0).min(FAST_RATE_PER_S);
        let mut due: Vec<(u64, u32)> = self
            .fast
            .iter()
            .filter(|(_, f)| f.due_ms <= now_ms)
            .map(|(&c, f)| (f.due_ms, c))
            .collect();
        due.sort_unstable();
        for (_, card) in due {
            if self.fast_credit < 1.0 {
                break;
            }
            self.fast_credit -= 1.0;
            let Some(f) = self.fast.get_mut(&card) else {
                continue;
            };
            out.push((card, f.unpair));
            f.due_ms = now_ms + FAST_REPEAT_MS;
            if f.due_ms > f.until_ms {
                self.fast.remove(&card);
            }
        }
    }

    /// The next `n` members in the round (at most every member once);
    /// returns whether the round wrapped (a cycle completed).
    fn take_round(&mut self, n: usize, out: &mut Vec<u32>) -> bool {
        let n = n.min(self.members.len());
        let mut wrapped = false;
        let mut taken = 0;
        while taken < n {
            let before = out.len();
            out.extend(
                self.members
                    .range(self.cursor.saturating_add(1)..)
                    .take(n - taken)
                    .copied(),
            );
            taken += out.len() - before;
            if let (true, Some(&last)) = (out.len() > before, out.last()) {
                self.cursor = last;
            }
            if taken < n {
                // End of the round: start again from the lowest id.
                self.cursor = 0;
                wrapped = true;
            }
        }
        wrapped
    }
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
    /// Control words of each service's current and next epochs (a copy of
    /// the sealed rows).
    cws: HashMap<u16, BTreeMap<u64, ControlWord>>,
    /// Each service's newest epoch on the air (also in `service_epochs`).
    high_water: HashMap<u16, u64>,
    output: CaOutput,
    metrics: Arc<Metrics>,
    last_tick_ms: u64,
    ticks: u64,
    emm_buf: Vec<u8>,
    /// EMM-U sections made in this run and their bytes: their mean size
    /// prices the carousel's part of the EMM backlog.
    emm_u_sections: u64,
    emm_u_bytes: u64,
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

/// Writes the operator's keys (sealed) into a fresh database.
pub fn init_database(path: &Path, mk: &MasterKey, op: &OperatorKeys, now_ms: u64) -> Result<()> {
    let mut conn = store::open(path, true)?;
    let tx = conn.transaction()?;
    let id = u64::from(op.operator_id());
    let kex = mk.seal(row("operator.x25519", id, 0), op.kex().to_seed().expose());
    let sig = mk.seal(row("operator.ed25519", id, 0), op.signing().seed().expose());
    tx.execute(
        "INSERT INTO operator (id, operator_id, x25519_public, ed25519_public, sealed_x25519, sealed_ed25519, created_ms)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            op.operator_id(),
            op.kex().public().to_vec(),
            op.signing().public().to_vec(),
            kex,
            sig,
            now_ms as i64
        ],
    )?;
    tx.commit()?;
    Ok(())
}

fn load_operator(conn: &Connection, mk: &MasterKey) -> Result<OperatorKeys> {
    let (op_id, kex, sig): (u32, Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT operator_id, sealed_x25519, sealed_ed25519 FROM operator WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| {
            StateError::Internal(
                "the database has no operator keys: was it made by `headend init`?".into(),
            )
        })?;
    let id = u64::from(op_id);
    let kex = Seed::from_bytes(mk.open::<32>(row("operator.x25519", id, 0), &kex)?);
    let sig = Seed::from_bytes(mk.open::<32>(row("operator.ed25519", id, 0), &sig)?);
    let signing = SigningKey::from_seed(sig)
        .map_err(|_| StateError::Internal("stored operator signing key is invalid".into()))?;
    Ok(OperatorKeys::from_parts(
        op_id,
        X25519Secret::from_seed(&kex),
        signing,
    ))
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// RFC 3339 text for Unix seconds.
pub fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Parses `YYYY-MM-DD` (start or end of that UTC day) or RFC 3339.
pub fn parse_date(s: &str, end_of_day: bool, field: &'static str) -> Result<u64> {
    let s = s.trim();
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let t = if let Ok(d) = time::Date::parse(s, &fmt) {
        let t = if end_of_day {
            d.with_hms(23, 59, 59)
        } else {
            d.with_hms(0, 0, 0)
        };
        t.map(|t| t.assume_utc())
            .map_err(|_| StateError::invalid(field, format!("{s:?} is not a valid date")))?
    } else {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(
            |_| {
                StateError::invalid(
                    field,
                    format!("{s:?} is neither YYYY-MM-DD nor an RFC 3339 date-time"),
                )
            },
        )?
    };
    u64::try_from(t.unix_timestamp())
        .map_err(|_| StateError::invalid(field, format!("{s:?} is before 1970")))
}

fn parse_key32(s: &str, field: &'static str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out)
        .map_err(|_| StateError::invalid(field, "expected 64 hex digits (32 bytes)"))?;
    Ok(out)
}

/// Service ids as the `clear_services` column holds them: `1,2,3`.
fn services_to_sql(v: &[u16]) -> String {
    v.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn services_from_sql(s: &str) -> Vec<u16> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn check_name(name: &str, what: &'static str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(StateError::invalid(
            what,
            format!("must be 1 to {MAX_NAME} printable characters"),
        ));
    }
    if name.parse::<u64>().is_ok() {
        return Err(StateError::invalid(
            what,
            "must not be a number (numbers name products by id)",
        ));
    }
    Ok(())
}

fn ensure_cw(
    tx: &Transaction<'_>,
    mk: &MasterKey,
    cache: &mut HashMap<u16, BTreeMap<u64, ControlWord>>,
    service: u16,
    epoch: u64,
) -> Result<ControlWord> {
    if let Some(cw) = cache.get(&service).and_then(|m| m.get(&epoch)) {
        return Ok(cw.clone());
    }
    let at = row("control_words", u64::from(service), epoch);
    let stored: Option<Vec<u8>> = tx
        .query_row(
            "SELECT sealed_cw FROM control_words WHERE service = ?1 AND epoch = ?2",
            params![service, epoch as i64],
            |r| r.get(0),
        )
        .optional()?;
    let cw = match stored {
        Some(blob) => ControlWord::from_bytes(mk.open::<16>(at, &blob)?),
        None => {
            let cw = ControlWord::random();
            tx.execute(
                "INSERT INTO control_words (service, epoch, sealed_cw) VALUES (?1, ?2, ?3)",
                params![service, epoch as i64, mk.seal(at, cw.expose())],
            )?;
            cw
        }
    };
    cache.entry(service).or_default().insert(epoch, cw.clone());
    Ok(cw)
}

/// A renewal written in a transaction, to apply once it commits.
struct Renewal {
    product: u32,
    generation: u32,
    active_generation: u32,
    activate_at_ms: u64,
    next_renewal_ms: u64,
    created_ms: u64,
    key: ProductKey,
}

fn renew_in_tx(
    tx: &Transaction<'_>,
    mk: &MasterKey,
    p: &Product,
    timing: Timing,
    reason: &str,
    now_ms: u64,
) -> Result<Renewal> {
    let generation = p
        .generation
        .checked_add(1)
        .ok_or(Clash::NoGenerationsLeft(p.id))?;
    // A renewal while the previous one is still pending activates that
    // one now: ECMs may use only the two newest generations, the two a
    // card holds.
    let active_generation = p.generation;
    let key = ProductKey::random();
    let sealed = mk.seal(
        row("product_keys", u64::from(p.id), u64::from(generation)),
        key.expose(),
    );
    let activate_at_ms = now_ms + timing.cycle_ms + timing.period_ms;
    let next_renewal_ms = now_ms + timing.renewal_ms;
    tx.execute(
        "INSERT INTO product_keys (product, generation, sealed_key, reason, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![p.id, generation, sealed, reason, now_ms as i64],
    )?;
    tx.execute(
        "UPDATE products SET generation = ?2, active_generation = ?3, activate_at_ms = ?4, next_renewal_ms = ?5 WHERE id = ?1",
        params![p.id, generation, active_generation, activate_at_ms as i64, next_renewal_ms as i64],
    )?;
    Ok(Renewal {
        product: p.id,
        generation,
        active_generation,
        activate_at_ms,
        next_renewal_ms,
        created_ms: now_ms,
        key,
    })
}

/// A short-syntax private section around `payload`, in one allocation:
/// exactly what `ts::psi::PrivateSection::build` writes (a test checks),
/// for the carousel's hot path. `payload` is one EMM, at most 4016 bytes.
fn short_section(table: TableId, payload: &[u8]) -> Arc<[u8]> {
    debug_assert!(payload.len() <= ts::psi::MAX_PRIVATE_PAYLOAD);
    let len = payload.len() as u16;
    let head = [table.0, 0x70 | (len >> 8) as u8, len as u8];
    head.iter().chain(payload).copied().collect()
}

/// Commits a new EMM sequence block and returns its floor.
fn new_seq_block(conn: &mut Connection, run: u64, now_ms: u64) -> Result<u64> {
    let tx = conn.transaction()?;
    let last: i64 = tx.query_row("SELECT COALESCE(MAX(floor), 0) FROM seq_blocks", [], |r| {
        r.get(0)
    })?;
    let floor = next_seq_floor(last as u64, now_ms)
        .ok_or_else(|| StateError::Internal("EMM sequence space exhausted".into()))?;
    tx.execute(
        "INSERT INTO seq_blocks (floor, run, started_ms) VALUES (?1, ?2, ?3)",
        params![floor as i64, run as i64, now_ms as i64],
    )?;
    tx.commit()?;
    Ok(floor)
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
        let operator = load_operator(&conn, &mk)?;
        if operator.operator_id() != operator_id {
            return Err(StateError::Config {
                field: "operator_id".into(),
                message: format!(
                    "is {operator_id} but the database was made for operator {}",
                    operator.operator_id()
                ),
            });
        }
        let run: u64 = {
            let tx = conn.transaction()?;
            let last: i64 =
                tx.query_row("SELECT COALESCE(MAX(run), 0) FROM runs", [], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO runs (run, started_ms) VALUES (?1, ?2)",
                params![last + 1, now_ms as i64],
            )?;
            tx.commit()?;
            last as u64 + 1
        };
        // A new sequence block: every EMM from here on is above every one
        // the earlier runs could have used.
        let floor = new_seq_block(&mut conn, run, now_ms)?;
        let mut engine = KeyEngine::new(operator);
        engine.raise_emm_g_seq(floor);

        let mut core = Headend {
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
            cws: HashMap::new(),
            high_water: HashMap::new(),
            output,
            metrics,
            last_tick_ms: now_ms,
            ticks: 0,
            emm_buf: Vec::with_capacity(1 << 16),
            emm_u_sections: 0,
            emm_u_bytes: 0,
        };
        core.load_products(now_ms)?;
        core.sync_config_channels(config_channels, now_ms)?;
        core.load_channels()?;
        core.load_cards(floor)?;
        core.load_fast_lane(now_ms)?;
        core.load_epochs(now_ms)?;
        Ok(core)
    }

    fn load_products(&mut self, now_ms: u64) -> Result<()> {
        let rows: Vec<Product> = {
            let mut st = self.conn.prepare(
                "SELECT id, name, generation, active_generation, activate_at_ms, next_renewal_ms, created_ms FROM products",
            )?;
            let v = st
                .query_map([], |r| {
                    Ok(Product {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        generation: r.get(2)?,
                        active_generation: r.get(3)?,
                        activate_at_ms: r.get::<_, i64>(4)? as u64,
                        next_renewal_ms: r.get::<_, i64>(5)? as u64,
                        created_ms: r.get::<_, i64>(6)? as u64,
                        key_created_ms: 0,
                    })
                })?
                .collect::<Result<_, _>>()?;
            v
        };
        for mut p in rows {
            p.key_created_ms = self.conn.query_row(
                "SELECT created_ms FROM product_keys WHERE product = ?1 AND generation = ?2",
                params![p.id, p.generation],
                |r| r.get::<_, i64>(0),
            )? as u64;
            let first = p.generation.saturating_sub(1).max(1);
            for g in first..=p.generation {
                let blob: Vec<u8> = self.conn.query_row(
                    "SELECT sealed_key FROM product_keys WHERE product = ?1 AND generation = ?2",
                    params![p.id, g],
                    |r| r.get(0),
                )?;
                let key = ProductKey::from_bytes(
                    self.mk
                        .open::<32>(row("product_keys", u64::from(p.id), u64::from(g)), &blob)?,
                );
                if g == first {
                    self.engine.add_product_with_key(p.id, g, key)?;
                } else {
                    self.engine.renew_product_key_with(p.id, key)?;
                }
            }
            // The cards had no EMMs while the daemon was down: a pending
            // generation gets a whole cycle from now before ECMs use it.
            if p.active_generation < p.generation {
                p.activate_at_ms = p
                    .activate_at_ms
                    .max(now_ms + self.timing.cycle_ms + self.timing.period_ms);
            }
            self.products.insert(p.id, p);
        }
        Ok(())
    }

    fn load_channels(&mut self) -> Result<()> {
        let mut st = self.conn.prepare(
            "SELECT service_id, name, product, ecm_pid, emm_pid, maturity, input, output, clear_services, origin FROM channels",
        )?;
        let v: Vec<Channel> = st
            .query_map([], |r| {
                Ok(Channel {
                    service_id: r.get(0)?,
                    name: r.get(1)?,
                    product: r.get(2)?,
                    ecm_pid: r.get(3)?,
                    emm_pid: r.get(4)?,
                    maturity: r.get(5)?,
                    input: r.get(6)?,
                    output: r.get(7)?,
                    clear_services: services_from_sql(&r.get::<_, String>(8)?),
                    origin: if r.get::<_, String>(9)? == "config" {
                        ChannelOrigin::Config
                    } else {
                        ChannelOrigin::Api
                    },
                })
            })?
            .collect::<Result<_, _>>()?;
        drop(st);
        self.channels = v.into_iter().map(|c| (c.service_id, c)).collect();
        Ok(())
    }

    /// Channels named in the config are created, or updated to match it;
    /// products they name are created if missing. A channel that an
    /// earlier start took from the config and that the config no longer
    /// has is removed: the file is where such a channel is changed.
    fn sync_config_channels(&mut self, channels: &[ChannelConfig], now_ms: u64) -> Result<()> {
        let dropped: Vec<(u16, String)> = {
            let mut st = self
                .conn
                .prepare("SELECT service_id, name FROM channels WHERE origin = 'config'")?;
            let v: Vec<(u16, String)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            v.into_iter()
                .filter(|(s, _)| !channels.iter().any(|c| c.service_id == *s))
                .collect()
        };
        for (service, name) in dropped {
            self.conn.execute(
                "DELETE FROM channels WHERE service_id = ?1",
                params![service],
            )?;
            tracing::info!(service, %name, "channel removed: headend.toml no longer has it");
        }
        for c in channels {
            let product = match self.products.values().find(|p| p.name == c.product) {
                Some(p) => p.id,
                None => {
                    self.add_product(
                        NewProduct {
                            name: c.product.clone(),
                            id: None,
                        },
                        now_ms,
                    )
                    .map_err(|e| StateError::Config {
                        field: format!("channels.product ({:?})", c.product),
                        message: e.to_string(),
                    })?
                    .id
                }
            };
            let clash: Option<u16> = self
                .conn
                .query_row(
                    "SELECT service_id FROM channels WHERE name = ?1 AND service_id != ?2",
                    params![c.name, c.service_id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = clash {
                return Err(StateError::Config {
                    field: format!("channels.name ({:?})", c.name),
                    message: format!(
                        "the database already has a channel of this name, for service {other} \
                         (added through the API): give this one another name, or start without \
                         it and rename the other (`headend channel update {other} --name ...`)"
                    ),
                });
            }
            self.conn.execute(
                "INSERT INTO channels (service_id, name, product, ecm_pid, emm_pid, maturity, input, output, created_ms, clear_services, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'config')
                 ON CONFLICT(service_id) DO UPDATE SET name = ?2, product = ?3, ecm_pid = ?4,
                   emm_pid = ?5, maturity = ?6, input = ?7, output = ?8, clear_services = ?10,
                   origin = 'config'",
                params![
                    c.service_id,
                    c.name,
                    product,
                    c.ecm_pid,
                    c.emm_pid,
                    c.maturity,
                    c.input,
                    c.output,
                    now_ms as i64,
                    services_to_sql(&c.clear_services),
                ],
            )?;
        }
        Ok(())
    }

    fn load_cards(&mut self, floor: u64) -> Result<()> {
        let mut prepared = Vec::new();
        {
            let mut st = self.conn.prepare(
                "SELECT id, public_key, sealed_kek FROM cards WHERE state = 'active' ORDER BY id",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let id: u32 = r.get(0)?;
                let public: Vec<u8> = r.get(1)?;
                let blob: Vec<u8> = r.get(2)?;
                let public: [u8; 32] = public.try_into().map_err(|_| {
                    StateError::Internal(format!("card {id}: stored key is not 32 bytes"))
                })?;
                let kek = proto::secret::Kek::from_bytes(
                    self.mk.open::<32>(row("cards", u64::from(id), 0), &blob)?,
                );
                prepared.push(self.engine.prepare_stored_card(id, public, kek)?);
            }
        }
        for p in prepared {
            let id = p.id();
            self.engine.insert_card(p)?;
            self.engine.raise_emm_u_seq(id, floor)?;
        }
        self.cards_revoked = self.conn.query_row(
            "SELECT COUNT(*) FROM cards WHERE state = 'revoked'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        {
            let mut st = self.conn.prepare(
                "SELECT s.card, s.product, s.start, s.end FROM subscriptions s
                 JOIN cards c ON c.id = s.card WHERE s.lapsed = 0 AND c.state = 'active'",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let (card, product): (u32, u32) = (r.get(0)?, r.get(1)?);
                let (start, end): (i64, i64) = (r.get(2)?, r.get(3)?);
                self.engine
                    .entitle(card, product, start as u64, end as u64)?;
                self.carousel.members.insert(card);
            }
        }
        {
            let mut st = self.conn.prepare(
                "SELECT p.card, p.receiver FROM pairings p JOIN cards c ON c.id = p.card WHERE c.state = 'active'",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let card: u32 = r.get(0)?;
                let rx: Vec<u8> = r.get(1)?;
                if let Ok(rx) = <[u8; 32]>::try_from(rx) {
                    self.pairings.insert(card, rx);
                    self.carousel.members.insert(card);
                }
            }
        }
        Ok(())
    }

    /// Cards subscribed or paired less than [`FAST_WINDOW_MS`] ago (the
    /// daemon restarted just after the change) go first and into the fast
    /// lane again, so that a restart does not push their EMM-U a whole
    /// cycle away.
    fn load_fast_lane(&mut self, now_ms: u64) -> Result<()> {
        let since = now_ms.saturating_sub(FAST_WINDOW_MS) as i64;
        let cards: Vec<u32> = {
            let mut st = self.conn.prepare(
                "SELECT card FROM subscriptions WHERE lapsed = 0 AND created_ms >= ?1
                 UNION SELECT card FROM pairings WHERE created_ms >= ?1",
            )?;
            let v = st
                .query_map(params![since], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            v
        };
        for card in cards {
            if self.carousel.members.contains(&card) {
                self.carousel.prioritize(card);
                self.carousel.fast_lane(card, false, now_ms);
            }
        }
        Ok(())
    }

    fn load_epochs(&mut self, now_ms: u64) -> Result<()> {
        let mut st = self
            .conn
            .prepare("SELECT service, last_epoch, period_ms FROM service_epochs")?;
        let rows: Vec<(u16, i64, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        drop(st);
        let now_epoch = now_ms / self.timing.period_ms;
        for (service, last, period) in rows {
            let last = last as u64;
            if period as u64 != self.timing.period_ms && now_epoch < last {
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
            self.high_water.insert(service, last);
        }
        Ok(())
    }

    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn output(&self) -> &CaOutput {
        &self.output
    }

    pub fn operator_public(&self) -> crate::operator::OperatorPublic {
        self.engine.operator().public()
    }

    // ---- products -------------------------------------------------------

    fn resolve_product(&self, r: &ProductRef) -> Result<&Product> {
        match r {
            ProductRef::Id(id) => self.products.get(id),
            ProductRef::Name(n) => match n.trim().parse::<u32>() {
                Ok(id) => self.products.get(&id),
                Err(_) => self.products.values().find(|p| &p.name == n),
            },
        }
        .ok_or_else(|| Unknown::Product(r.clone()).into())
    }

    pub fn add_product(&mut self, req: NewProduct, now_ms: u64) -> Result<Product> {
        check_name(&req.name, "name")?;
        if self.products.values().any(|p| p.name == req.name) {
            return Err(Clash::ProductName(req.name).into());
        }
        let id = match req.id {
            Some(0) => return Err(StateError::invalid("id", "products are numbered from 1")),
            Some(id) if self.products.contains_key(&id) => return Err(Clash::ProductId(id).into()),
            Some(id) => id,
            None => self
                .products
                .keys()
                .next_back()
                .map_or(Some(1), |m| m.checked_add(1))
                .ok_or_else(|| StateError::invalid("id", "no product ids left; give one"))?,
        };
        let key = ProductKey::random();
        let p = Product {
            id,
            name: req.name,
            generation: 1,
            active_generation: 1,
            activate_at_ms: now_ms,
            next_renewal_ms: now_ms + self.timing.renewal_ms,
            created_ms: now_ms,
            key_created_ms: now_ms,
        };
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO products (id, name, generation, active_generation, activate_at_ms, next_renewal_ms, created_ms)
             VALUES (?1, ?2, 1, 1, ?3, ?4, ?5)",
            params![id, p.name, now_ms as i64, p.next_renewal_ms as i64, now_ms as i64],
        )?;
        tx.execute(
            "INSERT INTO product_keys (product, generation, sealed_key, reason, created_ms) VALUES (?1, 1, ?2, 'created', ?3)",
            params![id, self.mk.seal(row("product_keys", u64::from(id), 1), key.expose()), now_ms as i64],
        )?;
        tx.commit()?;
        self.engine.add_product_with_key(id, 1, key)?;
        self.products.insert(id, p.clone());
        tracing::info!(product = id, name = %p.name, "product created");
        Ok(p)
    }

    pub fn products(&self) -> Vec<Product> {
        self.products.values().cloned().collect()
    }

    // ---- channels -------------------------------------------------------

    /// Where relative channel file paths are taken from: the config's
    /// folder (the default is the working directory).
    pub fn set_channel_base(&mut self, dir: &Path) {
        self.channel_base = dir.to_path_buf();
    }

    pub fn channel_base(&self) -> &Path {
        &self.channel_base
    }

    /// The shared channel checks ([`crate::config::check_channel`]),
    /// against every other channel: the refusals of the API.
    fn check_channel(&self, c: &Channel) -> Result<()> {
        check_name(&c.name, "name")?;
        let others: Vec<ChannelSpec<'_>> = self
            .channels
            .values()
            .filter(|o| o.service_id != c.service_id)
            .map(ChannelSpec::of)
            .collect();
        crate::config::check_channel(&ChannelSpec::of(c), &others, &self.channel_base)
            .map_err(StateError::channel)
    }

    fn find_channel(&self, r: &ChannelRef) -> Result<&Channel> {
        match r {
            ChannelRef::Service(s) => self.channels.get(s),
            ChannelRef::Name(n) => self.channels.values().find(|c| &c.name == n),
        }
        .ok_or_else(|| Unknown::Channel(r.clone()).into())
    }

    /// One channel, by service id or name.
    pub fn channel(&self, r: &ChannelRef) -> Result<Channel> {
        self.find_channel(r).cloned()
    }

    /// Publishes the current ECM of every channel that has none yet (or
    /// whose ECM PID or product changed), at once rather than at the
    /// scheduler's next step: a stream that starts right after finds it.
    pub fn publish_ecms(&mut self, now_ms: u64) -> Result<()> {
        self.ecm_step(now_ms)
    }

    pub fn add_channel(&mut self, req: NewChannel, now_ms: u64) -> Result<Channel> {
        check_name(&req.name, "name")?;
        let product = self.resolve_product(&req.product)?.id;
        if self.channels.contains_key(&req.service_id) {
            return Err(Clash::ServiceTaken(req.service_id).into());
        }
        if self.channels.values().any(|c| c.name == req.name) {
            return Err(Clash::ChannelName(req.name).into());
        }
        let c = Channel {
            service_id: req.service_id,
            name: req.name,
            product,
            ecm_pid: req.ecm_pid,
            emm_pid: req.emm_pid,
            maturity: req.maturity,
            input: req.input,
            output: req.output,
            clear_services: req.clear_services,
            origin: ChannelOrigin::Api,
        };
        self.check_channel(&c)?;
        self.conn.execute(
            "INSERT INTO channels (service_id, name, product, ecm_pid, emm_pid, maturity, input, output, created_ms, clear_services, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'api')",
            params![c.service_id, c.name, c.product, c.ecm_pid, c.emm_pid, c.maturity, c.input, c.output, now_ms as i64, services_to_sql(&c.clear_services)],
        )?;
        self.channels.insert(c.service_id, c.clone());
        tracing::info!(service = c.service_id, name = %c.name, product, "channel created");
        Ok(c)
    }

    /// A channel from headend.toml is changed there, not through the API:
    /// the next start would undo the change.
    fn refuse_config_channel(c: &Channel, action: &'static str) -> Result<()> {
        if c.origin == ChannelOrigin::Config {
            return Err(Clash::ConfigChannel {
                name: c.name.clone(),
                action,
            }
            .into());
        }
        Ok(())
    }

    /// Changes a channel; the stream follows within a second (the
    /// supervisor restarts it if its stream settings changed).
    pub fn update_channel(&mut self, r: &ChannelRef, req: ChannelUpdate) -> Result<Channel> {
        let old = self.find_channel(r)?.clone();
        Self::refuse_config_channel(&old, "change")?;
        if let Some(s) = req.service_id {
            if s != old.service_id {
                return Err(StateError::invalid(
                    "service_id",
                    format!(
                        "a channel's service id cannot change ({} to {s}): remove the channel and add it again",
                        old.service_id
                    ),
                ));
            }
        }
        let mut c = old.clone();
        if let Some(n) = req.name {
            check_name(&n, "name")?;
            if n != old.name && self.channels.values().any(|o| o.name == n) {
                return Err(Clash::ChannelName(n).into());
            }
            c.name = n;
        }
        if let Some(p) = &req.product {
            c.product = self.resolve_product(p)?.id;
        }
        if let Some(v) = req.ecm_pid {
            c.ecm_pid = v;
        }
        if let Some(v) = req.emm_pid {
            c.emm_pid = v;
        }
        if let Some(v) = req.maturity {
            c.maturity = v;
        }
        if let Some(v) = req.input {
            c.input = v;
        }
        if let Some(v) = req.output {
            c.output = v;
        }
        if let Some(v) = req.clear_services {
            c.clear_services = v;
        }
        self.check_channel(&c)?;
        self.conn.execute(
            "UPDATE channels SET name = ?2, product = ?3, ecm_pid = ?4, emm_pid = ?5, maturity = ?6,
               input = ?7, output = ?8, clear_services = ?9 WHERE service_id = ?1",
            params![
                c.service_id,
                c.name,
                c.product,
                c.ecm_pid,
                c.emm_pid,
                c.maturity,
                c.input,
                c.output,
                services_to_sql(&c.clear_services)
            ],
        )?;
        self.channels.insert(c.service_id, c.clone());
        tracing::info!(
            service = c.service_id,
            name = %c.name,
            product = c.product,
            ecm_pid = c.ecm_pid,
            emm_pid = c.emm_pid,
            input = c.input.as_deref().unwrap_or("-"),
            output = c.output.as_deref().unwrap_or("-"),
            "channel updated"
        );
        // A new ECM PID or product goes into the ECM at the scheduler's
        // next step, or before the stream starts again (the supervisor
        // calls `publish_ecms`).
        Ok(c)
    }

    /// Removes a channel: its ECMs stop at once, and the supervisor stops
    /// its stream within a second. Its epochs stay recorded, so that the
    /// service, added again, never goes back to an old crypto period.
    pub fn remove_channel(&mut self, r: &ChannelRef) -> Result<Channel> {
        let c = self.find_channel(r)?.clone();
        Self::refuse_config_channel(&c, "remove")?;
        self.conn.execute(
            "DELETE FROM channels WHERE service_id = ?1",
            params![c.service_id],
        )?;
        self.channels.remove(&c.service_id);
        self.output.remove_ecm(c.service_id);
        self.cws.remove(&c.service_id);
        tracing::info!(service = c.service_id, name = %c.name, "channel removed");
        Ok(c)
    }

    pub fn channels(&self) -> Vec<Channel> {
        self.channels.values().cloned().collect()
    }

    // ---- cards ----------------------------------------------------------

    pub fn add_card(&mut self, req: NewCard, now_ms: u64) -> Result<CardView> {
        let public = parse_key32(&req.public_key, "public_key")?;
        let ours = self.engine.operator().operator_id();
        if req.operator_id != ours {
            return Err(StateError::invalid(
                "operator_id",
                format!("this headend is operator {ours}, not {}", req.operator_id),
            ));
        }
        let exists: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM cards WHERE id = ?1",
                params![req.card_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(state) = exists {
            return Err(Clash::CardRegistered {
                card: req.card_id,
                state,
            }
            .into());
        }
        let prepared = self
            .engine
            .prepare_card(req.card_id, public)
            .map_err(|e| StateError::invalid("card_id/public_key", e.to_string()))?;
        let sealed = self.mk.seal(
            row("cards", u64::from(req.card_id), 0),
            prepared.kek().expose(),
        );
        self.conn.execute(
            "INSERT INTO cards (id, operator_id, public_key, sealed_kek, state, created_ms) VALUES (?1, ?2, ?3, ?4, 'active', ?5)",
            params![req.card_id, ours, public.to_vec(), sealed, now_ms as i64],
        )?;
        self.engine.insert_card(prepared)?;
        self.engine.raise_emm_u_seq(req.card_id, self.seq_floor)?;
        tracing::info!(card = req.card_id, "card registered");
        self.card(req.card_id)
    }

    fn subscriptions_of(&self, card: Option<u32>) -> Result<Vec<SubscriptionView>> {
        let mut st = self.conn.prepare(
            "SELECT s.card, s.product, p.name, s.start, s.end, s.lapsed FROM subscriptions s
             JOIN products p ON p.id = s.product WHERE (?1 IS NULL OR s.card = ?1) ORDER BY s.card, s.product",
        )?;
        let v = st
            .query_map(params![card], |r| {
                let start = r.get::<_, i64>(3)? as u64;
                let end = r.get::<_, i64>(4)? as u64;
                Ok(SubscriptionView {
                    card_id: r.get(0)?,
                    product: r.get(1)?,
                    product_name: r.get(2)?,
                    start: rfc3339(start),
                    until: rfc3339(end),
                    start_unix: start,
                    end_unix: end,
                    lapsed: r.get::<_, i64>(5)? != 0,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    pub fn subscriptions(&self, card: Option<u32>) -> Result<Vec<SubscriptionView>> {
        self.subscriptions_of(card)
    }

    pub fn card(&self, id: u32) -> Result<CardView> {
        type CardRow = (u32, Vec<u8>, String, i64, Option<i64>);
        let row: Option<CardRow> = self
            .conn
            .query_row(
                "SELECT operator_id, public_key, state, created_ms, revoked_ms FROM cards WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let (operator_id, public, state, created, revoked) = row.ok_or(Unknown::Card(id))?;
        Ok(CardView {
            card_id: id,
            operator_id,
            public_key: hex::encode(public),
            state,
            created: rfc3339(created as u64 / 1000),
            revoked: revoked.map(|r| rfc3339(r as u64 / 1000)),
            subscriptions: self.subscriptions_of(Some(id))?,
            paired_receiver: self.pairings.get(&id).map(hex::encode),
        })
    }

    /// Cards in id order, from `after` (exclusive), at most `limit`.
    pub fn cards(&self, after: u32, limit: u32) -> Result<Vec<CardView>> {
        let mut st = self.conn.prepare(
            "SELECT id, operator_id, public_key, state, created_ms, revoked_ms FROM cards WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let v: Vec<CardView> = st
            .query_map(params![after, limit], |r| {
                let id: u32 = r.get(0)?;
                Ok(CardView {
                    card_id: id,
                    operator_id: r.get(1)?,
                    public_key: hex::encode(r.get::<_, Vec<u8>>(2)?),
                    state: r.get(3)?,
                    created: rfc3339(r.get::<_, i64>(4)? as u64 / 1000),
                    revoked: r
                        .get::<_, Option<i64>>(5)?
                        .map(|x| rfc3339(x as u64 / 1000)),
                    subscriptions: Vec::new(),
                    paired_receiver: self.pairings.get(&id).map(hex::encode),
                })
            })?
            .collect::<Result<_, _>>()?;
        drop(st);
        let mut v = v;
        // One indexed query per card: a page is at most 10,000 cards.
        for c in &mut v {
            c.subscriptions = self.subscriptions_of(Some(c.card_id))?;
        }
        Ok(v)
    }

    fn require_active_card(&self, id: u32) -> Result<()> {
        if self.engine.has_card(id) {
            return Ok(());
        }
        let state: Option<String> = self
            .conn
            .query_row("SELECT state FROM cards WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        match state {
            None => Err(Unknown::Card(id).into()),
            Some(state) => Err(Clash::CardNotActive { card: id, state }.into()),
        }
    }

    /// Cards that hold `product` now (live subscription, active card).
    fn holders(&self, product: u32, now_ms: u64) -> Result<Vec<u32>> {
        let mut st = self.conn.prepare(
            "SELECT s.card FROM subscriptions s JOIN cards c ON c.id = s.card
             WHERE s.product = ?1 AND s.lapsed = 0 AND c.state = 'active' AND s.end >= ?2",
        )?;
        let v = st
            .query_map(params![product, secs(now_ms) as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    fn apply_renewal(&mut self, r: Renewal, now_ms: u64) -> Result<()> {
        self.engine.renew_product_key_with(r.product, r.key)?;
        if let Some(p) = self.products.get_mut(&r.product) {
            p.generation = r.generation;
            p.active_generation = r.active_generation;
            p.activate_at_ms = r.activate_at_ms;
            p.next_renewal_ms = r.next_renewal_ms;
            p.key_created_ms = r.created_ms;
        }
        Metrics::inc(&self.metrics.rotations);
        tracing::info!(
            product = r.product,
            generation = r.generation,
            "product key renewed"
        );
        // The holders need the new key before it goes into ECMs.
        for card in self.holders(r.product, now_ms)? {
            self.carousel.prioritize(card);
        }
        Ok(())
    }

    pub fn revoke(&mut self, id: u32, now_ms: u64) -> Result<CardView> {
        self.require_active_card(id)?;
        let products: Vec<u32> = self
            .engine
            .entitlements(id)?
            .iter()
            .filter(|e| e.end >= secs(now_ms))
            .map(|e| e.product)
            .collect();
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE cards SET state = 'revoked', revoked_ms = ?2 WHERE id = ?1",
            params![id, now_ms as i64],
        )?;
        tx.execute(
            "UPDATE subscriptions SET lapsed = 1 WHERE card = ?1",
            params![id],
        )?;
        tx.execute("DELETE FROM pairings WHERE card = ?1", params![id])?;
        let mut renewals = Vec::new();
        for p in &products {
            let prod = &self.products[p];
            renewals.push(renew_in_tx(
                &tx,
                &self.mk,
                prod,
                self.timing,
                "revocation",
                now_ms,
            )?);
        }
        tx.commit()?;
        self.engine.remove_card(id)?;
        self.pairings.remove(&id);
        self.carousel.members.remove(&id);
        self.carousel.fast.remove(&id);
        self.cards_revoked += 1;
        for r in renewals {
            self.apply_renewal(r, now_ms)?;
        }
        // Tell the card itself, for good measure; the renewal is what
        // actually cuts it off.
        self.ensure_seq_room(1, now_ms)?;
        match self
            .engine
            .emm_g(secs(now_ms), vec![EmmCommand::BlockCards(vec![id])])
        {
            Ok(emm) => self.emit(EMM_G_TABLE, &emm, true),
            Err(e) => self.internal_error(&format!("EMM-G for revoked card {id}: {e}")),
        }
        tracing::info!(card = id, products = products.len(), "card revoked");
        self.card(id)
    }

    // ---- subscriptions ----------------------------------------------------

    pub fn subscribe(&mut self, req: NewSubscription, now_ms: u64) -> Result<SubscriptionView> {
        let product = self.resolve_product(&req.product)?.id;
        self.require_active_card(req.card_id)?;
        let end = parse_date(&req.until, true, "until")?;
        let start = match &req.start {
            Some(s) => parse_date(s, false, "start")?,
            None => secs(now_ms) - secs(now_ms) % 86_400,
        };
        if end < start {
            return Err(StateError::invalid("until", "is before start"));
        }
        if end < secs(now_ms) {
            return Err(StateError::invalid("until", "is in the past"));
        }
        let ents = self.engine.entitlements(req.card_id)?;
        if !ents.iter().any(|e| e.product == product) && ents.len() >= MAX_ENTITLEMENTS_PER_CARD {
            return Err(Clash::CardFull(req.card_id).into());
        }
        self.conn.execute(
            "INSERT INTO subscriptions (card, product, start, end, lapsed, created_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)
             ON CONFLICT(card, product) DO UPDATE SET start = ?3, end = ?4, lapsed = 0",
            params![req.card_id, product, start as i64, end as i64, now_ms as i64],
        )?;
        self.engine.entitle(req.card_id, product, start, end)?;
        self.carousel.members.insert(req.card_id);
        self.carousel.prioritize(req.card_id);
        self.carousel.fast_lane(req.card_id, false, now_ms);
        tracing::info!(card = req.card_id, product, end, "subscribed");
        let name = self.products[&product].name.clone();
        Ok(SubscriptionView {
            card_id: req.card_id,
            product,
            product_name: name,
            start: rfc3339(start),
            until: rfc3339(end),
            start_unix: start,
            end_unix: end,
            lapsed: false,
        })
    }

    pub fn unsubscribe(&mut self, card: u32, product: &ProductRef, now_ms: u64) -> Result<()> {
        let product = self.resolve_product(product)?.id;
        let lapsed: Option<i64> = self
            .conn
            .query_row(
                "SELECT lapsed FROM subscriptions WHERE card = ?1 AND product = ?2",
                params![card, product],
                |r| r.get(0),
            )
            .optional()?;
        let Some(lapsed) = lapsed else {
            return Err(Unknown::Subscription { card, product }.into());
        };
        let live = lapsed == 0 && self.engine.has_card(card);
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM subscriptions WHERE card = ?1 AND product = ?2",
            params![card, product],
        )?;
        let renewal = if live {
            Some(renew_in_tx(
                &tx,
                &self.mk,
                &self.products[&product],
                self.timing,
                "unsubscribe",
                now_ms,
            )?)
        } else {
            None
        };
        tx.commit()?;
        if live {
            self.engine.unentitle(card, product)?;
            self.refresh_membership(card);
            self.ensure_seq_room(1, now_ms)?;
            match self.engine.emm_u(
                card,
                secs(now_ms),
                vec![EmmCommand::RemoveProduct { product }],
            ) {
                Ok(emm) => self.emit(EMM_U_TABLE, &emm, false),
                Err(e) => self.internal_error(&format!("REMOVE PRODUCT for card {card}: {e}")),
            }
        }
        if let Some(r) = renewal {
            self.apply_renewal(r, now_ms)?;
        }
        tracing::info!(card, product, "unsubscribed");
        Ok(())
    }

    fn refresh_membership(&mut self, card: u32) {
        let has = self
            .engine
            .entitlements(card)
            .map(|e| !e.is_empty())
            .unwrap_or(false);
        if has || self.pairings.contains_key(&card) {
            self.carousel.members.insert(card);
        } else {
            self.carousel.members.remove(&card);
        }
    }

    // ---- pairing --------------------------------------------------------

    /// Pairs a card with one receiver (or with another one: the new key
    /// replaces the old). The receiver's key gets the check a card's key
    /// gets at registration. The card's EMM-U, with the pairing and its
    /// entitlements, goes out at once and through the fast lane.
    pub fn pair(&mut self, req: NewPairing, now_ms: u64) -> Result<CardView> {
        let rx = parse_key32(&req.receiver_key, "receiver_key")?;
        self.engine.operator().kex().check_peer(&rx).map_err(|_| {
            StateError::invalid(
                "receiver_key",
                "a low-order X25519 point (such as all zeros), which no receiver has: \
                 give the key that `receiver identity` prints on the receiver",
            )
        })?;
        self.require_active_card(req.card_id)?;
        self.conn.execute(
            "INSERT INTO pairings (card, receiver, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(card) DO UPDATE SET receiver = ?2, created_ms = ?3",
            params![req.card_id, rx.to_vec(), now_ms as i64],
        )?;
        self.pairings.insert(req.card_id, rx);
        self.carousel.members.insert(req.card_id);
        self.send_now(req.card_id, false, now_ms)?;
        tracing::info!(card = req.card_id, "card paired");
        self.card(req.card_id)
    }

    /// Ends a card's pairing: the removal is committed, then an EMM-U with
    /// UNPAIR (and the card's entitlements) goes out at once and through
    /// the fast lane, so the card accepts any receiver again. A card that
    /// is not paired in the database gets UNPAIR all the same (its own
    /// state may differ).
    pub fn unpair(&mut self, card: u32, now_ms: u64) -> Result<CardView> {
        self.require_active_card(card)?;
        self.conn
            .execute("DELETE FROM pairings WHERE card = ?1", params![card])?;
        let was = self.pairings.remove(&card).is_some();
        self.refresh_membership(card);
        self.send_now(card, true, now_ms)?;
        tracing::info!(card, was_paired = was, "card unpaired");
        self.card(card)
    }

    /// Sends a card's whole state (see [`Headend::card_emm`]) at once, and
    /// puts it in the fast lane.
    fn send_now(&mut self, card: u32, unpair: bool, now_ms: u64) -> Result<()> {
        self.ensure_seq_room(1, now_ms)?;
        let pairing = self.pairings.get(&card).copied();
        match self.card_emm(card, pairing, unpair, secs(now_ms)) {
            Ok(Some(emm)) => self.emit(EMM_U_TABLE, &emm, false),
            Ok(None) => {}
            Err(e) => self.internal_error(&format!("EMM-U for card {card}: {e}")),
        }
        self.carousel.fast_lane(card, unpair, now_ms);
        Ok(())
    }

    // ---- rotation -------------------------------------------------------

    pub fn rotate(
        &mut self,
        product: Option<&ProductRef>,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<Rotated>> {
        let ids: Vec<u32> = match product {
            Some(r) => vec![self.resolve_product(r)?.id],
            None => self.products.keys().copied().collect(),
        };
        let tx = self.conn.transaction()?;
        let mut renewals = Vec::new();
        for id in &ids {
            renewals.push(renew_in_tx(
                &tx,
                &self.mk,
                &self.products[id],
                self.timing,
                reason,
                now_ms,
            )?);
        }
        tx.commit()?;
        let mut out = Vec::new();
        for r in renewals {
            let id = r.product;
            self.apply_renewal(r, now_ms)?;
            let p = &self.products[&id];
            out.push(Rotated {
                product: id,
                name: p.name.clone(),
                generation: p.generation,
                active_generation: p.active_generation,
                activate_at: rfc3339(p.activate_at_ms / 1000),
            });
        }
        Ok(out)
    }

    // ---- output ---------------------------------------------------------

    /// Moves every counter to a new sequence block, committed first.
    fn roll_seq_block(&mut self, now_ms: u64) -> Result<()> {
        let floor = new_seq_block(&mut self.conn, self.run, now_ms)?;
        let ids: Vec<u32> = {
            let mut st = self
                .conn
                .prepare_cached("SELECT id FROM cards WHERE state = 'active'")?;
            let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            v
        };
        for id in ids {
            self.engine.raise_emm_u_seq(id, floor)?;
        }
        self.engine.raise_emm_g_seq(floor);
        self.seq_floor = floor;
        self.block_started_ms = now_ms;
        self.block_ticks = 0;
        self.block_one_offs = 0;
        tracing::debug!(floor, "new EMM sequence block");
        Ok(())
    }

    /// A card gets at most three carousel EMMs per tick (one queued, one in
    /// the round, one in the fast lane) plus the one-off EMMs (pair,
    /// unpair, remove product, block): a new block starts well before that
    /// could reach the room.
    fn ensure_seq_room(&mut self, one_offs: u64, now_ms: u64) -> Result<()> {
        let bound = 3 * (self.block_ticks + 1) + self.block_one_offs + one_offs;
        if bound >= BLOCK_ROOM / 2
            || now_ms.saturating_sub(self.block_started_ms) >= BLOCK_MAX_AGE_MS
        {
            self.roll_seq_block(now_ms)?;
        }
        self.block_one_offs += one_offs;
        Ok(())
    }

    fn emit(&mut self, table: TableId, emm: &[u8], global: bool) {
        match ts::psi::emm_section(table, emm) {
            Ok(s) => {
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

    fn internal_error(&self, what: &str) {
        Metrics::inc(&self.metrics.internal_errors);
        tracing::error!("{what}");
    }

    /// One step of the scheduler: activations, renewals, lapsed
    /// subscriptions, ECMs, the EMM carousel and clean-up. Call it often
    /// (every few tens of ms).
    pub fn tick(&mut self, now_ms: u64) -> Result<()> {
        self.ticks += 1;
        self.ensure_seq_room(0, now_ms)?;
        self.block_ticks += 1;
        self.lapse_step(now_ms)?;
        self.renewal_step(now_ms)?;
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

    fn lapse_step(&mut self, now_ms: u64) -> Result<()> {
        let lapsed: Vec<(u32, u32)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT card, product FROM subscriptions WHERE lapsed = 0 AND end < ?1 LIMIT 10000",
            )?;
            let v = st
                .query_map(params![secs(now_ms) as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            v
        };
        if lapsed.is_empty() {
            return Ok(());
        }
        let products: BTreeSet<u32> = lapsed.iter().map(|&(_, p)| p).collect();
        let tx = self.conn.transaction()?;
        for (card, product) in &lapsed {
            tx.execute(
                "UPDATE subscriptions SET lapsed = 1 WHERE card = ?1 AND product = ?2",
                params![card, product],
            )?;
        }
        let mut renewals = Vec::new();
        for p in &products {
            renewals.push(renew_in_tx(
                &tx,
                &self.mk,
                &self.products[p],
                self.timing,
                "subscription ended",
                now_ms,
            )?);
        }
        tx.commit()?;
        for (card, product) in lapsed {
            if self.engine.has_card(card) {
                self.engine.unentitle(card, product)?;
                self.refresh_membership(card);
            }
            tracing::info!(card, product, "subscription ended");
        }
        for r in renewals {
            self.apply_renewal(r, now_ms)?;
        }
        Ok(())
    }

    fn renewal_step(&mut self, now_ms: u64) -> Result<()> {
        let due: Vec<u32> = self
            .products
            .values()
            .filter(|p| p.next_renewal_ms <= now_ms)
            .map(|p| p.id)
            .collect();
        for id in due {
            self.rotate(Some(&ProductRef::Id(id)), "scheduled", now_ms)?;
        }
        Ok(())
    }

    fn activation_step(&mut self, now_ms: u64) -> Result<()> {
        let due: Vec<(u32, u32)> = self
            .products
            .values()
            .filter(|p| p.active_generation < p.generation && p.activate_at_ms <= now_ms)
            .map(|p| (p.id, p.generation))
            .collect();
        for (id, generation) in due {
            self.conn.execute(
                "UPDATE products SET active_generation = ?2 WHERE id = ?1",
                params![id, generation],
            )?;
            if let Some(p) = self.products.get_mut(&id) {
                p.active_generation = generation;
            }
            tracing::info!(product = id, generation, "ECMs now use the new period key");
        }
        Ok(())
    }

    /// Makes and publishes the ECMs due; a failure is counted in
    /// `iodoform_ecm_failures_total` (the caller logs it).
    fn ecm_step(&mut self, now_ms: u64) -> Result<()> {
        let made = self.make_ecms(now_ms);
        if made.is_err() {
            Metrics::inc(&self.metrics.ecm_failures);
        }
        made
    }

    fn make_ecms(&mut self, now_ms: u64) -> Result<()> {
        let period = self.timing.period_ms;
        let now_epoch = now_ms / period;
        let mut todo = Vec::new();
        for ch in self.channels.values() {
            let Some(p) = self.products.get(&ch.product) else {
                continue;
            };
            let epoch = now_epoch.max(self.high_water.get(&ch.service_id).copied().unwrap_or(0));
            if let Some(cur) = self.output.current_ecm(ch.service_id) {
                if cur.epoch == epoch
                    && cur.product == p.id
                    && cur.generation == p.active_generation
                    && cur.ecm_pid == ch.ecm_pid
                {
                    continue;
                }
            }
            todo.push((ch.clone(), epoch, p.active_generation));
        }
        if todo.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let mut made = Vec::new();
        let mut sealed = 0u64;
        for (ch, epoch, generation) in todo {
            let next = epoch
                .checked_add(1)
                .ok_or_else(|| StateError::Internal("epoch overflow".into()))?;
            let this_cw = ensure_cw(&tx, &self.mk, &mut self.cws, ch.service_id, epoch)?;
            let next_cw = ensure_cw(&tx, &self.mk, &mut self.cws, ch.service_id, next)?;
            let cws = match Parity::of(epoch) {
                Parity::Even => CwPair {
                    even: this_cw,
                    odd: next_cw,
                },
                Parity::Odd => CwPair {
                    even: next_cw,
                    odd: this_cw,
                },
            };
            let header = EcmHeader {
                product: ch.product,
                generation,
                epoch,
                service: ch.service_id,
            };
            let stored: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT bytes FROM ecms WHERE product = ?1 AND generation = ?2 AND epoch = ?3 AND service = ?4",
                    params![ch.product, generation, epoch as i64, ch.service_id],
                    |r| r.get(0),
                )
                .optional()?;
            let bytes = match stored {
                Some(b) => b,
                None => {
                    let time = epoch.saturating_mul(period) / 1000;
                    let ecm = self.engine.seal_ecm(header, &cws, time, ch.maturity)?;
                    let b = ecm.to_bytes();
                    tx.execute(
                        "INSERT INTO ecms (product, generation, epoch, service, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![ch.product, generation, epoch as i64, ch.service_id, b],
                    )?;
                    sealed += 1;
                    b
                }
            };
            tx.execute(
                "INSERT INTO service_epochs (service, last_epoch, period_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(service) DO UPDATE SET last_epoch = MAX(last_epoch, ?2), period_ms = ?3",
                params![ch.service_id, epoch as i64, period as i64],
            )?;
            let section = ts::psi::ecm_section(
                match Parity::of(epoch) {
                    Parity::Even => ts::Parity::Even,
                    Parity::Odd => ts::Parity::Odd,
                },
                &bytes,
            )
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
            let hw = self.high_water.entry(e.service).or_insert(0);
            *hw = (*hw).max(e.epoch);
            self.output.publish_ecm(e);
        }
        Ok(())
    }

    fn carousel_step(&mut self, now_ms: u64) -> Result<()> {
        let dt = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        let n = self.carousel.members.len();
        self.carousel.credit += n as f64 * dt as f64 / self.timing.cycle_ms as f64;
        // Never bank more than one cycle's worth.
        self.carousel.credit = self.carousel.credit.min(n as f64);
        let regular = self.carousel.credit.floor() as usize;
        self.carousel.credit -= regular as f64;
        let mut ids = Vec::new();
        // Changed cards first: up to a tenth of a cycle per tick beyond the
        // regular round, so that a renewal reaches every holder quickly.
        let burst = regular.max(64).max(n / 10);
        while ids.len() < burst {
            let Some(c) = self.carousel.priority.pop_front() else {
                break;
            };
            self.carousel.queued.remove(&c);
            if self.carousel.members.contains(&c) {
                ids.push(c);
            }
        }
        let mut round = Vec::with_capacity(regular);
        if self.carousel.take_round(regular, &mut round) {
            Metrics::inc(&self.metrics.carousel_cycles);
        }
        ids.extend(round);
        self.send_emm_us(&ids, now_ms);
        // The fast lane: cards the operator just changed, again.
        let mut fast = Vec::new();
        self.carousel.take_fast(now_ms, dt, &mut fast);
        for (id, unpair) in fast {
            // Revoked meanwhile: nothing more for it.
            if !self.engine.has_card(id) {
                continue;
            }
            let pairing = self.pairings.get(&id).copied();
            match self.card_emm(id, pairing, unpair, secs(now_ms)) {
                Ok(Some(emm)) => self.emit(EMM_U_TABLE, &emm, false),
                Ok(None) => {}
                Err(e) => self.internal_error(&format!("EMM-U for card {id}: {e}")),
            }
        }
        Ok(())
    }

    /// Seals and publishes the carousel EMM-U of each card.
    fn send_emm_us(&mut self, ids: &[u32], now_ms: u64) {
        let now = secs(now_ms);
        let mut plain = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(&rx) = self.pairings.get(&id) {
                match self.card_emm(id, Some(rx), false, now) {
                    Ok(Some(emm)) => self.emit(EMM_U_TABLE, &emm, false),
                    Ok(None) => {}
                    Err(e) => self.internal_error(&format!("EMM-U for card {id}: {e}")),
                }
            } else if self.engine.has_card(id) {
                plain.push(id);
            }
        }
        for chunk in plain.chunks(1024) {
            let mut buf = std::mem::take(&mut self.emm_buf);
            buf.clear();
            if let Err(e) = self.engine.emm_u_batch(chunk, now, &mut buf) {
                self.internal_error(&format!("EMM-U batch: {e}"));
            }
            // Cut the batch into EMMs and wrap each in its section, one
            // allocation each, and publish them under one lock.
            let mut sections = Vec::with_capacity(chunk.len());
            let mut at = 0;
            while at + EMM_HEADER_LEN <= buf.len() {
                let body = u16::from_be_bytes([buf[at + 14], buf[at + 15]]) as usize;
                let end = at + EMM_HEADER_LEN + body;
                if end > buf.len() {
                    break;
                }
                sections.push(short_section(EMM_U_TABLE, &buf[at..end]));
                at = end;
            }
            Metrics::add(&self.metrics.emm_u_sent, sections.len() as u64);
            self.emm_u_sections += sections.len() as u64;
            self.emm_u_bytes += sections.iter().map(|s| s.len() as u64).sum::<u64>();
            self.output.publish_emms(sections);
            self.emm_buf = buf;
        }
    }

    /// A card's whole state in one EMM-U: its live entitlements with their
    /// current keys, then PAIR with `pairing` if it is paired, else UNPAIR
    /// if `unpair`. `None` if that is nothing at all.
    fn card_emm(
        &mut self,
        id: u32,
        pairing: Option<[u8; 32]>,
        unpair: bool,
        now: u64,
    ) -> Result<Option<Vec<u8>>> {
        let mut commands = Vec::new();
        for e in self
            .engine
            .entitlements(id)?
            .iter()
            .filter(|e| e.end >= now)
        {
            let (generation, key) = self.engine.product_key(e.product)?;
            commands.push(EmmCommand::Entitle(Entitle {
                product: e.product,
                generation,
                start: e.start,
                end: e.end,
                key: key.clone(),
            }));
        }
        match pairing {
            Some(receiver) => commands.push(EmmCommand::Pair { receiver }),
            None if unpair => commands.push(EmmCommand::Unpair),
            None => {}
        }
        if commands.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.engine.emm_u(id, now, commands)?))
    }

    /// Drops control words and ECMs of epochs that can never be on the
    /// air again (below each service's high-water mark minus one).
    fn prune(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        for (&service, &hw) in &self.high_water {
            let keep = hw.saturating_sub(2) as i64;
            tx.execute(
                "DELETE FROM control_words WHERE service = ?1 AND epoch < ?2",
                params![service, keep],
            )?;
            tx.execute(
                "DELETE FROM ecms WHERE service = ?1 AND epoch < ?2",
                params![service, keep],
            )?;
            if let Some(m) = self.cws.get_mut(&service) {
                *m = m.split_off(&(keep as u64));
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- status ---------------------------------------------------------

    /// A product's key timing at `now_ms`.
    pub fn product_key_gauge(&self, p: &Product, now_ms: u64) -> ProductKeyGauge {
        let secs_between = |from: u64, to: u64| (to as f64 - from as f64) / 1000.0;
        let pending = p.active_generation < p.generation;
        ProductKeyGauge {
            product: p.id,
            name: p.name.clone(),
            key_age_seconds: secs_between(p.key_created_ms, now_ms).max(0.0),
            next_renewal_seconds: secs_between(now_ms, p.next_renewal_ms),
            key_switch_pending: pending,
            key_switch_seconds: if pending {
                secs_between(now_ms, p.activate_at_ms).max(0.0)
            } else {
                0.0
            },
        }
    }

    /// The EMM backlog at `now_ms` (see [`crate::metrics::EMM_BACKLOG_HELP`]).
    pub fn emm_backlog(&self, now_ms: u64) -> EmmBacklog {
        let c = &self.carousel;
        let owed = c.members.range(c.cursor.saturating_add(1)..).count() + c.priority.len();
        let mean = if self.emm_u_sections == 0 {
            ONE_PRODUCT_EMM_U_SECTION
        } else {
            self.emm_u_bytes.div_ceil(self.emm_u_sections)
        };
        let unsent = self.output.emm_unsent(now_ms);
        EmmBacklog {
            carousel_bytes: owed as u64 * mean,
            carousel_sections: owed as u64,
            unsent_bytes: unsent.bytes,
            unsent_sections: unsent.sections,
            bitrate: crate::stream::DEFAULT_EMM_BITRATE,
        }
    }

    pub fn gauges(&self, now_ms: u64) -> Gauges {
        Gauges {
            cards_active: self.engine.card_count() as u64,
            cards_revoked: self.cards_revoked,
            products: self.products.len() as u64,
            channels: self.channels.len() as u64,
            carousel_cards: self.carousel.members.len() as u64,
            run: self.run,
            emm_cycle_seconds: self.timing.cycle_ms as f64 / 1000.0,
            key_renewal_seconds: self.timing.renewal_ms as f64 / 1000.0,
            crypto_period_seconds: self.timing.period_ms as f64 / 1000.0,
            product_keys: self
                .products
                .values()
                .map(|p| self.product_key_gauge(p, now_ms))
                .collect(),
            emm_backlog: self.emm_backlog(now_ms),
        }
    }

    pub fn status(&self, now_ms: u64) -> serde_json::Value {
        let g = self.gauges(now_ms);
        // Each product with its key timing (the metrics' numbers, rounded
        // to the second).
        let products: Vec<serde_json::Value> = self
            .products
            .values()
            .zip(&g.product_keys)
            .map(|(p, k)| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "key_age_secs".into(),
                        (k.key_age_seconds.floor() as i64).into(),
                    );
                    o.insert(
                        "next_renewal_secs".into(),
                        (k.next_renewal_seconds.ceil() as i64).into(),
                    );
                    o.insert("key_switch_pending".into(), k.key_switch_pending.into());
                    o.insert(
                        "key_switch_secs".into(),
                        (k.key_switch_seconds.ceil() as i64).into(),
                    );
                }
                v
            })
            .collect();
        let b = g.emm_backlog;
        let ecms: Vec<serde_json::Value> = self
            .output
            .current_ecms()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "service_id": e.service,
                    "product": e.product,
                    "generation": e.generation,
                    "epoch": e.epoch,
                })
            })
            .collect();
        serde_json::json!({
            "run": self.run,
            "now": rfc3339(secs(now_ms)),
            "operator_id": self.engine.operator().operator_id(),
            "crypto_period_ms": self.timing.period_ms,
            "emm_cycle_ms": self.timing.cycle_ms,
            "key_renewal_secs": self.timing.renewal_ms / 1000,
            "epoch": now_ms / self.timing.period_ms,
            "cards": { "active": g.cards_active, "revoked": g.cards_revoked },
            "carousel_cards": g.carousel_cards,
            "carousel_pending": self.carousel.priority.len(),
            "products": products,
            "channels": self.channels.values().collect::<Vec<_>>(),
            "ecms": ecms,
            "emm_sections": self.output.emm_cursor(),
            "emm_backlog": {
                "bytes": b.bytes(),
                "seconds": (b.seconds() * 1000.0).round() / 1000.0,
                "carousel_sections": b.carousel_sections,
                "carousel_bytes": b.carousel_bytes,
                "unsent_sections": b.unsent_sections,
                "unsent_bytes": b.unsent_bytes,
                "bitrate": b.bitrate,
            },
        })
    }

    /// Read access to the key engine (tests, benchmarks, embedding).
    pub fn engine(&self) -> &KeyEngine {
        &self.engine
    }

    /// Registers cards whose KEKs were derived elsewhere (a bulk import
    /// from another subscriber system, or a benchmark), each subscribed to
    /// `product` from `start` to `end` (Unix seconds), in one transaction.
    pub fn import_cards(
        &mut self,
        cards: Vec<(u32, [u8; 32], proto::secret::Kek)>,
        product: u32,
        start: u64,
        end: u64,
        now_ms: u64,
    ) -> Result<usize> {
        if !self.products.contains_key(&product) {
            return Err(Unknown::Product(ProductRef::Id(product)).into());
        }
        let ours = self.engine.operator().operator_id();
        let tx = self.conn.transaction()?;
        {
            let mut card = tx.prepare(
                "INSERT INTO cards (id, operator_id, public_key, sealed_kek, state, created_ms) VALUES (?1, ?2, ?3, ?4, 'active', ?5)",
            )?;
            let mut sub = tx.prepare(
                "INSERT INTO subscriptions (card, product, start, end, lapsed, created_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
            )?;
            for (id, public, kek) in &cards {
                let sealed = self.mk.seal(row("cards", u64::from(*id), 0), kek.expose());
                card.execute(params![id, ours, public.to_vec(), sealed, now_ms as i64])?;
                sub.execute(params![
                    id,
                    product,
                    start as i64,
                    end as i64,
                    now_ms as i64
                ])?;
            }
        }
        tx.commit()?;
        let n = cards.len();
        for (id, public, kek) in cards {
            let p = self.engine.prepare_stored_card(id, public, kek)?;
            self.engine.insert_card(p)?;
            self.engine.raise_emm_u_seq(id, self.seq_floor)?;
            self.engine.entitle(id, product, start, end)?;
            self.carousel.members.insert(id);
        }
        Ok(n)
    }

    /// One whole carousel cycle at once, as the scheduler spreads it over
    /// `emm_cycle_ms`: optionally a new sequence block (a commit, and every
    /// active card's id read back from the database, as every 10 minutes),
    /// then one EMM-U per member into the output. Returns the EMM-Us sent.
    /// For benchmarks.
    pub fn carousel_cycle_now(&mut self, now_ms: u64, new_block: bool) -> Result<usize> {
        if new_block {
            self.roll_seq_block(now_ms)?;
        }
        let ids: Vec<u32> = self.carousel.members.iter().copied().collect();
        self.send_emm_us(&ids, now_ms);
        Metrics::inc(&self.metrics.carousel_cycles);
        Ok(ids.len())
    }

    /// The engine's bare EMM-U batch for `ids`, with no database and no
    /// output: the in-memory rate the carousel is compared with. Counters
    /// only move up, so this is safe, but the EMMs go nowhere.
    pub fn emm_u_batch_in_memory(
        &mut self,
        ids: &[u32],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        Ok(self.engine.emm_u_batch(ids, now, out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_floors_only_move_up_and_survive_a_rolled_back_database() {
        let t0 = 1_800_000_000_000u64;
        let a = next_seq_floor(0, t0).unwrap();
        assert_eq!(a, t0 << BLOCK_SHIFT);
        // The next block is above the whole range of the previous one, even
        // with the clock stopped or gone back.
        let b = next_seq_floor(a, t0).unwrap();
        assert!(b >= a + BLOCK_ROOM);
        let c = next_seq_floor(b, t0 - 3_600_000).unwrap();
        assert!(c >= b + BLOCK_ROOM);
        // A database restored from before blocks b and c (its last floor is
        // a): a millisecond later by the clock, the new block is above
        // both of their ranges.
        let restored = next_seq_floor(a, t0 + 3).unwrap();
        assert!(restored >= c + BLOCK_ROOM, "{restored} {c}");
        assert_eq!(next_seq_floor(i64::MAX as u64, t0), None);
        assert_eq!(next_seq_floor(0, u64::MAX), None);
    }

    #[test]
    fn short_sections_match_ts() {
        for len in [40, 98, 255, 256, 4016] {
            let emm: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                &*short_section(EMM_U_TABLE, &emm),
                &ts::psi::emm_section(EMM_U_TABLE, &emm).unwrap()[..]
            );
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2026-12-01", false, "x").unwrap(), 1_796_083_200);
        assert_eq!(
            parse_date("2026-12-01", true, "x").unwrap(),
            1_796_083_200 + 86_399
        );
        assert_eq!(
            parse_date("2026-12-01T01:00:00+01:00", true, "x").unwrap(),
            1_796_083_200
        );
        for bad in [
            "2026-02-30",
            "tomorrow",
            "",
            "2026-12-01T25:00:00Z",
            "1969-12-31",
        ] {
            assert!(parse_date(bad, true, "until").is_err(), "{bad}");
        }
        assert_eq!(rfc3339(1_796_083_200), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn carousel_round_visits_every_member_once_per_cycle() {
        let mut c = Carousel::default();
        c.members.extend([3, 5, 9, 12]);
        let mut out = Vec::new();
        assert!(!c.take_round(3, &mut out));
        assert_eq!(out, [3, 5, 9]);
        out.clear();
        assert!(c.take_round(3, &mut out));
        assert_eq!(out, [12, 3, 5]);
        out.clear();
        // Never more than every member in one call.
        c.take_round(10, &mut out);
        assert_eq!(out.len(), 4);
        c.prioritize(9);
        c.prioritize(9);
        c.prioritize(77);
        assert_eq!(c.priority, [9]);
    }
}

#[cfg(test)]
mod pairing_tests {
    use super::*;
    use ::card::{Applet, MemEeprom};
    use cardlink::{CardClient, InProcessCard};
    use proto::apdu::StatusWord;

    const T0: u64 = 1_800_000_000_000;
    type Card = CardClient<InProcessCard<MemEeprom>>;

    /// A core with the default EMM cycle (60 s), product "basic", and
    /// card 42 registered (an in-process card, personalized and locked).
    fn set_up(dir: &Path, key: &proto::secret::Key32) -> (Headend, Card) {
        let db = dir.join("h.db");
        let op = OperatorKeys::generate(1);
        init_database(&db, &MasterKey::new(key), &op, T0).unwrap();
        let mut core = open(&db, key, T0);
        core.add_product(
            NewProduct {
                name: "basic".into(),
                id: None,
            },
            T0,
        )
        .unwrap();
        let mut card = CardClient::new(InProcessCard::new(
            Applet::power_on(MemEeprom::default()).unwrap(),
        ));
        card.select().unwrap();
        let public = card.personalize(&op.public().personalization(42)).unwrap();
        card.lock().unwrap();
        core.add_card(
            NewCard {
                card_id: 42,
                public_key: hex::encode(public),
                operator_id: 1,
            },
            T0,
        )
        .unwrap();
        (core, card)
    }

    fn open(db: &Path, key: &proto::secret::Key32, now: u64) -> Headend {
        Headend::open(
            db,
            MasterKey::new(key),
            1,
            Timing {
                period_ms: 10_000,
                renewal_ms: 30 * 86_400_000,
                cycle_ms: 60_000,
            },
            &[],
            CaOutput::new(),
            Arc::new(Metrics::default()),
            now,
        )
        .unwrap()
    }

    /// EMM sections for card 42 published since `cursor`.
    fn emms_for_42(core: &Headend, cursor: &mut u64) -> Vec<Vec<u8>> {
        let (got, next, _) = core.output().emm_sections_since(*cursor, 10_000);
        *cursor = next;
        got.into_iter()
            .map(|e| e.section[3..].to_vec())
            .filter(|emm| emm[2..6] == 42u32.to_be_bytes())
            .collect()
    }

    /// Ticks every 50 ms over `[from, to)`; the times at which EMMs for
    /// card 42 came out.
    fn run(core: &mut Headend, cursor: &mut u64, from: u64, to: u64) -> Vec<u64> {
        let mut at = Vec::new();
        for t in (from..to).step_by(50) {
            core.tick(t).unwrap();
            for _ in emms_for_42(core, cursor) {
                at.push(t);
            }
        }
        at
    }

    #[test]
    fn a_new_subscription_goes_out_at_once_and_again_every_second_for_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let key = proto::secret::Key32::random();
        let (mut core, mut card) = set_up(dir.path(), &key);
        let mut cursor = core.output().emm_cursor();
        core.subscribe(
            NewSubscription {
                card_id: 42,
                product: ProductRef::Name("basic".into()),
                until: "2099-12-31".into(),
                start: None,
            },
            T0,
        )
        .unwrap();
        let at = run(&mut core, &mut cursor, T0, T0 + 45_000);
        // At once (the next step), then every second for 30 s, and not
        // again before the regular round (60 s).
        assert_eq!(at.first(), Some(&T0), "{at:?}");
        assert_eq!(
            at.len(),
            1 + (FAST_WINDOW_MS / FAST_REPEAT_MS) as usize,
            "{at:?}"
        );
        assert!(
            at.windows(2).all(|w| w[1] - w[0] <= FAST_REPEAT_MS + 50),
            "{at:?}"
        );
        assert!(*at.last().unwrap() <= T0 + FAST_WINDOW_MS + 50, "{at:?}");
        // The regular carousel still comes, within its cycle.
        let later = run(&mut core, &mut cursor, T0 + 45_000, T0 + 125_000);
        assert!(!later.is_empty() && later.len() <= 2, "{later:?}");
        // Each repetition is a whole EMM-U that the card takes (a newer
        // sequence number): any one of them entitles it.
        let (got, _, _) = core.output().emm_sections_since(0, 10_000);
        let accepted = got
            .iter()
            .filter(|e| e.section[5..9] == 42u32.to_be_bytes())
            .filter(|e| card.process_emm(&e.section[3..]).is_ok())
            .count();
        assert_eq!(accepted, at.len() + later.len());
        assert_eq!(card.list_entitlements().unwrap().len(), 1);
    }

    #[test]
    fn pairing_keys_are_checked_and_unpair_reaches_the_card() {
        let dir = tempfile::tempdir().unwrap();
        let key = proto::secret::Key32::random();
        let (mut core, mut card) = set_up(dir.path(), &key);
        let pair = |k: String| NewPairing {
            card_id: 42,
            receiver_key: k,
        };
        // Low-order points (all zeros; u = 1, of order 4) are refused, as
        // a card key would be, and nothing is written or sent.
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut cursor = core.output().emm_cursor();
        for bad in [[0u8; 32], one] {
            let e = core.pair(pair(hex::encode(bad)), T0).unwrap_err();
            assert!(matches!(e, StateError::Invalid { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(
                msg.starts_with("receiver_key: ") && msg.contains("receiver identity"),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
        assert!(emms_for_42(&core, &mut cursor).is_empty());
        assert_eq!(core.card(42).unwrap().paired_receiver, None);

        // A wrong pairing, sent at once (before any step).
        let mine = proto::crypto::X25519Secret::random();
        let wrong = proto::crypto::X25519Secret::random();
        core.pair(pair(hex::encode(wrong.public())), T0).unwrap();
        let sent = emms_for_42(&core, &mut cursor);
        assert_eq!(sent.len(), 1);
        card.process_emm(&sent[0]).unwrap();
        let info = card.info().unwrap();
        assert_eq!(info.paired_receiver, Some(wrong.public()));
        let refused = card.establish_session(&mine, &info).unwrap_err();
        assert_eq!(refused.status(), Some(StatusWord::NOT_PAIRED_RECEIVER));

        // Unpair: committed (a restart still shows it), and UNPAIR at once.
        let v = core.unpair(42, T0 + 1000).unwrap();
        assert_eq!(v.paired_receiver, None);
        let sent = emms_for_42(&core, &mut cursor);
        assert_eq!(sent.len(), 1);
        card.process_emm(&sent[0]).unwrap();
        let info = card.info().unwrap();
        assert_eq!(info.paired_receiver, None);
        card.establish_session(&mine, &info).unwrap();
        // The fast lane repeats UNPAIR (a card that missed the first gets
        // it); the card takes each (newer sequence numbers).
        let at = run(&mut core, &mut cursor, T0 + 1000, T0 + 4000);
        assert!(at.len() >= 2, "{at:?}");

        // Re-pairing replaces the key, and goes out at once too.
        core.pair(pair(hex::encode(wrong.public())), T0 + 5000)
            .unwrap();
        core.pair(pair(hex::encode(mine.public())), T0 + 5000)
            .unwrap();
        assert_eq!(
            core.card(42).unwrap().paired_receiver,
            Some(hex::encode(mine.public()))
        );
        let (got, _, _) = core.output().emm_sections_since(0, 10_000);
        for e in got
            .iter()
            .filter(|e| e.section[5..9] == 42u32.to_be_bytes())
        {
            let _ = card.process_emm(&e.section[3..]);
        }
        let info = card.info().unwrap();
        assert_eq!(info.paired_receiver, Some(mine.public()));
        card.establish_session(&mine, &info).unwrap();

        // A restart just after a change sends it first and repeats it.
        drop(core);
        let mut core = open(&dir.path().join("h.db"), &key, T0 + 6000);
        assert_eq!(
            core.card(42).unwrap().paired_receiver,
            Some(hex::encode(mine.public()))
        );
        let mut cursor = 0;
        let at = run(&mut core, &mut cursor, T0 + 6000, T0 + 9000);
        assert_eq!(at.first(), Some(&(T0 + 6000)), "{at:?}");
        assert!(at.len() >= 3, "{at:?}");
        // Unknown and revoked cards.
        assert!(matches!(
            core.unpair(7, T0 + 9000),
            Err(StateError::Unknown(_))
        ));
        core.revoke(42, T0 + 9000).unwrap();
        assert!(matches!(
            core.unpair(42, T0 + 9000),
            Err(StateError::Clash(_))
        ));
        assert!(run(&mut core, &mut cursor, T0 + 9000, T0 + 12_000).is_empty());
    }
}

#[cfg(test)]
mod scheduler_tests {
    use super::*;
    use crate::config::ChannelConfig;

    const T0: u64 = 1_800_000_000_000;

    fn open(
        db: &Path,
        key: &proto::secret::Key32,
        channels: &[ChannelConfig],
        now: u64,
    ) -> Headend {
        Headend::open(
            db,
            MasterKey::new(key),
            1,
            Timing {
                period_ms: 1000,
                renewal_ms: 60_000,
                cycle_ms: 5000,
            },
            channels,
            CaOutput::new(),
            Arc::new(Metrics::default()),
            now,
        )
        .unwrap()
    }

    #[test]
    fn gauges_follow_key_timing_backlog_and_ecm_failures() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let key = proto::secret::Key32::random();
        init_database(&db, &MasterKey::new(&key), &OperatorKeys::generate(1), T0).unwrap();
        let channels = [ChannelConfig {
            name: "one".into(),
            service_id: 7,
            product: "basic".into(),
            ecm_pid: 0x100,
            emm_pid: 0x101,
            maturity: 0,
            input: None,
            output: None,
            clear_services: vec![],
        }];
        let mut core = open(&db, &key, &channels, T0);
        core.tick(T0).unwrap();
        let k = &core.gauges(T0 + 2_500).product_keys[0];
        assert_eq!((k.product, k.name.as_str()), (1, "basic"));
        assert_eq!(k.key_age_seconds, 2.5);
        assert_eq!(k.next_renewal_seconds, 57.5);
        assert!(!k.key_switch_pending);
        assert_eq!(k.key_switch_seconds, 0.0);

        // A renewal: the new generation's age starts again, and ECMs take
        // it one cycle plus one period later (5 + 1 s).
        core.rotate(None, "test", T0 + 10_000).unwrap();
        let k = &core.gauges(T0 + 11_000).product_keys[0];
        assert_eq!(k.key_age_seconds, 1.0);
        assert_eq!(k.next_renewal_seconds, 59.0);
        assert!(k.key_switch_pending);
        assert_eq!(k.key_switch_seconds, 5.0);
        let status = core.status(T0 + 11_000);
        let p = &status["products"][0];
        assert_eq!(p["key_age_secs"], 1);
        assert_eq!(p["next_renewal_secs"], 59);
        assert_eq!(p["key_switch_pending"], true);
        assert_eq!(p["key_switch_secs"], 5);
        core.tick(T0 + 16_000).unwrap();
        let k = &core.gauges(T0 + 16_000).product_keys[0];
        assert!(!k.key_switch_pending);
        assert_eq!(k.key_switch_seconds, 0.0);
        // The age survives a restart (it is the key's, not the run's).
        drop(core);
        let mut core = open(&db, &key, &channels, T0 + 20_000);
        assert_eq!(
            core.gauges(T0 + 20_000).product_keys[0].key_age_seconds,
            10.0
        );

        // The carousel owes every member once per cycle: all ten before the
        // first step, about half after half a cycle.
        let cards: Vec<_> = (1..=10u32)
            .map(|id| {
                (
                    id,
                    [id as u8; 32],
                    proto::secret::Kek::from_bytes([id as u8; 32]),
                )
            })
            .collect();
        core.import_cards(cards, 1, secs(T0), secs(T0) + 86_400, T0 + 20_000)
            .unwrap();
        let b = core.emm_backlog(T0 + 20_000);
        assert_eq!(b.carousel_sections, 10);
        assert_eq!(b.carousel_bytes, 10 * ONE_PRODUCT_EMM_U_SECTION);
        assert_eq!((b.unsent_sections, b.unsent_bytes), (0, 0));
        core.tick(T0 + 20_000).unwrap();
        core.tick(T0 + 22_500).unwrap();
        let b = core.emm_backlog(T0 + 22_500);
        assert_eq!(b.carousel_sections, 5, "{b:?}");
        let mean = core.emm_u_bytes.div_ceil(core.emm_u_sections);
        assert!(core.emm_u_sections >= 5);
        assert_eq!(b.carousel_bytes, 5 * mean);
        // A stream that has sent nothing yet owes every EMM published
        // since it started.
        let mark = core.output().emm_mark(0);
        mark.set(0, T0 + 22_500);
        let b = core.emm_backlog(T0 + 22_500);
        assert_eq!(b.unsent_sections, core.output().emm_cursor());
        assert_eq!(b.unsent_bytes, core.emm_u_bytes);
        assert_eq!(b.bytes(), b.carousel_bytes + b.unsent_bytes);
        let expect = b.bytes() as f64 * 8.0 * 188.0 / 184.0 / 100_000.0;
        assert!((b.seconds() - expect).abs() < 1e-9);
        drop(mark);

        // ECM generation failing (the database refuses the ECM row): each
        // failing step counts once, and a good one adds nothing.
        core.conn
            .execute_batch(
                "CREATE TRIGGER no_ecms BEFORE INSERT ON ecms BEGIN SELECT RAISE(FAIL, 'test'); END",
            )
            .unwrap();
        let emms_before = core.output().emm_cursor();
        assert!(core.tick(T0 + 24_000).is_err());
        assert!(core.tick(T0 + 25_000).is_err());
        // The carousel went on meanwhile.
        assert!(core.output().emm_cursor() > emms_before);
        let metrics = core.metrics.clone();
        let failures = || {
            metrics
                .ecm_failures
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(failures(), 2);
        core.conn.execute_batch("DROP TRIGGER no_ecms").unwrap();
        core.tick(T0 + 26_000).unwrap();
        assert_eq!(failures(), 2);
    }

    #[test]
    fn schedule_renews_activates_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let key = proto::secret::Key32::random();
        init_database(&db, &MasterKey::new(&key), &OperatorKeys::generate(1), T0).unwrap();
        let channels = [ChannelConfig {
            name: "one".into(),
            service_id: 7,
            product: "basic".into(),
            ecm_pid: 0x100,
            emm_pid: 0x101,
            maturity: 0,
            input: None,
            output: None,
            clear_services: vec![],
        }];
        let mut core = open(&db, &key, &channels, T0);
        assert_eq!(core.products()[0].name, "basic");
        core.tick(T0).unwrap();
        let first = core.output().current_ecm(7).unwrap();
        assert_eq!((first.epoch, first.generation), (T0 / 1000, 1));

        // The scheduled renewal makes generation 2; ECMs switch to it one
        // cycle plus one period later.
        core.tick(T0 + 60_000).unwrap();
        let p = &core.products()[0];
        assert_eq!((p.generation, p.active_generation), (2, 1));
        assert_eq!(core.output().current_ecm(7).unwrap().generation, 1);
        core.tick(T0 + 66_000).unwrap();
        let e = core.output().current_ecm(7).unwrap();
        assert_eq!((e.generation, e.epoch), (2, (T0 + 66_000) / 1000));

        // A crash and a restart within the same epoch: the same ECM bytes
        // and the same CWs, even with other CWs in memory gone.
        drop(core);
        let mut core = open(&db, &key, &channels, T0 + 66_500);
        core.tick(T0 + 66_500).unwrap();
        let again = core.output().current_ecm(7).unwrap();
        assert_eq!(again.section, e.section);
        assert_eq!(again.cws, e.cws);

        // The clock goes back an hour: the newest epoch stays on the air.
        core.tick(T0 + 66_000 - 3_600_000).unwrap();
        assert_eq!(core.output().current_ecm(7).unwrap().epoch, e.epoch);
        drop(core);
        let mut core = open(&db, &key, &channels, T0 - 3_600_000);
        core.tick(T0 - 3_600_000).unwrap();
        assert_eq!(core.output().current_ecm(7).unwrap().section, e.section);

        // A longer crypto period that would take epochs back is refused.
        drop(core);
        let refused = Headend::open(
            &db,
            MasterKey::new(&key),
            1,
            Timing {
                period_ms: 10_000,
                renewal_ms: 60_000,
                cycle_ms: 5000,
            },
            &channels,
            CaOutput::new(),
            Arc::new(Metrics::default()),
            T0 + 70_000,
        );
        assert!(
            matches!(refused, Err(StateError::Config { ref field, .. }) if field == "crypto_period_ms")
        );
        // Another master key opens nothing.
        assert!(matches!(
            Headend::open(
                &db,
                MasterKey::new(&proto::secret::Key32::random()),
                1,
                Timing {
                    period_ms: 1000,
                    renewal_ms: 60_000,
                    cycle_ms: 5000
                },
                &channels,
                CaOutput::new(),
                Arc::new(Metrics::default()),
                T0 + 70_000,
            ),
            Err(StateError::Sealed(_))
        ));
    }
}

#[cfg(test)]
mod channel_tests {
    use super::*;
    use crate::config::ChannelConfig;

    const T0: u64 = 1_800_000_000_000;

    fn open(db: &Path, key: &proto::secret::Key32, channels: &[ChannelConfig]) -> Headend {
        Headend::open(
            db,
            MasterKey::new(key),
            1,
            Timing {
                period_ms: 1000,
                renewal_ms: 60_000,
                cycle_ms: 5000,
            },
            channels,
            CaOutput::new(),
            Arc::new(Metrics::default()),
            T0,
        )
        .unwrap()
    }

    fn new_channel(name: &str, service_id: u16, ecm_pid: u16) -> NewChannel {
        NewChannel {
            name: name.into(),
            service_id,
            product: ProductRef::Name("basic".into()),
            ecm_pid,
            emm_pid: 0x1F1,
            maturity: 0,
            input: None,
            output: None,
            clear_services: vec![],
        }
    }

    #[test]
    fn channels_change_and_go_and_headend_toml_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let key = proto::secret::Key32::random();
        init_database(&db, &MasterKey::new(&key), &OperatorKeys::generate(1), T0).unwrap();
        let from_file = [ChannelConfig {
            name: "file".into(),
            service_id: 7,
            product: "basic".into(),
            ecm_pid: 0x1F0,
            emm_pid: 0x1F1,
            maturity: 0,
            input: None,
            output: None,
            clear_services: vec![],
        }];
        let mut core = open(&db, &key, &from_file);
        assert_eq!(core.channels()[0].origin, ChannelOrigin::Config);
        let file = ChannelRef::parse("file");
        assert!(matches!(
            core.update_channel(&file, ChannelUpdate::default()),
            Err(StateError::Clash(m)) if m.to_string().contains("headend.toml")
        ));
        assert!(matches!(
            core.remove_channel(&ChannelRef::parse("7")),
            Err(StateError::Clash(_))
        ));

        // Through the API: checked against the file's channel, changed,
        // removed with its ECM.
        assert!(matches!(
            core.add_channel(new_channel("api", 8, 0x1F0), T0),
            Err(StateError::Clash(m)) if m.to_string().starts_with("ecm_pid:")
        ));
        core.add_channel(new_channel("api", 8, 0x1E0), T0).unwrap();
        core.add_channel(new_channel("stays", 9, 0x1E1), T0)
            .unwrap();
        core.tick(T0).unwrap();
        assert_eq!(core.output().current_ecm(8).unwrap().ecm_pid, 0x1E0);
        let api = ChannelRef::parse("0x8");
        let upd = ChannelUpdate {
            ecm_pid: Some(0x1E2),
            clear_services: Some(vec![3]),
            input: Some(None),
            ..ChannelUpdate::default()
        };
        let c = core.update_channel(&api, upd).unwrap();
        assert_eq!((c.ecm_pid, c.clear_services.as_slice()), (0x1E2, &[3][..]));
        core.tick(T0 + 10).unwrap();
        assert_eq!(
            core.output().current_ecm(8).unwrap().ecm_pid,
            0x1E2,
            "the new ECM PID at once"
        );
        let bad = ChannelUpdate {
            ecm_pid: Some(0x1F1),
            ..ChannelUpdate::default()
        };
        assert!(matches!(
            core.update_channel(&api, bad),
            Err(StateError::Invalid { .. })
        ));
        assert_eq!(core.channel(&api).unwrap().ecm_pid, 0x1E2, "unchanged");
        core.remove_channel(&ChannelRef::parse("api")).unwrap();
        assert!(core.output().current_ecm(8).is_none());
        core.tick(T0 + 2000).unwrap();
        assert!(core.output().current_ecm(8).is_none(), "its ECMs stopped");
        assert!(matches!(core.channel(&api), Err(StateError::Unknown(_))));
        drop(core);

        // headend.toml without its channel: gone from the database; the
        // API's stays, with what was changed.
        let core = open(&db, &key, &[]);
        let names: Vec<String> = core.channels().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["stays"]);
        assert_eq!(core.channels()[0].origin, ChannelOrigin::Api);
    }
}
