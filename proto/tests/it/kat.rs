//! Known-answer tests: every vector file in `tests/data/` is parsed, its
//! fields are checked, it is re-encoded byte for byte, and it is opened or
//! verified with the keys the file gives.
//!
//! The expected bytes were produced once by this crate, so each test also
//! recomputes the crypto without going through `proto::crypto` (HKDF by hand
//! from ring's HMAC, X25519 from x25519-dalek directly, ChaCha20-Poly1305 from
//! ring's `aead` module, Ed25519 verification from ring) and anchors what it
//! can on published vectors (RFC 8439, RFC 7748, RFC 8032). A vector that
//! only agreed with itself would prove nothing.

use proto::apdu::{ApduError, Cla, Command, Ins, Response, StatusWord};
use proto::card::{
    open_control_words, seal_control_words, CardInfo, ControlWords, EntitlementPage,
    EntitlementRecord, LifeCycle, Personalization, CW_REPLY_LEN,
};
use proto::codec::Codec;
use proto::crypto::{
    open_in_place, seal_rustcrypto, verify_signature, CryptoError, Sealer, SessionInit, SigningKey,
    X25519Secret,
};
use proto::ecm::{Ecm, EcmHeader, EcmPayload, ECM_LEN};
use proto::emm::{
    emm_u_nonce, Emm, EmmCommand, EmmError, EmmKind, EmmPayload, Entitle, GLOBAL_ADDRESS,
};
use proto::secret::{ControlWord, CwPair, Kek, ProductKey, Seed, SessionKey};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("field {field} is not a hex string"));
    hex::decode(s).unwrap_or_else(|e| panic!("field {field}: {e}"))
}

fn arr<const N: usize>(v: &Value, field: &str) -> [u8; N] {
    bytes(v, field)
        .try_into()
        .unwrap_or_else(|_| panic!("field {field} is not {N} bytes"))
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field} is not an integer"))
}

fn list<'a>(v: &'a Value, field: &str) -> &'a Vec<Value> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("field {field} is not a list"))
}

/// HKDF-SHA256 (RFC 5869) written out with ring's HMAC, independent of
/// `proto::crypto::hkdf32`. One output block is enough for 32 bytes.
fn hkdf_by_hand(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    use ring::hmac;
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut t1 = info.to_vec();
    t1.push(0x01);
    let okm = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()), &t1);
    okm.as_ref().try_into().unwrap()
}

/// ChaCha20-Poly1305 sealing with ring's `aead` module directly.
fn ring_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    use ring::aead;
    let k = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).unwrap());
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(*nonce),
        aead::Aad::from(aad),
        &mut buf,
    )
    .unwrap();
    buf
}

fn payload_from_json(v: &Value) -> EmmPayload {
    let commands = list(v, "commands")
        .iter()
        .map(|c| {
            let (name, f) = c.as_object().unwrap().iter().next().unwrap();
            match name.as_str() {
                "entitle" => EmmCommand::Entitle(Entitle {
                    product: num(f, "product") as u32,
                    generation: num(f, "generation") as u32,
                    start: num(f, "start"),
                    end: num(f, "end"),
                    key: ProductKey::from_bytes(arr(f, "key")),
                }),
                "pair" => EmmCommand::Pair {
                    receiver: arr(f, "receiver"),
                },
                "unpair" => EmmCommand::Unpair,
                "remove_product" => EmmCommand::RemoveProduct {
                    product: num(f, "product") as u32,
                },
                "block_cards" => EmmCommand::BlockCards(
                    list(f, "cards")
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32)
                        .collect(),
                ),
                other => panic!("unknown command {other} in vector"),
            }
        })
        .collect();
    EmmPayload {
        time: num(v, "time"),
        commands,
    }
}

#[test]
fn rfc8439_aead_ring_and_rustcrypto_agree_with_the_rfc() {
    let v = load("rfc8439_aead.json");
    let key = Kek::from_bytes(arr(&v, "key"));
    let nonce: [u8; 12] = arr(&v, "nonce");
    let aad = bytes(&v, "aad");
    let pt = bytes(&v, "plaintext");
    let mut expected = bytes(&v, "ciphertext");
    expected.extend_from_slice(&bytes(&v, "tag"));

    // The vector itself is what the RFC prints.
    assert_eq!(
        pt,
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
    );
    assert_eq!(key.expose()[0], 0x80);
    assert_eq!(key.expose()[31], 0x9f);
    assert_eq!(
        bytes(&v, "tag"),
        hex::decode("1ae10b594f09e26a7e902ecbd0600691").unwrap()
    );

    // ring, through proto's Sealer (the headend's path).
    let mut ring_out = pt.clone();
    Sealer::new(&key).seal_tail(nonce, &aad, &mut ring_out, 0);
    assert_eq!(ring_out, expected, "ring disagrees with RFC 8439");

    // ring, sealing after a prefix that must stay clear (as in an EMM).
    let mut prefixed = b"header".to_vec();
    prefixed.extend_from_slice(&pt);
    Sealer::new(&key).seal_tail(nonce, &aad, &mut prefixed, 6);
    assert_eq!(&prefixed[..6], b"header");
    assert_eq!(&prefixed[6..], &expected[..]);

    // RustCrypto (the card's path), both directions.
    let mut rc_out = pt.clone();
    seal_rustcrypto(&key, nonce, &aad, &mut rc_out, 0);
    assert_eq!(rc_out, expected, "chacha20poly1305 disagrees with RFC 8439");
    let mut buf = expected.clone();
    assert_eq!(open_in_place(&key, nonce, &aad, &mut buf).unwrap(), &pt[..]);

    // Any change is refused.
    for i in [0, expected.len() / 2, expected.len() - 1] {
        let mut bad = expected.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            open_in_place(&key, nonce, &aad, &mut bad),
            Err(CryptoError::Auth)
        );
    }
    let mut buf = expected.clone();
    let mut bad_aad = aad.clone();
    bad_aad[0] ^= 1;
    assert!(open_in_place(&key, nonce, &bad_aad, &mut buf).is_err());
    let mut buf = expected.clone();
    let mut bad_nonce = nonce;
    bad_nonce[11] ^= 1;
    assert!(open_in_place(&key, bad_nonce, &aad, &mut buf).is_err());
    let mut short = expected[..15].to_vec();
    assert!(open_in_place(&key, nonce, &aad, &mut short).is_err());
}

#[test]
fn kek_vector() {
    let v = load("kek.json");
    let op_seed: [u8; 32] = arr(&v, "operator_seed");
    let card_seed: [u8; 32] = arr(&v, "card_seed");
    let card_id = num(&v, "card_id") as u32;
    let op_pub: [u8; 32] = arr(&v, "operator_public");
    let card_pub: [u8; 32] = arr(&v, "card_public");
    let shared: [u8; 32] = arr(&v, "shared_secret");
    let expected: [u8; 32] = arr(&v, "kek");

    // Through proto, from both sides.
    let op = X25519Secret::from_seed(&Seed::from_bytes(op_seed));
    let card = X25519Secret::from_seed(&Seed::from_bytes(card_seed));
    assert_eq!(op.public(), op_pub);
    assert_eq!(card.public(), card_pub);
    let headend = Kek::derive_headend(&op, card_id, &card_pub).unwrap();
    let on_card = Kek::derive_card(&card, card_id, &op_pub).unwrap();
    assert_eq!(headend.expose(), &expected);
    assert_eq!(on_card.expose(), &expected);

    // Independently: x25519-dalek directly, and HKDF by hand. The public
    // keys and shared secret are RFC 7748 section 6.1's.
    let dalek = x25519_dalek::StaticSecret::from(op_seed)
        .diffie_hellman(&x25519_dalek::PublicKey::from(card_pub));
    assert_eq!(dalek.as_bytes(), &shared);
    assert_eq!(
        hex::encode(shared),
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    );
    let salt = bytes(&v, "salt");
    assert_eq!(salt, b"iodoform/v1/kek");
    let info = bytes(&v, "info");
    let mut want_info = vec![1u8];
    want_info.extend_from_slice(&card_id.to_be_bytes());
    want_info.extend_from_slice(&op_pub);
    want_info.extend_from_slice(&card_pub);
    assert_eq!(info, want_info);
    assert_eq!(hkdf_by_hand(&salt, &shared, &info), expected);

    // The card id is bound in: another id gives another KEK.
    let other = Kek::derive_headend(&op, card_id + 1, &card_pub).unwrap();
    assert_ne!(other.expose(), &expected);
}

#[test]
fn epoch_and_ecm_key_vectors() {
    let v = load("epoch_key.json");
    let epoch_salt = bytes(&v, "epoch_salt");
    let ecm_salt = bytes(&v, "ecm_salt");
    let ecm_info = bytes(&v, "ecm_info");
    assert_eq!(epoch_salt, b"iodoform/v1/epoch");
    assert_eq!(ecm_salt, b"iodoform/v1/ecm");
    assert_eq!(ecm_info, b"\x01ecm");
    let vectors = list(&v, "vectors");
    assert!(vectors.len() >= 2);
    let mut seen = std::collections::HashSet::new();
    for t in vectors {
        let kp: [u8; 32] = arr(t, "product_key");
        let (product, generation, epoch) = (
            num(t, "product") as u32,
            num(t, "generation") as u32,
            num(t, "epoch"),
        );
        let want_epoch: [u8; 32] = arr(t, "epoch_key");
        let want_ecm: [u8; 32] = arr(t, "ecm_key");

        let ek = ProductKey::from_bytes(kp).epoch_key(product, generation, epoch);
        assert_eq!(ek.expose(), &want_epoch);
        assert_eq!(ek.ecm_key().expose(), &want_ecm);

        let mut info = vec![1u8];
        info.extend_from_slice(&product.to_be_bytes());
        info.extend_from_slice(&generation.to_be_bytes());
        info.extend_from_slice(&epoch.to_be_bytes());
        assert_eq!(bytes(t, "epoch_info"), info);
        assert_eq!(hkdf_by_hand(&epoch_salt, &kp, &info), want_epoch);
        assert_eq!(hkdf_by_hand(&ecm_salt, &want_epoch, &ecm_info), want_ecm);
        // Every (product, generation, epoch) has its own key.
        assert!(seen.insert(want_ecm), "two vectors share an ECM key");
    }
}

#[test]
fn ecm_vector() {
    let v = load("ecm.json");
    for t in list(&v, "vectors") {
        let kp = ProductKey::from_bytes(arr(t, "product_key"));
        let header = EcmHeader {
            product: num(t, "product") as u32,
            generation: num(t, "generation") as u32,
            epoch: num(t, "epoch"),
            service: num(t, "service") as u16,
        };
        let payload = EcmPayload {
            cws: CwPair {
                even: ControlWord::from_bytes(arr(t, "even")),
                odd: ControlWord::from_bytes(arr(t, "odd")),
            },
            time: num(t, "time"),
            maturity: num(t, "maturity") as u8,
        };
        let wire = bytes(t, "ecm");
        assert_eq!(wire.len(), ECM_LEN);

        // Key derivation and sealing reproduce the bytes.
        let key = kp
            .epoch_key(header.product, header.generation, header.epoch)
            .ecm_key();
        assert_eq!(key.expose(), &arr::<32>(t, "ecm_key"));
        assert_eq!(Ecm::seal(&key, header, &payload).to_bytes(), wire);

        // Parse, check fields, re-encode.
        let ecm = Ecm::from_bytes(&wire).unwrap();
        assert_eq!(ecm.header, header);
        assert_eq!(ecm.header.bytes().to_vec(), bytes(t, "header"));
        assert_eq!(ecm.header.nonce().to_vec(), bytes(t, "nonce"));
        assert_eq!(ecm.to_bytes(), wire);
        assert_eq!(EcmHeader::from_bytes(&wire[..21]).unwrap(), header);

        // Open (RustCrypto, card side).
        assert_eq!(ecm.open(&key).unwrap(), payload);

        // Independently: ring's AEAD over the documented plaintext layout.
        let plain = bytes(t, "plaintext");
        let mut want_plain = payload.cws.even.expose().to_vec();
        want_plain.extend_from_slice(payload.cws.odd.expose());
        want_plain.extend_from_slice(&payload.time.to_be_bytes());
        want_plain.push(payload.maturity);
        assert_eq!(plain, want_plain);
        let mut nonce = [0u8; 12];
        nonce[2..4].copy_from_slice(&header.service.to_be_bytes());
        nonce[4..].copy_from_slice(&header.epoch.to_be_bytes());
        assert_eq!(
            ring_seal(key.expose(), &nonce, &wire[..21], &plain),
            &wire[21..]
        );

        // Another epoch's key does not open it.
        let other = kp
            .epoch_key(header.product, header.generation, header.epoch + 1)
            .ecm_key();
        assert!(ecm.open(&other).is_err());
    }
}

#[test]
fn emm_u_vector() {
    let v = load("emm_u.json");
    let kek_file = load("kek.json");
    for t in list(&v, "vectors") {
        let kek = Kek::from_bytes(arr(t, "kek"));
        assert_eq!(kek.expose(), &arr::<32>(&kek_file, "kek"));
        let card_id = num(t, "card_id") as u32;
        let seq = num(t, "seq");
        let payload = payload_from_json(&t["payload"]);
        let payload_bytes = bytes(t, "payload_bytes");
        let wire = bytes(t, "emm");

        assert_eq!(payload.to_bytes(), payload_bytes);
        assert_eq!(EmmPayload::from_bytes(&payload_bytes).unwrap(), payload);
        assert_eq!(Emm::seal_unique(&kek, card_id, seq, &payload), wire);

        // Parse, check fields, re-encode.
        let emm = Emm::from_bytes(&wire).unwrap();
        assert_eq!(emm.kind, EmmKind::UNIQUE);
        assert_eq!(emm.address, card_id);
        assert_eq!(emm.seq, seq);
        assert_eq!(emm.body.len(), payload_bytes.len() + 16);
        assert_eq!(&wire[..16], &bytes(t, "header")[..]);
        assert_eq!(&wire[2..6], &card_id.to_be_bytes());
        assert_eq!(emm.to_bytes(), wire);

        // Open (card side) and check the commands.
        assert_eq!(emm.open_unique(&kek).unwrap(), payload);
        assert!(matches!(
            emm.verify_global(&[0; 32]),
            Err(EmmError::WrongKind(EmmKind::UNIQUE))
        ));
        assert!(emm.open_unique(&Kek::from_bytes([0; 32])).is_err());

        // Independently: ring's AEAD with the documented nonce and AAD.
        let mut nonce = [0u8; 12];
        nonce[0] = 0x01;
        nonce[4..].copy_from_slice(&seq.to_be_bytes());
        assert_eq!(nonce.to_vec(), bytes(t, "nonce"));
        assert_eq!(emm_u_nonce(seq), nonce);
        assert_eq!(
            ring_seal(kek.expose(), &nonce, &wire[..16], &payload_bytes),
            &wire[16..]
        );
    }
}

#[test]
fn emm_g_vector() {
    let v = load("emm_g.json");
    for t in list(&v, "vectors") {
        let seed: [u8; 32] = arr(t, "seed");
        let public: [u8; 32] = arr(t, "public");
        let seq = num(t, "seq");
        let payload = payload_from_json(&t["payload"]);
        let payload_bytes = bytes(t, "payload_bytes");
        let wire = bytes(t, "emm");
        let sig = bytes(t, "signature");

        // RFC 8032 section 7.1 TEST 1: this seed's public key.
        assert_eq!(
            hex::encode(public),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let key = SigningKey::from_seed(Seed::from_bytes(seed)).unwrap();
        assert_eq!(key.public(), public);

        assert_eq!(payload.to_bytes(), payload_bytes);
        // Ed25519 is deterministic, so signing reproduces the bytes.
        assert_eq!(Emm::sign_global(&key, seq, &payload), wire);

        let emm = Emm::from_bytes(&wire).unwrap();
        assert_eq!(emm.kind, EmmKind::GLOBAL);
        assert_eq!(emm.address, GLOBAL_ADDRESS);
        assert_eq!(emm.seq, seq);
        assert_eq!(&wire[..16], &bytes(t, "header")[..]);
        assert_eq!(emm.body.len(), payload_bytes.len() + 64);
        assert_eq!(&emm.body[..payload_bytes.len()], &payload_bytes[..]);
        assert_eq!(&emm.body[payload_bytes.len()..], &sig[..]);
        assert_eq!(emm.to_bytes(), wire);

        assert_eq!(emm.verify_global(&public).unwrap(), payload);
        assert!(matches!(
            emm.open_unique(&Kek::from_bytes([0; 32])),
            Err(EmmError::WrongKind(EmmKind::GLOBAL))
        ));
        let other = SigningKey::from_seed(Seed::from_bytes([7; 32])).unwrap();
        assert!(emm.verify_global(&other.public()).is_err());

        // Independently: ring verifies the signature over header ‖ payload.
        let signed = &wire[..wire.len() - 64];
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(signed, &sig)
            .unwrap();
        verify_signature(&public, signed, &sig).unwrap();
    }
}

#[test]
fn cw_reply_vector() {
    let v = load("cw_reply.json");
    let ecm = load("ecm.json");
    let ecm_header_hex = bytes(&list(&ecm, "vectors")[0], "header");
    for t in list(&v, "vectors") {
        let key = SessionKey::from_bytes(arr(t, "session_key"));
        let counter = num(t, "counter");
        let header_bytes = bytes(t, "ecm_header");
        assert_eq!(header_bytes, ecm_header_hex);
        let header = EcmHeader::from_bytes(&header_bytes).unwrap();
        assert_eq!(header.bytes().to_vec(), header_bytes);
        let cws = ControlWords {
            cws: CwPair {
                even: ControlWord::from_bytes(arr(t, "even")),
                odd: ControlWord::from_bytes(arr(t, "odd")),
            },
            time: num(t, "time"),
        };
        let reply = bytes(t, "reply");
        assert_eq!(reply.len(), CW_REPLY_LEN);
        assert_eq!(&reply[..8], &counter.to_be_bytes());

        assert_eq!(seal_control_words(&key, counter, &header, &cws), reply);
        let (c, opened) = open_control_words(&key, &header, &reply).unwrap();
        assert_eq!(c, counter);
        assert_eq!(opened, cws);

        // Bound to the ECM header: another service's header is refused.
        let other = EcmHeader {
            service: header.service ^ 1,
            ..header
        };
        assert!(open_control_words(&key, &other, &reply).is_err());

        // Independently: ring with the documented nonce and AAD.
        let mut nonce = [0u8; 12];
        nonce[0] = b'C';
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        assert_eq!(nonce.to_vec(), bytes(t, "nonce"));
        let mut aad = counter.to_be_bytes().to_vec();
        aad.extend_from_slice(&header_bytes);
        assert_eq!(aad, bytes(t, "aad"));
        let mut plain = cws.cws.even.expose().to_vec();
        plain.extend_from_slice(cws.cws.odd.expose());
        plain.extend_from_slice(&cws.time.to_be_bytes());
        assert_eq!(ring_seal(key.expose(), &nonce, &aad, &plain), &reply[8..]);
    }
}

#[test]
fn card_body_vectors() {
    let v = load("card_bodies.json");

    let p = &v["personalization"];
    let wire = bytes(p, "bytes");
    assert_eq!(wire.len(), 72);
    let pers = Personalization::from_bytes(&wire).unwrap();
    assert_eq!(
        pers,
        Personalization {
            card_id: num(p, "card_id") as u32,
            operator_id: num(p, "operator_id") as u32,
            operator_kex: arr(p, "operator_kex"),
            operator_sig: arr(p, "operator_sig"),
        }
    );
    assert_eq!(pers.to_bytes(), wire);

    for i in list(&v, "card_info") {
        let wire = bytes(i, "bytes");
        assert_eq!(wire.len(), 164);
        let info = CardInfo::from_bytes(&wire).unwrap();
        let want = CardInfo {
            applet_version: num(i, "applet_version") as u8,
            state: LifeCycle(num(i, "state") as u8),
            card_id: num(i, "card_id") as u32,
            operator_id: num(i, "operator_id") as u32,
            public_key: arr(i, "public_key"),
            operator_kex: arr(i, "operator_kex"),
            operator_sig: arr(i, "operator_sig"),
            clock: num(i, "clock"),
            emm_u_seq: num(i, "emm_u_seq"),
            emm_g_seq: num(i, "emm_g_seq"),
            paired_receiver: i["paired_receiver"]
                .as_str()
                .map(|_| arr(i, "paired_receiver")),
            entitlements: num(i, "entitlements") as u8,
        };
        assert_eq!(info, want);
        assert_eq!(info.to_bytes(), wire);
    }

    let e = &v["entitlement_page"];
    let wire = bytes(e, "bytes");
    let page = EntitlementPage::from_bytes(&wire).unwrap();
    let records: Vec<EntitlementRecord> = list(e, "records")
        .iter()
        .map(|r| EntitlementRecord {
            product: num(r, "product") as u32,
            generation: num(r, "generation") as u32,
            start: num(r, "start"),
            end: num(r, "end"),
        })
        .collect();
    assert_eq!(
        page,
        EntitlementPage {
            total: num(e, "total") as u8,
            records
        }
    );
    assert_eq!(wire.len(), 2 + 24 * page.records.len());
    assert_eq!(page.to_bytes(), wire);

    let s = &v["session_init"];
    let wire = bytes(s, "bytes");
    let init = SessionInit::from_bytes(&wire).unwrap();
    assert_eq!(init.receiver_static, arr::<32>(s, "receiver_static"));
    assert_eq!(init.receiver_ephemeral, arr::<32>(s, "receiver_ephemeral"));
    assert_eq!(init.to_bytes(), wire);
}

#[test]
fn apdu_vectors() {
    let v = load("apdu.json");
    let mut cases = std::collections::HashSet::new();
    for t in list(&v, "commands") {
        let wire = bytes(t, "apdu");
        let cmd = Command::parse(&wire).unwrap_or_else(|e| panic!("{}: {e}", t["apdu"]));
        assert_eq!(cmd.cla, Cla(num(t, "cla") as u8), "{}", t["apdu"]);
        assert_eq!(cmd.ins, Ins(num(t, "ins") as u8), "{}", t["apdu"]);
        assert_eq!(cmd.p1, num(t, "p1") as u8);
        assert_eq!(cmd.p2, num(t, "p2") as u8);
        assert_eq!(cmd.data, bytes(t, "data"), "{}", t["apdu"]);
        assert_eq!(
            cmd.le,
            t["le"].as_u64().map(|x| x as usize),
            "{}",
            t["apdu"]
        );
        let case = t["case"].as_str().unwrap();
        cases.insert(case.to_string());
        if t["canonical"].as_bool().unwrap() {
            // A canonical encoding is extended exactly for the E cases.
            assert_eq!(cmd.to_bytes(), wire, "{}", t["apdu"]);
            assert_eq!(cmd.is_extended(), case.ends_with('E'));
        }
        // Whatever the encoding, what to_bytes writes parses to the same.
        assert_eq!(Command::parse(&cmd.to_bytes()).unwrap(), cmd);
    }
    for c in ["1", "2S", "3S", "4S", "2E", "3E", "4E"] {
        assert!(cases.contains(c), "apdu.json lacks ISO case {c}");
    }
    for t in list(&v, "invalid_commands") {
        let want = match t["error"].as_str().unwrap() {
            "TooShort" => ApduError::TooShort,
            "LengthMismatch" => ApduError::LengthMismatch,
            "ZeroLc" => ApduError::ZeroLc,
            other => panic!("unknown error {other}"),
        };
        assert_eq!(
            Command::parse(&bytes(t, "apdu")),
            Err(want),
            "{}",
            t["apdu"]
        );
    }
    for t in list(&v, "responses") {
        let wire = bytes(t, "apdu");
        let r = Response::parse(&wire).unwrap();
        assert_eq!(r.data, bytes(t, "data"));
        assert_eq!(r.sw, StatusWord(num(t, "sw") as u16));
        assert_eq!(r.to_bytes(), wire);
    }
    for t in list(&v, "invalid_responses") {
        assert_eq!(
            Response::parse(&bytes(t, "apdu")),
            Err(ApduError::NoStatusWord)
        );
    }
    // SELECT as the client builds it.
    assert_eq!(
        hex::encode(Command::select().to_bytes()),
        "00a4040009f0494f444f464f524d"
    );
}
