//! Property tests for every codec and parser in `proto`:
//!
//! * arbitrary bytes never make a parser panic;
//! * every valid value survives encode → decode unchanged;
//! * a sealed or signed message that is changed in any way (one bit
//!   flipped, one byte replaced, truncated at any length, bytes appended)
//!   is refused: as malformed, or by authentication or signature, never
//!   accepted with other content.
//!
//! Case counts are kept moderate so that the file runs in a few seconds in
//! a debug build; CI runs it on every push.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proto::apdu::{Cla, Command, Ins, Response, StatusWord};
use proto::card::{
    open_control_words, seal_control_words, CardInfo, ControlWords, EntitlementPage,
    EntitlementRecord, LifeCycle, Personalization, CW_REPLY_LEN, ENTITLEMENTS_PER_PAGE,
};
use proto::codec::Codec;
use proto::crypto::{Sealer, SessionInit, SigningKey};
use proto::ecm::{Ecm, EcmHeader, EcmPayload, ECM_BODY_LEN, ECM_LEN};
use proto::emm::{Emm, EmmCommand, EmmKind, EmmPayload, Entitle, GLOBAL_ADDRESS, MAX_BODY_LEN};
use proto::secret::{ControlWord, CwPair, EcmKey, Kek, ProductKey, Seed, SessionKey};
use proto::Reader;
use std::sync::OnceLock;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a crypto failure rarely helps and can take long.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

/// The operator signing key used for EMM-G properties (Ed25519 is
/// deterministic, so one key is as good as many).
fn operator() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed(Seed::from_bytes([0x5A; 32])).unwrap())
}

// ---------------------------------------------------------------- strategies

fn arb_entitle() -> impl Strategy<Value = Entitle> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(product, generation, a, b, key)| Entitle {
            product,
            generation,
            start: a.min(b),
            end: a.max(b),
            key: ProductKey::from_bytes(key),
        })
}

fn arb_command() -> impl Strategy<Value = EmmCommand> {
    prop_oneof![
        arb_entitle().prop_map(EmmCommand::Entitle),
        any::<[u8; 32]>().prop_map(|receiver| EmmCommand::Pair { receiver }),
        Just(EmmCommand::Unpair),
        any::<u32>().prop_map(|product| EmmCommand::RemoveProduct { product }),
        // One command's length byte holds at most 63 card ids.
        vec(any::<u32>(), 0..=63).prop_map(EmmCommand::BlockCards),
    ]
}

fn arb_payload() -> impl Strategy<Value = EmmPayload> {
    (any::<u64>(), vec(arb_command(), 0..6))
        .prop_map(|(time, commands)| EmmPayload { time, commands })
}

fn arb_kind() -> impl Strategy<Value = EmmKind> {
    prop_oneof![Just(EmmKind::UNIQUE), Just(EmmKind::GLOBAL)]
}

fn arb_emm() -> impl Strategy<Value = Emm> {
    (arb_kind(), any::<u32>(), any::<u64>(), 0usize..400).prop_flat_map(
        |(kind, address, seq, extra)| {
            let min = if kind == EmmKind::UNIQUE { 16 } else { 64 } + 8;
            vec(any::<u8>(), min + extra).prop_map(move |body| Emm {
                kind,
                address,
                seq,
                body,
            })
        },
    )
}

fn arb_ecm_header() -> impl Strategy<Value = EcmHeader> {
    (any::<u32>(), any::<u32>(), any::<u64>(), any::<u16>()).prop_map(
        |(product, generation, epoch, service)| EcmHeader {
            product,
            generation,
            epoch,
            service,
        },
    )
}

fn arb_ecm_payload() -> impl Strategy<Value = EcmPayload> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(|(e, o, time, maturity)| EcmPayload {
            cws: CwPair {
                even: ControlWord::from_bytes(e),
                odd: ControlWord::from_bytes(o),
            },
            time,
            maturity,
        })
}

fn arb_control_words() -> impl Strategy<Value = ControlWords> {
    (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u64>()).prop_map(|(e, o, time)| ControlWords {
        cws: CwPair {
            even: ControlWord::from_bytes(e),
            odd: ControlWord::from_bytes(o),
        },
        time,
    })
}

fn arb_le() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        Just(None),
        (1usize..=256).prop_map(Some),
        (1usize..=65536).prop_map(Some),
        Just(Some(256)),
        Just(Some(257)),
        Just(Some(65536)),
    ]
}

fn arb_command_apdu() -> impl Strategy<Value = Command> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        prop_oneof![
            vec(any::<u8>(), 0..300),
            vec(any::<u8>(), 250..600),
            vec(any::<u8>(), 4000..4100),
        ],
        arb_le(),
    )
        .prop_map(|(cla, ins, p1, p2, data, le)| Command::new(Cla(cla), Ins(ins), p1, p2, data, le))
}

fn arb_record() -> impl Strategy<Value = EntitlementRecord> {
    (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(product, generation, start, end)| EntitlementRecord {
            product,
            generation,
            start,
            end,
        },
    )
}

fn arb_card_info() -> impl Strategy<Value = CardInfo> {
    (
        (any::<u8>(), any::<u8>(), any::<u32>(), any::<u32>()),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>()),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (proptest::option::of(any::<[u8; 32]>()), any::<u8>()),
    )
        .prop_map(
            |(
                (applet_version, state, card_id, operator_id),
                (public_key, operator_kex, operator_sig),
                (clock, emm_u_seq, emm_g_seq),
                (paired_receiver, entitlements),
            )| CardInfo {
                applet_version,
                state: LifeCycle(state),
                card_id,
                operator_id,
                public_key,
                operator_kex,
                operator_sig,
                clock,
                emm_u_seq,
                emm_g_seq,
                paired_receiver,
                entitlements,
            },
        )
}

/// A change to a valid message.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Replace(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Replace(i, x)),
        any::<Index>().prop_map(Mutation::Truncate),
        vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
    ]
}

/// Applies `m`; the result always differs from `orig`.
fn mutate(orig: &[u8], m: &Mutation) -> Vec<u8> {
    let mut v = orig.to_vec();
    match m {
        Mutation::FlipBit(i, b) => v[i.index(orig.len())] ^= 1 << b,
        // XOR with a non-zero byte: the byte always changes.
        Mutation::Replace(i, x) => v[i.index(orig.len())] ^= x,
        Mutation::Truncate(i) => v.truncate(i.index(orig.len())),
        Mutation::Append(extra) => v.extend_from_slice(extra),
    }
    assert_ne!(v, orig);
    v
}

/// What a card would conclude from `bytes`: `Some(payload)` only if the EMM
/// parses and authenticates under the card's KEK or the operator's key.
fn card_accepts_emm(bytes: &[u8], kek: &Kek) -> Option<EmmPayload> {
    let emm = Emm::from_bytes(bytes).ok()?;
    match emm.kind {
        EmmKind::UNIQUE => emm.open_unique(kek).ok(),
        _ => emm.verify_global(&operator().public()).ok(),
    }
}

// ------------------------------------------------------- parsers never panic

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..700)) {
        let kek = Kek::from_bytes([1; 32]);
        let _ = EmmCommand::from_bytes(&bytes);
        let _ = EmmCommand::read(&mut Reader::new(&bytes));
        let _ = EmmPayload::from_bytes(&bytes);
        if let Ok(emm) = Emm::from_bytes(&bytes) {
            prop_assert!(emm.open_unique(&kek).is_err());
            prop_assert!(emm.verify_global(&operator().public()).is_err());
        }
        let _ = EcmHeader::from_bytes(&bytes);
        let _ = EcmHeader::read(&mut Reader::new(&bytes));
        if let Ok(ecm) = Ecm::from_bytes(&bytes) {
            prop_assert!(ecm.open(&EcmKey::from_bytes([2; 32])).is_err());
        }
        let _ = Command::parse(&bytes);
        let _ = Response::parse(&bytes);
        let _ = CardInfo::from_bytes(&bytes);
        let _ = Personalization::from_bytes(&bytes);
        let _ = EntitlementPage::from_bytes(&bytes);
        let _ = EntitlementRecord::from_bytes(&bytes);
        let _ = SessionInit::from_bytes(&bytes);
        let header = EcmHeader { product: 1, generation: 2, epoch: 3, service: 4 };
        prop_assert!(
            open_control_words(&SessionKey::from_bytes([3; 32]), &header, &bytes).is_err()
        );
    }

    /// Bytes that get past the first checks (right kind and version, a
    /// plausible length) so the deeper parsing paths are exercised too.
    #[test]
    fn plausible_headers_never_panic(
        kind in 0u8..4,
        rest in vec(any::<u8>(), 14),
        len in 0u16..600,
        body in vec(any::<u8>(), 0..620),
        cmds in vec((0u8..7, any::<u8>(), vec(any::<u8>(), 0..64)), 0..6),
    ) {
        let mut emm = vec![kind, 1];
        emm.extend_from_slice(&rest[..12]);
        emm.extend_from_slice(&len.to_be_bytes());
        emm.extend_from_slice(&body);
        let _ = Emm::from_bytes(&emm);
        let _ = Ecm::from_bytes(&emm[1..]);

        // A payload of commands with plausible tags and random lengths.
        let mut payload = rest[..8].to_vec();
        for (tag, len, value) in &cmds {
            payload.push(*tag);
            payload.push(*len);
            payload.extend_from_slice(value);
        }
        let _ = EmmPayload::from_bytes(&payload);
        let _ = EmmCommand::from_bytes(&payload[8..]);
    }

    /// Every length field of a command APDU, around every boundary.
    #[test]
    fn apdu_lengths_never_panic(
        head in any::<[u8; 4]>(),
        lc in prop_oneof![Just(0u8), any::<u8>()],
        ext in any::<[u8; 2]>(),
        body in vec(any::<u8>(), 0..300),
    ) {
        let mut short = head.to_vec();
        short.push(lc);
        short.extend_from_slice(&body);
        let _ = Command::parse(&short);
        let mut long = head.to_vec();
        long.push(0);
        long.extend_from_slice(&ext);
        long.extend_from_slice(&body);
        if let Ok(c) = Command::parse(&long) {
            prop_assert_eq!(Command::parse(&c.to_bytes()).unwrap(), c);
        }
    }
}

// ----------------------------------------------------------------- round trips

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn emm_command_round_trip(c in arb_command()) {
        let b = c.to_bytes();
        prop_assert_eq!(b[1] as usize, b.len() - 2);
        prop_assert_eq!(EmmCommand::from_bytes(&b).unwrap(), c);
    }

    #[test]
    fn emm_payload_round_trip(p in arb_payload()) {
        let b = p.to_bytes();
        prop_assert_eq!(EmmPayload::from_bytes(&b).unwrap(), p);
    }

    #[test]
    fn emm_round_trip(e in arb_emm()) {
        let b = e.to_bytes();
        prop_assert_eq!(b.len(), 16 + e.body.len());
        prop_assert_eq!(&b[2..6], &e.address.to_be_bytes());
        let back = Emm::from_bytes(&b).unwrap();
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(back.to_bytes(), b);
    }

    #[test]
    fn sealed_emm_u_round_trip(
        kek in any::<[u8; 32]>(),
        card in any::<u32>(),
        seq in any::<u64>(),
        p in arb_payload(),
        prefix in vec(any::<u8>(), 0..20),
    ) {
        let kek = Kek::from_bytes(kek);
        let bytes = Emm::seal_unique(&kek, card, seq, &p);
        prop_assert!(bytes.len() - 16 <= MAX_BODY_LEN);
        let emm = Emm::from_bytes(&bytes).unwrap();
        prop_assert_eq!(emm.kind, EmmKind::UNIQUE);
        prop_assert_eq!(emm.address, card);
        prop_assert_eq!(emm.seq, seq);
        prop_assert_eq!(emm.to_bytes(), bytes.clone());
        prop_assert_eq!(emm.open_unique(&kek).unwrap(), p.clone());

        // The hot path appends after whatever the buffer already holds.
        let mut out = prefix.clone();
        Emm::seal_unique_into(&Sealer::new(&kek), card, seq, &p, &mut out);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &bytes[..]);
    }

    #[test]
    fn signed_emm_g_round_trip(seq in any::<u64>(), p in arb_payload()) {
        let bytes = Emm::sign_global(operator(), seq, &p);
        let emm = Emm::from_bytes(&bytes).unwrap();
        prop_assert_eq!(emm.kind, EmmKind::GLOBAL);
        prop_assert_eq!(emm.address, GLOBAL_ADDRESS);
        prop_assert_eq!(emm.seq, seq);
        prop_assert_eq!(emm.to_bytes(), bytes);
        prop_assert_eq!(emm.verify_global(&operator().public()).unwrap(), p);
    }

    #[test]
    fn ecm_header_round_trip(h in arb_ecm_header()) {
        let b = h.to_bytes();
        prop_assert_eq!(b.len(), 21);
        prop_assert_eq!(&b[..], &h.bytes()[..]);
        prop_assert_eq!(EcmHeader::from_bytes(&b).unwrap(), h);
    }

    #[test]
    fn ecm_round_trip(h in arb_ecm_header(), body in vec(any::<u8>(), ECM_BODY_LEN)) {
        let e = Ecm { header: h, body: body.try_into().unwrap() };
        let b = e.to_bytes();
        prop_assert_eq!(b.len(), ECM_LEN);
        prop_assert_eq!(Ecm::from_bytes(&b).unwrap(), e);
    }

    #[test]
    fn sealed_ecm_round_trip(
        kp in any::<[u8; 32]>(),
        h in arb_ecm_header(),
        p in arb_ecm_payload(),
    ) {
        let key = ProductKey::from_bytes(kp).epoch_key(h.product, h.generation, h.epoch).ecm_key();
        let ecm = Ecm::seal(&key, h, &p);
        let back = Ecm::from_bytes(&ecm.to_bytes()).unwrap();
        prop_assert_eq!(&back, &ecm);
        prop_assert_eq!(back.open(&key).unwrap(), p);
    }

    #[test]
    fn command_apdu_round_trip(c in arb_command_apdu()) {
        let b = c.to_bytes();
        prop_assert_eq!(c.is_extended(), c.data.len() > 255 || c.le.is_some_and(|l| l > 256));
        prop_assert_eq!(Command::parse(&b).unwrap(), c);
    }

    #[test]
    fn response_apdu_round_trip(data in vec(any::<u8>(), 0..600), sw in any::<u16>()) {
        let r = Response { data, sw: StatusWord(sw) };
        let b = r.to_bytes();
        prop_assert_eq!(Response::parse(&b).unwrap(), r);
    }

    #[test]
    fn card_info_round_trip(i in arb_card_info()) {
        let b = i.to_bytes();
        prop_assert_eq!(b.len(), 164);
        prop_assert_eq!(CardInfo::from_bytes(&b).unwrap(), i);
    }

    #[test]
    fn personalization_round_trip(
        card_id in 1u32..u32::MAX,
        operator_id in any::<u32>(),
        kex in any::<[u8; 32]>(),
        sig in any::<[u8; 32]>(),
    ) {
        let p = Personalization { card_id, operator_id, operator_kex: kex, operator_sig: sig };
        let b = p.to_bytes();
        prop_assert_eq!(b.len(), 72);
        prop_assert_eq!(Personalization::from_bytes(&b).unwrap(), p);
    }

    #[test]
    fn entitlement_page_round_trip(
        total in any::<u8>(),
        records in vec(arb_record(), 0..=ENTITLEMENTS_PER_PAGE),
    ) {
        let p = EntitlementPage { total, records };
        let b = p.to_bytes();
        prop_assert_eq!(b.len(), 2 + 24 * p.records.len());
        prop_assert_eq!(EntitlementPage::from_bytes(&b).unwrap(), p);
    }

    #[test]
    fn entitlement_record_round_trip(r in arb_record()) {
        prop_assert_eq!(EntitlementRecord::from_bytes(&r.to_bytes()).unwrap(), r);
    }

    #[test]
    fn session_init_round_trip(s in any::<[u8; 32]>(), e in any::<[u8; 32]>()) {
        let i = SessionInit { receiver_static: s, receiver_ephemeral: e };
        let b = i.to_bytes();
        prop_assert_eq!(b.len(), 64);
        prop_assert_eq!(SessionInit::from_bytes(&b).unwrap(), i);
    }

    #[test]
    fn control_words_round_trip(
        key in any::<[u8; 32]>(),
        counter in any::<u64>(),
        h in arb_ecm_header(),
        cws in arb_control_words(),
    ) {
        let key = SessionKey::from_bytes(key);
        let reply = seal_control_words(&key, counter, &h, &cws);
        prop_assert_eq!(reply.len(), CW_REPLY_LEN);
        let (c, back) = open_control_words(&key, &h, &reply).unwrap();
        prop_assert_eq!(c, counter);
        prop_assert_eq!(back, cws);
    }
}

// ------------------------------------------------------------------ mutations

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn mutated_emm_u_is_refused(
        kek in any::<[u8; 32]>(),
        card in any::<u32>(),
        seq in any::<u64>(),
        p in arb_payload(),
        m in arb_mutation(),
    ) {
        let kek = Kek::from_bytes(kek);
        let orig = Emm::seal_unique(&kek, card, seq, &p);
        let bad = mutate(&orig, &m);
        prop_assert_eq!(card_accepts_emm(&orig, &kek), Some(p));
        prop_assert_eq!(card_accepts_emm(&bad, &kek), None, "accepted after {:?}", m);
    }

    #[test]
    fn mutated_emm_g_is_refused(
        seq in any::<u64>(),
        p in arb_payload(),
        m in arb_mutation(),
    ) {
        let kek = Kek::from_bytes([9; 32]);
        let orig = Emm::sign_global(operator(), seq, &p);
        let bad = mutate(&orig, &m);
        prop_assert_eq!(card_accepts_emm(&orig, &kek), Some(p));
        prop_assert_eq!(card_accepts_emm(&bad, &kek), None, "accepted after {:?}", m);
    }

    #[test]
    fn mutated_ecm_is_refused(
        kp in any::<[u8; 32]>(),
        h in arb_ecm_header(),
        p in arb_ecm_payload(),
        m in arb_mutation(),
    ) {
        let key = ProductKey::from_bytes(kp).epoch_key(h.product, h.generation, h.epoch).ecm_key();
        let orig = Ecm::seal(&key, h, &p).to_bytes();
        let bad = mutate(&orig, &m);
        if let Ok(ecm) = Ecm::from_bytes(&bad) {
            // The card derives the key from the (possibly changed) header,
            // exactly as it would on the air.
            let h2 = ecm.header;
            let key2 = ProductKey::from_bytes(kp)
                .epoch_key(h2.product, h2.generation, h2.epoch)
                .ecm_key();
            prop_assert!(ecm.open(&key2).is_err(), "accepted after {:?}", m);
            prop_assert!(ecm.open(&key).is_err(), "accepted after {:?}", m);
        }
    }

    #[test]
    fn mutated_cw_reply_is_refused(
        key in any::<[u8; 32]>(),
        counter in any::<u64>(),
        h in arb_ecm_header(),
        cws in arb_control_words(),
        m in arb_mutation(),
        hm in arb_mutation(),
    ) {
        let key = SessionKey::from_bytes(key);
        let orig = seal_control_words(&key, counter, &h, &cws);
        let bad = mutate(&orig, &m);
        prop_assert!(open_control_words(&key, &h, &bad).is_err(), "accepted after {:?}", m);
        // The reply is bound to its ECM header, too.
        if let Ok(h2) = EcmHeader::from_bytes(&mutate(&h.bytes(), &hm)) {
            prop_assert!(open_control_words(&key, &h2, &orig).is_err());
        }
    }

    /// A valid EMM-U under one card's KEK means nothing to another card,
    /// and an EMM-U re-addressed to another card does not authenticate.
    #[test]
    fn emm_u_is_bound_to_its_card(
        kek in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        card in any::<u32>(),
        new_card in any::<u32>(),
        p in arb_payload(),
    ) {
        prop_assume!(kek != other && card != new_card);
        let kek = Kek::from_bytes(kek);
        let orig = Emm::seal_unique(&kek, card, 1, &p);
        prop_assert_eq!(card_accepts_emm(&orig, &Kek::from_bytes(other)), None);
        let mut moved = orig.clone();
        moved[2..6].copy_from_slice(&new_card.to_be_bytes());
        prop_assert_eq!(card_accepts_emm(&moved, &kek), None);
    }
}
