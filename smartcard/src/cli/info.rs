//! `smartcard info [--reader NAME] [--json]`: what a card says about
//! itself (GET INFO and LIST ENTITLEMENTS), for the support desk. It
//! only reads: nothing on the card changes, and no session is opened.

use super::card;
use cardlink::pcsc::ReaderChoice;
use cardlink::CardClient;
use proto::card::{CardInfo, EntitlementRecord, LifeCycle};
use serde_json::{json, Value};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The reader to use: its name, or part of it. Default: the first
    /// reader that holds a card.
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,
    /// How long to wait for a card to be inserted (0: it must be there).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = card::parse_timeout)]
    pub timeout: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Unix seconds as RFC 3339 UTC, or `None` past what a date can say.
pub fn utc(secs: u64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
    t.format(&Rfc3339).ok()
}

/// Unix seconds for people: `2026-12-01 00:00:00 UTC`.
fn human(secs: u64) -> String {
    match utc(secs) {
        Some(s) => s.replacen('T', " ", 1).replace('Z', " UTC"),
        None => format!("{secs} (Unix seconds)"),
    }
}

pub fn state_name(s: LifeCycle) -> String {
    match s {
        LifeCycle::BLANK => "blank".into(),
        LifeCycle::PERSONALIZED => "personalized".into(),
        LifeCycle::LOCKED => "locked".into(),
        other => format!("unknown ({:#04x})", other.0),
    }
}

/// The JSON view of a card.
pub fn to_json(reader: &str, info: &CardInfo, ents: &[EntitlementRecord]) -> Value {
    let blank = info.state == LifeCycle::BLANK;
    let key = |k: &[u8; 32]| {
        if blank {
            Value::Null
        } else {
            Value::String(hex::encode(k))
        }
    };
    json!({
        "reader": reader,
        "card_id": if blank { Value::Null } else { info.card_id.into() },
        "state": state_name(info.state),
        "applet_version": info.applet_version,
        "public_key": key(&info.public_key),
        "operator_id": if blank { Value::Null } else { info.operator_id.into() },
        "operator_x25519": key(&info.operator_kex),
        "operator_ed25519": key(&info.operator_sig),
        // Zero: the card has seen no authenticated time yet.
        "clock": if info.clock == 0 { None } else { utc(info.clock) },
        "clock_unix": info.clock,
        "emm_u_seq": info.emm_u_seq,
        "emm_g_seq": info.emm_g_seq,
        "paired_receiver": info.paired_receiver.map(hex::encode),
        "entitlements": ents.iter().map(|e| json!({
            "product": e.product,
            "generation": e.generation,
            "start": utc(e.start),
            "end": utc(e.end),
            "start_unix": e.start,
            "end_unix": e.end,
        })).collect::<Vec<_>>(),
    })
}

/// The table view of a card.
pub fn to_table(reader: &str, info: &CardInfo, ents: &[EntitlementRecord]) -> String {
    let blank = info.state == LifeCycle::BLANK;
    let dash = || "-".to_string();
    let rows = [
        ("reader", reader.to_string()),
        (
            "card id",
            if blank {
                dash()
            } else {
                info.card_id.to_string()
            },
        ),
        ("state", state_name(info.state)),
        (
            "public key",
            if blank {
                dash()
            } else {
                hex::encode(info.public_key)
            },
        ),
        (
            "operator id",
            if blank {
                dash()
            } else {
                info.operator_id.to_string()
            },
        ),
        (
            "clock",
            if info.clock == 0 {
                "not set".into()
            } else {
                human(info.clock)
            },
        ),
        ("EMM-U sequence", info.emm_u_seq.to_string()),
        ("EMM-G sequence", info.emm_g_seq.to_string()),
        (
            "pairing",
            match &info.paired_receiver {
                Some(k) => format!("paired with receiver {}", hex::encode(k)),
                None => "not paired".into(),
            },
        ),
        ("entitlements", ents.len().to_string()),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<16}{v}\n"));
    }
    if !ents.is_empty() {
        out.push('\n');
        out.push_str(&format!(
            "{:<10}  {:<10}  {:<23}  {:<23}\n",
            "product", "generation", "start", "end"
        ));
        for e in ents {
            out.push_str(&format!(
                "{:<10}  {:<10}  {:<23}  {:<23}\n",
                e.product,
                e.generation,
                human(e.start),
                human(e.end)
            ));
        }
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let choice = ReaderChoice::from_option(args.reader.as_deref());
    card::check_reader(&choice)?;
    let transport = card::wait_for_card(&choice, args.timeout)?;
    let reader = transport.reader();
    let mut client = CardClient::new(transport);
    match client.select() {
        Ok(()) => {}
        Err(e) if e.status() == Some(proto::apdu::StatusWord::FILE_NOT_FOUND) => {
            anyhow::bail!("the card in {reader} is not an Iodoform card (no Iodoform application)")
        }
        Err(e) => anyhow::bail!("cannot select the card in {reader}: {e}"),
    }
    let info = client
        .info()
        .map_err(|e| anyhow::anyhow!("cannot read the card in {reader}: {e}"))?;
    let ents = if info.state == LifeCycle::BLANK {
        Vec::new()
    } else {
        client.list_entitlements().map_err(|e| {
            anyhow::anyhow!("cannot list the entitlements of the card in {reader}: {e}")
        })?
    };
    // Leave the card as it is: another application may be using it.
    let _ = client
        .into_transport()
        .disconnect(pcsc::Disposition::LeaveCard);
    if args.json {
        ::cli::outln!("{}", to_json(&reader, &info, &ents));
    } else {
        ::cli::out(&to_table(&reader, &info, &ents));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> (CardInfo, Vec<EntitlementRecord>) {
        let info = CardInfo {
            applet_version: 1,
            state: LifeCycle::LOCKED,
            card_id: 42,
            operator_id: 1,
            public_key: [0xAB; 32],
            operator_kex: [1; 32],
            operator_sig: [2; 32],
            clock: 1_764_547_205,
            emm_u_seq: 3,
            emm_g_seq: 0,
            paired_receiver: Some([0xCD; 32]),
            entitlements: 1,
        };
        let ents = vec![EntitlementRecord {
            product: 7,
            generation: 1,
            start: 1_764_547_200,
            end: u64::MAX,
        }];
        (info, ents)
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_764_547_200).unwrap(), "2025-12-01T00:00:00Z");
        assert_eq!(utc(u64::MAX), None);
        assert_eq!(human(1_764_547_205), "2025-12-01 00:00:05 UTC");
        assert_eq!(human(u64::MAX), "18446744073709551615 (Unix seconds)");
    }

    #[test]
    fn json_view() {
        let (info, ents) = card();
        let v = to_json("R", &info, &ents);
        assert_eq!(v["card_id"], 42);
        assert_eq!(v["state"], "locked");
        assert_eq!(v["public_key"], hex::encode([0xAB; 32]));
        assert_eq!(v["clock"], "2025-12-01T00:00:05Z");
        assert_eq!(v["paired_receiver"], hex::encode([0xCD; 32]));
        assert_eq!(v["entitlements"][0]["product"], 7);
        assert_eq!(v["entitlements"][0]["start"], "2025-12-01T00:00:00Z");
        assert_eq!(v["entitlements"][0]["end"], Value::Null);
        assert_eq!(v["entitlements"][0]["end_unix"], u64::MAX);
        let blank = CardInfo {
            state: LifeCycle::BLANK,
            ..info
        };
        let v = to_json("R", &blank, &[]);
        assert_eq!(v["card_id"], Value::Null);
        assert_eq!(v["public_key"], Value::Null);
    }

    #[test]
    fn table_view() {
        let (info, ents) = card();
        let t = to_table("Virtual PCD 00 00", &info, &ents);
        assert!(t.contains("card id         42\n"), "{t}");
        assert!(t.contains("state           locked\n"), "{t}");
        assert!(
            t.contains("clock           2025-12-01 00:00:05 UTC\n"),
            "{t}"
        );
        assert!(
            t.contains("7           1           2025-12-01 00:00:00 UTC"),
            "{t}"
        );
        assert!(t.contains(&format!("paired with receiver {}", hex::encode([0xCD; 32]))));
    }
}
