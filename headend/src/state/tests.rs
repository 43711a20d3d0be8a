//! The state's behaviour over a real database: the fast lane and pairing
//! with an in-process card, the scheduler (renewals, activations, ECMs
//! across restarts and a clock gone back, gauges), and live channels.

use super::carousel::{FAST_REPEAT_MS, FAST_WINDOW_MS};
use super::fields::rfc3339;
use super::fields::secs;
use super::products::generation_floor;
use super::status::ONE_PRODUCT_EMM_U_SECTION;
use super::*;
use crate::store::init_database;
use api::{
    ChannelOrigin, ChannelRef, ChannelUpdate, NewCard, NewChannel, NewPairing, NewProduct,
    NewSubscription, ProductRef,
};
use headend_engine::operator::OperatorKeys;

const T0: u64 = 1_800_000_000_000;

/// A new database for operator 1, and its master key.
fn fresh_db(dir: &Path) -> (std::path::PathBuf, proto::secret::Key32) {
    let db = dir.join("h.db");
    let key = proto::secret::Key32::random();
    init_database(&db, &MasterKey::new(&key), &OperatorKeys::generate(1), T0).unwrap();
    (db, key)
}

/// A `[[channels]]` table of headend.toml for service 7 of product
/// "basic", with no stream.
fn config_channel(name: &str, ecm_pid: u16, emm_pid: u16) -> crate::config::ChannelConfig {
    crate::config::ChannelConfig {
        name: name.into(),
        service_id: 7,
        product: "basic".into(),
        scrambler: Default::default(),
        ecm_pid,
        emm_pid,
        maturity: 0,
        input: None,
        output: None,
        clear_services: vec![],
    }
}

mod pairing {
    use super::*;
    use ::card::{Applet, MemEeprom};
    use cardlink::{CardClient, InProcessCard};
    use proto::apdu::StatusWord;

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

    pub(super) fn open(db: &Path, key: &proto::secret::Key32, now: u64) -> Headend {
        Headend::open(
            db,
            MasterKey::new(key),
            1,
            Timing {
                period_ms: 10_000,
                renewal_ms: 30 * 86_400_000,
                cycle_ms: 60_000,
                emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
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
        // The change, then (the first time in a run) the card's Subset
        // Difference labels, in two EMM-Us.
        let sent = emms_for_42(&core, &mut cursor);
        assert_eq!(sent.len(), 3);
        for emm in &sent {
            card.process_emm(emm).unwrap();
        }
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

mod scheduler {
    use super::*;
    use crate::config::ChannelConfig;

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
                emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
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
        let (db, key) = fresh_db(dir.path());
        let channels = [config_channel("one", 0x100, 0x101)];
        let mut core = open(&db, &key, &channels, T0);
        core.tick(T0).unwrap();
        let k = &core.gauges(T0 + 2_500).product_keys[0];
        assert_eq!((k.product, k.name.as_str()), (1, "basic"));
        assert_eq!(k.key_age_seconds, 2.5);
        assert_eq!(k.next_renewal_seconds, 57.5);
        assert!(!k.key_switch_pending);
        assert_eq!(k.key_switch_seconds, 0.0);

        // A renewal: the new generation's age starts again. Nobody holds
        // the product, so its delivery is empty: ECMs are planned to take
        // it at the first epoch 2 s (the margin) after it was made.
        core.rotate(None, "test", T0 + 10_000).unwrap();
        let k = &core.gauges(T0 + 11_000).product_keys[0];
        assert_eq!(k.key_age_seconds, 1.0);
        assert_eq!(k.next_renewal_seconds, 59.0);
        assert!(k.key_switch_pending);
        assert_eq!(k.key_switch_seconds, 2.0);
        let status = core.status(T0 + 11_000);
        let p = &status.products[0];
        assert_eq!(p.key_age_secs, 1);
        assert_eq!(p.next_renewal_secs, 59);
        assert!(p.key_switch_pending);
        assert_eq!(p.key_switch_secs, 2);
        let r = p.renewal.as_ref().unwrap();
        assert_eq!((r.state.as_str(), r.reason.as_str()), ("prepared", "test"));
        // On the air, delivered (counted when the output has it), then
        // active at the first epoch 2 s after the delivery.
        core.tick(T0 + 12_000).unwrap();
        assert_eq!(
            core.status(T0 + 12_000).products[0]
                .renewal
                .as_ref()
                .unwrap()
                .state,
            "delivering"
        );
        core.tick(T0 + 13_000).unwrap();
        let r = core.status(T0 + 13_000).products[0]
            .renewal
            .clone()
            .unwrap();
        assert!(r.delivered);
        assert_eq!(r.activate_at, rfc3339((T0 + 16_000) / 1000));
        core.tick(T0 + 15_999).unwrap();
        assert!(core.gauges(T0 + 15_999).product_keys[0].key_switch_pending);
        core.tick(T0 + 16_000).unwrap();
        assert!(core.status(T0 + 16_000).products[0].renewal.is_none());
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
        let (db, key) = fresh_db(dir.path());
        let channels = [config_channel("one", 0x100, 0x101)];
        let mut core = open(&db, &key, &channels, T0);
        assert_eq!(core.products()[0].name, "basic");
        core.tick(T0).unwrap();
        let first = core.output().current_ecm(7).unwrap();
        assert_eq!((first.epoch, first.generation), (T0 / 1000, 1));

        // The scheduled renewal makes a generation numbered by the clock;
        // ECMs switch to it once it is delivered (empty here: nobody holds
        // the product), at the first epoch 2 s later.
        core.tick(T0 + 60_000).unwrap();
        let g = generation_floor(T0 + 60_000);
        let p = &core.products()[0];
        assert_eq!((p.generation, p.active_generation), (g, 1));
        assert_eq!(core.output().current_ecm(7).unwrap().generation, 1);
        core.tick(T0 + 61_000).unwrap();
        core.tick(T0 + 63_000).unwrap();
        assert_eq!(core.output().current_ecm(7).unwrap().generation, 1);
        core.tick(T0 + 66_000).unwrap();
        let e = core.output().current_ecm(7).unwrap();
        assert_eq!((e.generation, e.epoch), (g, (T0 + 66_000) / 1000));

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
                emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
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
                    cycle_ms: 5000,
                    emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
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

mod channels {
    use super::*;
    use crate::config::ChannelConfig;

    fn open(db: &Path, key: &proto::secret::Key32, channels: &[ChannelConfig]) -> Headend {
        Headend::open(
            db,
            MasterKey::new(key),
            1,
            Timing {
                period_ms: 1000,
                renewal_ms: 60_000,
                cycle_ms: 5000,
                emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
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
        let (db, key) = fresh_db(dir.path());
        let from_file = [config_channel("file", 0x1F0, 0x1F1)];
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

mod subset_difference {
    use super::pairing::open;
    use super::*;
    use proto::emm::{Emm, EmmCommand};
    use proto::Codec;

    /// 400 cards hold the product; one is revoked. The planner takes
    /// Subset Difference (a few subsets against 399 EMM-Us), and the
    /// EMM-Gs on the air give every holder the pending key and the
    /// revoked card nothing.
    #[test]
    fn a_revocation_in_a_large_fleet_goes_by_subset_difference() {
        let dir = tempfile::tempdir().unwrap();
        let (db, key) = fresh_db(dir.path());
        let mut core = open(&db, &key, T0);
        let product = core
            .add_product(
                NewProduct {
                    id: None,
                    name: "basic".into(),
                },
                T0,
            )
            .unwrap()
            .id;
        let cards: Vec<_> = (1..=400u32)
            .map(|id| {
                let mut k = [id as u8; 32];
                k[31] = 0x40;
                (id, k, proto::secret::Kek::from_bytes([id as u8; 32]))
            })
            .collect();
        let start = secs(T0) - 10;
        core.import_cards(cards, product, start, start + 86_400 * 365, T0)
            .unwrap();
        let mut cursor = core.output().emm_cursor();
        core.revoke(77, T0 + 1_000).unwrap();
        let mut sd_sections = Vec::new();
        for t in (T0 + 1_000..T0 + 25_000).step_by(50) {
            core.tick(t).unwrap();
            let (got, next, _) = core.output().emm_sections_since(cursor, 100_000);
            cursor = next;
            sd_sections.extend(
                got.into_iter()
                    .filter(|e| e.section[0] == EMM_G_TABLE.0)
                    .map(|e| e.section[3..].to_vec()),
            );
            if let Some(r) = core.status(t).products[0].renewal.clone() {
                if r.state == "delivering" {
                    assert_eq!(r.method, "sd", "{r:?}");
                    assert!(r.subsets >= 1 && r.subsets <= 18 * 2, "{r:?}");
                }
            }
        }
        let p = &core.products()[0];
        assert_eq!(p.active_generation, p.generation, "activated by now");
        let generation = p.generation;
        let (_, want) = core.engine().product_key(product).unwrap();
        let want = want.expose().to_vec();
        let op = core.operator_public();
        let authority = core.sd.as_ref().unwrap().authority.clone();
        let forest = authority.forest();
        let labels_of = |card: u32| {
            let n = crate::store::sd::number_of(&core.conn, card).unwrap();
            authority.card_labels(forest.address(n).unwrap()).unwrap()
        };
        let open_for = |card: u32| -> Option<Vec<u8>> {
            let labels = labels_of(card);
            for s in &sd_sections {
                let emm = Emm::from_bytes(s).unwrap();
                let payload = emm.verify_global(&op.ed25519).unwrap();
                for c in payload.commands {
                    if let EmmCommand::SdKey(k) = c {
                        assert_eq!((k.product, k.generation), (product, generation));
                        if let Some(got) = k.open(&labels) {
                            return Some(got.unwrap().expose().to_vec());
                        }
                    }
                }
            }
            None
        };
        assert!(!sd_sections.is_empty(), "no SD EMM-G on the air");
        for holder in [1u32, 76, 78, 400] {
            assert_eq!(
                open_for(holder).as_deref(),
                Some(&want[..]),
                "card {holder}"
            );
        }
        assert_eq!(
            open_for(77),
            None,
            "the revoked card opened the SD delivery"
        );
    }
}
