//! `smartcard provision`: the card factory's tool, and the support desk's.
//!
//! ```text
//! smartcard provision --operator operator.json --card-id N [--reader NAME]
//!     [--count N [--jsonl]] [--timeout SECONDS] [--out FILE]
//!     [--register URL [--token-file FILE]]
//! ```
//!
//! For each card it selects the Iodoform application, checks that the
//! card is blank, writes the operator's public keys and the card id
//! (PERSONALIZE, which makes the card generate its X25519 key pair inside
//! itself and return the public half), locks the card, reads it back, and
//! writes the card record `{"card_id", "public_key", "operator_id"}`: the
//! one input the subscriber system needs, and the body of the headend's
//! `POST /api/v1/cards`.
//!
//! With `--count N` it provisions N cards with consecutive ids, one after
//! the other in the same reader (or in any reader, without `--reader`): it
//! waits for each card to be inserted and, but for the last, removed.
//! Records are written, and registered, as each card is done, so that a
//! batch that stops half-way keeps the records of the cards it locked.
//!
//! It never provisions a card twice: a card that is not blank is refused
//! and left untouched. Nothing secret passes through it: the card's
//! private key never leaves the card.

use super::card::{self, usage};
use anyhow::Context as _;
use cardlink::pcsc::ReaderChoice;
use cardlink::CardClient;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::card::{LifeCycle, APPLET_VERSION};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that holds the admin API token when no
/// `--token-file` is given.
pub const TOKEN_ENV: &str = "IODOFORM_TOKEN";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The operator's public info (`operator.json`, written by `headend init`).
    #[arg(long, value_name = "FILE")]
    pub operator: PathBuf,
    /// The id to give the card; with --count, the first of consecutive ids.
    #[arg(long, value_name = "N")]
    pub card_id: u32,
    /// Batch mode: provision N cards in turn, with ids from --card-id on.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,
    /// The reader to use: its name, or part of it. Default: the first
    /// reader that holds a card.
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,
    /// How long to wait for each card to be inserted, or removed.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = card::parse_timeout)]
    pub timeout: Duration,
    /// Write the card records to FILE (which must not exist yet) instead
    /// of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// With --count: one JSON record per line instead of a JSON array.
    #[arg(long, requires = "count")]
    pub jsonl: bool,
    /// Register each card with the headend's admin API at URL
    /// (`POST URL/api/v1/cards`), e.g. http://127.0.0.1:7480.
    #[arg(long, value_name = "URL")]
    pub register: Option<String>,
    /// The admin API's bearer token (`admin.token` of `headend init`);
    /// default: the IODOFORM_TOKEN environment variable.
    #[arg(long, value_name = "FILE", requires = "register")]
    pub token_file: Option<PathBuf>,
}

/// The operator's public info, as `headend init` writes it.
pub use proto::operator::OperatorPublic as OperatorInfo;

/// Reads and checks the operator file; every failure is a [`card::Usage`]
/// error.
pub fn load_operator(path: &Path) -> anyhow::Result<OperatorInfo> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => usage!("cannot read operator file {}: {e}", path.display()),
    };
    let op: OperatorInfo = match serde_json::from_str(&text) {
        Ok(o) => o,
        Err(e) => usage!(
            "operator file {} is not the operator's public info from `headend init`: {e}",
            path.display()
        ),
    };
    if op.x25519 == [0; 32] || op.ed25519 == [0; 32] {
        usage!("operator file {} holds an all-zero key", path.display());
    }
    Ok(op)
}

/// What the subscriber system learns about a card: the body of
/// `POST /api/v1/cards`, the API's own type.
pub type CardRecord = api::NewCard;

/// The card ids of a run, checked: none may be 0 (no card) or the EMM-G
/// address, and the range must not wrap.
fn card_ids(first: u32, count: u32) -> anyhow::Result<std::ops::RangeInclusive<u32>> {
    let last = match first.checked_add(count - 1) {
        Some(l) => l,
        None => usage!("--card-id {first} with --count {count} runs past the largest card id"),
    };
    if first == 0 {
        usage!("--card-id: 0 is not a card id (ids start at 1)");
    }
    if (first..=last).contains(&proto::emm::GLOBAL_ADDRESS) {
        usage!(
            "--card-id: {:#010X} is the address of EMM-Gs, not a card id",
            proto::emm::GLOBAL_ADDRESS
        );
    }
    Ok(first..=last)
}

/// How the records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One card: one JSON object.
    Single,
    /// A batch: a JSON array, one record per line.
    Array,
    /// A batch: one JSON object per line.
    Lines,
}

/// The record sink. Records go out, and are flushed, one by one; a batch
/// array is closed by [`Records::finish`] even when the batch fails.
#[derive(Debug)]
pub struct Records<W: Write> {
    out: W,
    format: Format,
    written: usize,
}

impl<W: Write> Records<W> {
    pub fn new(out: W, format: Format) -> Self {
        Records {
            out,
            format,
            written: 0,
        }
    }

    pub fn write(&mut self, r: &CardRecord) -> io::Result<()> {
        let json = serde_json::to_string(r).map_err(io::Error::other)?;
        match self.format {
            Format::Single | Format::Lines => writeln!(self.out, "{json}")?,
            Format::Array => {
                let sep = if self.written == 0 { "[\n" } else { ",\n" };
                write!(self.out, "{sep}  {json}")?;
            }
        }
        self.written += 1;
        self.out.flush()
    }

    /// How many records were written.
    pub fn written(&self) -> usize {
        self.written
    }

    pub fn finish(&mut self) -> io::Result<()> {
        if self.format == Format::Array {
            let end = if self.written == 0 { "[]\n" } else { "\n]\n" };
            self.out.write_all(end.as_bytes())?;
        }
        self.out.flush()
    }

    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `--out FILE`, opened at the first record, so that a run that locks no
/// card leaves no file; it must not exist, so that no earlier record is
/// overwritten.
#[derive(Debug)]
struct LazyFile {
    path: PathBuf,
    file: Option<File>,
}

impl Write for LazyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            let f = File::options()
                .write(true)
                .create_new(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        self.file.as_mut().map_or(Ok(0), |f| f.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush().and_then(|()| f.sync_data()),
            None => Ok(()),
        }
    }
}

/// The admin API client for `--register`.
#[derive(Debug)]
pub struct Registrar {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Registrar {
    /// Checks the URL and finds the token; every failure is a
    /// [`card::Usage`] error.
    pub fn new(url: &str, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let Some(host) = base.strip_prefix("http://") else {
            usage!(
                "--register {url:?}: the admin API is plain HTTP on loopback; give an http:// URL"
            );
        };
        if host.is_empty() || host.contains('/') {
            usage!("--register {url:?}: give the API's root, like http://127.0.0.1:7480");
        }
        let token = match token_file {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => t.trim().to_string(),
                Err(e) => usage!("cannot read token file {}: {e}", p.display()),
            },
            None => std::env::var(TOKEN_ENV)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            usage!("--register needs the admin token: give --token-file FILE or set {TOKEN_ENV}");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            usage!("the admin token must be printable ASCII without spaces");
        }
        Ok(Registrar {
            base,
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        })
    }

    /// `POST {URL}/api/v1/cards`; returns the card as the headend
    /// registered it (`None` if its answer is not one: the card is
    /// registered all the same).
    pub fn register(&self, r: &CardRecord) -> anyhow::Result<Option<api::CardView>> {
        let url = format!("{}{}", self.base, api::path::CARDS);
        let resp = self
            .agent
            .post(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_json(r);
        match resp {
            Ok(ok) => Ok(ok.into_json::<api::CardView>().ok()),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.status_text().to_string();
                let why = resp
                    .into_json::<api::ErrorBody>()
                    .map(|e| e.error)
                    .unwrap_or(text);
                anyhow::bail!("the headend at {} answered {code}: {why}", self.base)
            }
            Err(ureq::Error::Transport(t)) => {
                Err(super::card::Coded {
                    code: ::cli::exit::UNAVAILABLE,
                    message: format!(
                        "cannot reach the headend at {}: {t} (is `headend run` up, and is --register its admin API address?)",
                        self.base
                    ),
                }
                .into())
            }
        }
    }
}

/// Personalizes and locks the blank card behind `client`, and reads it
/// back. A card that is not blank is refused before anything is written.
pub fn provision_card<T: cardlink::CardTransport>(
    client: &mut CardClient<T>,
    reader: &str,
    op: &OperatorInfo,
    card_id: u32,
) -> anyhow::Result<CardRecord> {
    match client.select() {
        Ok(()) => {}
        Err(e) if e.status() == Some(proto::apdu::StatusWord::FILE_NOT_FOUND) => {
            anyhow::bail!("the card in {reader} is not an Iodoform card (no Iodoform application)")
        }
        Err(e) => return Err(e).context(format!("cannot select the card in {reader}")),
    }
    let before = client
        .info()
        .with_context(|| format!("cannot read the card in {reader}"))?;
    if before.applet_version != APPLET_VERSION {
        anyhow::bail!(
            "the card in {reader} runs applet version {}; this tool speaks version {APPLET_VERSION}",
            before.applet_version
        );
    }
    match before.state {
        LifeCycle::BLANK => {}
        LifeCycle::LOCKED => anyhow::bail!(
            "the card in {reader} is already provisioned and locked (card id {}); a card is provisioned only once",
            before.card_id
        ),
        LifeCycle::PERSONALIZED => anyhow::bail!(
            "the card in {reader} is already personalized (card id {}) but not locked; a card is provisioned only once",
            before.card_id
        ),
        other => anyhow::bail!("the card in {reader} is in an unknown life-cycle state {other:?}"),
    }
    let p = op.personalization(card_id);
    let public = client
        .personalize(&p)
        .with_context(|| format!("cannot personalize the card in {reader}"))?;
    client
        .lock()
        .with_context(|| format!("card {card_id} is personalized but could not be locked"))?;
    let after = client
        .info()
        .with_context(|| format!("card {card_id} is locked but could not be read back"))?;
    let kept = after.state == LifeCycle::LOCKED
        && after.card_id == card_id
        && after.operator_id == op.operator_id
        && after.public_key == public
        && after.operator_kex == op.x25519
        && after.operator_sig == op.ed25519;
    if !kept {
        anyhow::bail!("card {card_id} does not read back what was written to it: {after:?}");
    }
    Ok(CardRecord::new(card_id, &public, op.operator_id))
}

/// Messages for the person at the reader: above a progress bar on a
/// terminal, plain lines on stderr otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(count: Option<u32>) -> Self {
        let bar = count.map(|n| {
            let bar = ProgressBar::with_draw_target(Some(n.into()), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} cards  {elapsed}  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar }
    }

    fn drawn(&self) -> bool {
        self.bar.as_ref().is_some_and(|b| !b.is_hidden())
    }

    /// A prompt: the bar's message, or a line in batch mode without one.
    fn prompt(&self, msg: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.set_message(msg),
            Some(_) => eprintln!("{msg}"),
            None => {}
        }
    }

    /// A line to keep, in batch mode.
    fn note(&self, msg: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(msg),
            Some(_) => eprintln!("{msg}"),
            None => {}
        }
    }

    fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            if self.drawn() {
                b.finish_and_clear();
            }
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Everything that can be checked without a card is checked first.
    let op = load_operator(&args.operator)?;
    let ids = card_ids(args.card_id, args.count.unwrap_or(1))?;
    let registrar = match &args.register {
        Some(url) => Some(Registrar::new(url, args.token_file.as_deref())?),
        None => None,
    };
    if let Some(p) = &args.out {
        if p.exists() {
            usage!(
                "--out {}: the file exists; card records are never overwritten",
                p.display()
            );
        }
    }
    let format = match (args.count, args.jsonl) {
        (None, _) => Format::Single,
        (Some(_), false) => Format::Array,
        (Some(_), true) => Format::Lines,
    };
    let sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(LazyFile {
            path: p.clone(),
            file: None,
        }),
        None => Box::new(io::stdout().lock()),
    };
    let mut records = Records::new(sink, format);
    let choice = ReaderChoice::from_option(args.reader.as_deref());
    card::check_reader(&choice)?;

    let progress = Progress::new(args.count);
    let total = ids.clone().count();
    let result = (|| -> anyhow::Result<()> {
        for (i, id) in ids.enumerate() {
            let n = i + 1;
            progress.prompt(format!(
                "card {n} of {total}: insert a blank card in {} (card id {id})",
                card::place(&choice)
            ));
            let transport = card::wait_for_card(&choice, args.timeout)?;
            let reader = transport.reader();
            let mut client = CardClient::new(transport);
            let record = provision_card(&mut client, &reader, &op, id)?;
            if let Err(e) = records.write(&record) {
                // The card is locked now: its record must not be lost.
                eprintln!(
                    "smartcard: record of card {id}: {}",
                    serde_json::to_string(&record).unwrap_or_default()
                );
                return Err(e).context(format!(
                    "card {id} is provisioned, but its record could not be written"
                ));
            }
            if let Some(r) = &registrar {
                let view = r.register(&record).with_context(|| {
                    format!("card {id} is provisioned and its record written, but registering it failed (register it later with `headend card add --from`)")
                })?;
                // Its Subset Difference labels, sealed to it by the
                // headend: given now, so that it never depends on being
                // on the air when they are broadcast.
                for emm in view.map(|v| v.sd_labels).unwrap_or_default() {
                    let emm = hex::decode(&emm).with_context(|| {
                        format!("card {id}: the headend sent labels that are not hex")
                    })?;
                    client.process_emm(&emm).with_context(|| {
                        format!("card {id} is registered, but refused its Subset Difference labels (it gets them over the air with its first subscription)")
                    })?;
                }
            }
            progress.inc();
            progress.note(format!(
                "card {id} provisioned in {reader}: public key {}",
                record.public_key
            ));
            if n < total {
                progress.prompt(format!(
                    "card {n} of {total} done: remove card {id} from {reader}"
                ));
                let removed = client
                    .transport()
                    .wait_for_removal(args.timeout)
                    .map_err(card::explain)?;
                if !removed {
                    anyhow::bail!(
                        "card {id} was not removed from {reader} within {}",
                        card::seconds(args.timeout)
                    );
                }
            }
        }
        Ok(())
    })();
    progress.done();
    // A batch that failed still closes its array over the cards it did;
    // one that did none writes nothing, and leaves no --out file behind.
    let finished = if records.written() > 0 {
        records.finish().context("cannot finish the card records")
    } else {
        Ok(())
    };
    result?;
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u32) -> CardRecord {
        CardRecord::new(id, &[id as u8; 32], 1)
    }

    #[test]
    fn record_json_is_what_the_headend_takes() {
        let json = serde_json::to_value(record(5)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"card_id": 5, "public_key": hex::encode([5u8; 32]), "operator_id": 1})
        );
    }

    #[test]
    fn formats() {
        let write = |format, n: u32| {
            let mut r = Records::new(Vec::new(), format);
            for id in 1..=n {
                r.write(&record(id)).unwrap();
            }
            r.finish().unwrap();
            String::from_utf8(r.into_inner()).unwrap()
        };
        let one = write(Format::Single, 1);
        assert_eq!(serde_json::from_str::<CardRecord>(&one).unwrap(), record(1));
        let arr = write(Format::Array, 3);
        let back: Vec<CardRecord> = serde_json::from_str(&arr).unwrap();
        assert_eq!(back, vec![record(1), record(2), record(3)]);
        assert_eq!(arr.lines().count(), 5);
        assert_eq!(write(Format::Array, 0), "[]\n");
        let lines = write(Format::Lines, 2);
        let back: Vec<CardRecord> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, vec![record(1), record(2)]);
    }

    #[test]
    fn card_id_ranges() {
        assert_eq!(card_ids(1, 1).unwrap(), 1..=1);
        assert_eq!(card_ids(1000, 3).unwrap(), 1000..=1002);
        let usage = |r: anyhow::Result<_>| r.unwrap_err().downcast_ref::<card::Usage>().is_some();
        assert!(usage(card_ids(0, 1)));
        assert!(usage(card_ids(u32::MAX, 1)));
        assert!(usage(card_ids(u32::MAX - 1, 2)));
        assert!(usage(card_ids(u32::MAX - 1, 3)));
        assert_eq!(
            card_ids(u32::MAX - 1, 1).unwrap(),
            u32::MAX - 1..=u32::MAX - 1
        );
    }

    #[test]
    fn operator_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("operator.json");
        let good = serde_json::json!({
            "operator_id": 3,
            "x25519": hex::encode([1u8; 32]),
            "ed25519": hex::encode([2u8; 32]),
        });
        std::fs::write(&p, good.to_string()).unwrap();
        let op = load_operator(&p).unwrap();
        assert_eq!(op.operator_id, 3);
        assert_eq!(op.personalization(9).operator_sig, [2; 32]);
        let is_usage = |p: &Path| {
            load_operator(p)
                .unwrap_err()
                .downcast_ref::<card::Usage>()
                .is_some()
        };
        assert!(is_usage(&dir.path().join("missing.json")));
        std::fs::write(&p, r#"{"operator_id": 3, "x25519": "00", "ed25519": "00"}"#).unwrap();
        assert!(is_usage(&p));
        std::fs::write(&p, "not json").unwrap();
        assert!(is_usage(&p));
    }

    #[test]
    fn registrar_needs_http_and_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("admin.token");
        std::fs::write(&tok, "abc123\n").unwrap();
        let r = Registrar::new("http://127.0.0.1:7480/", Some(&tok)).unwrap();
        assert_eq!(r.base, "http://127.0.0.1:7480");
        assert_eq!(r.token, "abc123");
        let usage = |url: &str, t: Option<&Path>| {
            Registrar::new(url, t)
                .unwrap_err()
                .downcast_ref::<card::Usage>()
                .is_some()
        };
        assert!(usage("https://127.0.0.1:7480", Some(&tok)));
        assert!(usage("127.0.0.1:7480", Some(&tok)));
        assert!(usage("http://127.0.0.1:7480/api", Some(&tok)));
        assert!(usage(
            "http://127.0.0.1:7480",
            Some(&dir.path().join("none"))
        ));
        std::fs::write(&tok, "\n").unwrap();
        assert!(usage("http://127.0.0.1:7480", Some(&tok)));
    }
}
