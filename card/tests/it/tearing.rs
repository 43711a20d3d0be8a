//! Anti-tearing: power is cut at every page write of every state-changing
//! command, with the page being written torn at several lengths. After
//! power returns, the card must hold exactly the old state or exactly the
//! new one, and the new one whenever the command reported success.

use card::eeprom::{MemEeprom, TearingEeprom, PAGE_SIZE};
use card::state::CardState;
use card::Applet;
use cardlink::{CardClient, ClientError, InProcessCard};
use proto::card::LifeCycle;
use proto::crypto::X25519Secret;
use proto::emm::EmmCommand;
use testkit::operator::*;

type TornCard = CardClient<InProcessCard<TearingEeprom>>;

fn power_on(mem: MemEeprom, cut: usize, torn: usize) -> TornCard {
    let mut c = CardClient::new(InProcessCard::new(
        Applet::power_on(TearingEeprom::new(mem, cut, torn)).unwrap(),
    ));
    c.select().unwrap();
    c
}

fn stored(mem: MemEeprom) -> CardState {
    Applet::power_on(mem).unwrap().state().clone()
}

/// Cuts power at every write point of `op`, run on a card whose EEPROM is
/// `mem`, and checks the state after each cut.
fn cut_everywhere(
    name: &str,
    mem: MemEeprom,
    session: Option<&X25519Secret>,
    op: impl Fn(&mut TornCard) -> Result<(), ClientError>,
    is_new: impl Fn(&CardState) -> bool,
) {
    let old = stored(mem.clone());
    assert!(
        !is_new(&old),
        "{name}: the old state must differ from the new"
    );
    let open = |c: &mut TornCard| {
        if let Some(rx) = session {
            let info = c.info().unwrap();
            c.establish_session(rx, &info).unwrap();
        }
    };
    // A clean run tells how many page writes the command makes.
    let mut c = power_on(mem.clone(), usize::MAX, 0);
    open(&mut c);
    op(&mut c).unwrap_or_else(|e| panic!("{name}: clean run failed: {e}"));
    let writes = usize::MAX - c.into_transport().applet.into_eeprom().writes_left;
    assert!(writes > 0, "{name} must write");
    let mut outcomes = (0, 0);
    for cut in 0..=writes {
        for torn in [0, 1, PAGE_SIZE / 2, PAGE_SIZE - 1] {
            let mut c = power_on(mem.clone(), cut, torn);
            open(&mut c);
            let ok = op(&mut c).is_ok();
            let after = stored(c.into_transport().applet.into_eeprom().mem);
            if ok {
                assert!(
                    is_new(&after),
                    "{name}: success at cut {cut}/{torn} but old state"
                );
                outcomes.1 += 1;
            } else if after == old {
                outcomes.0 += 1;
            } else {
                assert!(
                    is_new(&after),
                    "{name}: cut {cut}/{torn} left a mixed state"
                );
                outcomes.1 += 1;
            }
        }
    }
    // Both outcomes must have been reached, or the test proves nothing.
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "{name}: {outcomes:?}");
}

fn card_image(c: MemCard) -> MemEeprom {
    c.into_transport().applet.into_eeprom()
}

#[test]
fn personalize_and_lock_survive_power_cuts() {
    let op = Operator::new();
    let p = op.personalization(CARD);
    cut_everywhere(
        "personalize",
        MemEeprom::default(),
        None,
        |c| c.personalize(&p).map(drop),
        |s| {
            s.lifecycle == LifeCycle::PERSONALIZED
                && s.card_id == CARD
                && s.has_key()
                && s.operator_kex == p.operator_kex
                && s.operator_sig == p.operator_sig
        },
    );
    let mut c = blank_card();
    c.select().unwrap();
    c.personalize(&p).unwrap();
    let personalized = card_image(c);
    let before = stored(personalized.clone());
    cut_everywhere(
        "lock",
        personalized,
        None,
        |c| c.lock(),
        |s| {
            let mut unlocked = s.clone();
            unlocked.lifecycle = before.lifecycle;
            s.lifecycle == LifeCycle::LOCKED && unlocked == before
        },
    );
}

#[test]
fn emms_survive_power_cuts() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    let image = card_image(c);
    let old = stored(image.clone());

    // An EMM-U that renews the product, pairs and moves the clock.
    let rx = X25519Secret::random();
    let cmds = vec![
        op.entitle(T0, T0 + 60 * DAY),
        EmmCommand::Pair {
            receiver: rx.public(),
        },
    ];
    let emm = op.emm_u(CARD, &public, T0 + DAY, cmds);
    let mut clean = MemCard::new(InProcessCard::new(Applet::power_on(image.clone()).unwrap()));
    clean.select().unwrap();
    clean.process_emm(&emm).unwrap();
    let new = clean.transport().applet.state().clone();
    assert_ne!(new, old);
    cut_everywhere(
        "EMM-U",
        image.clone(),
        None,
        |c| c.process_emm(&emm),
        |s| *s == new,
    );

    // An EMM-G that blocks the card.
    let g = op.emm_g(T0 + 2 * DAY, vec![EmmCommand::BlockCards(vec![CARD])]);
    cut_everywhere(
        "EMM-G",
        image,
        None,
        |c| c.process_emm(&g),
        |s| s.entitlements.is_empty() && s.emm_g_seq == 1 && s.clock == T0 + 2 * DAY,
    );
}

#[test]
fn ecm_clock_update_survives_power_cuts() {
    let mut op = Operator::new();
    let (c, rx) = entitled_card(&mut op);
    let image = card_image(c);
    // Far enough ahead that the card persists its clock.
    let t = T0 + DAY;
    let ecm = op.ecm(PRODUCT, 5, t, [3; 16], [4; 16]);
    cut_everywhere(
        "ECM",
        image,
        Some(&rx),
        |c| {
            let cw = c.process_ecm(&ecm)?;
            assert_eq!(cw.cws.even.expose(), &[3; 16]);
            Ok(())
        },
        |s| s.clock == t,
    );
}

#[test]
fn sd_labels_and_sd_keys_survive_power_cuts() {
    use proto::emm::{SdKey, SdLabels};
    use proto::sd::{cover, CardAddress, Forest, SdAuthority};
    use proto::secret::{ProductKey, SdMaster};
    let mut op = Operator::new();
    let auth = SdAuthority::new(Forest::new(4).unwrap(), SdMaster::random());
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    let image = card_image(c);
    let a = CardAddress { tree: 0, leaf: 6 };
    let labels = op.emm_u(
        CARD,
        &public,
        T0 + 1,
        SdLabels::for_card(&auth.card_labels(a).unwrap()),
    );
    cut_everywhere(
        "SD_LABELS",
        image.clone(),
        None,
        |c| c.process_emm(&labels),
        |s| {
            s.sd.as_ref()
                .is_some_and(|sd| sd.complete() && sd.address == a)
        },
    );
    let mut c = MemCard::new(InProcessCard::new(Applet::power_on(image).unwrap()));
    c.select().unwrap();
    c.process_emm(&labels).unwrap();
    let with_labels = card_image(c);
    let cov = cover(auth.forest(), 16, &[3]);
    let k = SdKey::wrap(&auth, &cov, PRODUCT, 2, 1, &ProductKey::random());
    let g = op.emm_g(T0 + 2, k.payloads(T0 + 2).remove(0).commands);
    cut_everywhere(
        "SD_KEY",
        with_labels,
        None,
        |c| c.process_emm(&g),
        |s| s.entitlements[0].generations() == [1, 2] && s.clock == T0 + 2,
    );
}
