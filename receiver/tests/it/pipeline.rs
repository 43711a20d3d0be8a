//! The receiver pipeline in process, on streams scrambled by the headend's
//! stream engine, with an in-process card (the fast transport).

use crate::common::*;
use proto::apdu::{Ins, StatusWord};
use proto::crypto::X25519Secret;
use receiver::{exit, Failure, LinkError, PipelineOptions, Stats};
use ts::packet::{Packet, Packets, PACKET_LEN};
use ts::psi::{Pmt, SectionAssembler, CA_SYSTEM_ID};

fn opts() -> PipelineOptions {
    PipelineOptions::default()
}

/// Checks the output is clear TS as promised: no CAT, ECM or EMM packet,
/// no scrambling bits, and PMTs without CA signalling.
fn assert_clear_output(out: &[u8]) {
    assert_eq!(out.len() % PACKET_LEN, 0);
    let mut pmt = SectionAssembler::new();
    let mut pmts = 0;
    for p in Packets::new(out) {
        let v = Packet::from_array(p).unwrap();
        assert!(
            ![1, ECM_PID, EMM_PID].contains(&v.pid()),
            "PID {:#x} in the output",
            v.pid()
        );
        assert_eq!(
            v.scrambling().0,
            0,
            "scrambled packet on PID {:#x}",
            v.pid()
        );
        if v.pid() == 0x1000 {
            for s in pmt.push(&v) {
                let t = Pmt::from_section(&s.unwrap()).unwrap();
                assert!(t.ca_descriptors(CA_SYSTEM_ID).is_empty());
                assert!(t
                    .descriptors
                    .iter()
                    .all(|d| d.tag() != ts::psi::descriptor_tag::SCRAMBLING));
                pmts += 1;
            }
        }
    }
    assert!(pmts > 0, "no PMT in the output");
}

/// The address of each PROCESS EMM the card got, in order.
fn emm_addresses(log: &[(Vec<u8>, Vec<u8>)]) -> Vec<u32> {
    log.iter()
        .filter(|(c, _)| c.len() > 12 && c[1] == Ins::PROCESS_EMM.0)
        .map(|(c, _)| {
            // CLA INS P1 P2, then Lc in one byte, or 00 and two bytes.
            let emm = if c[4] == 0 { &c[7..] } else { &c[5..] };
            u32::from_be_bytes(emm[2..6].try_into().unwrap())
        })
        .collect()
}

#[test]
fn ffmpeg_stream_comes_out_clear_byte_identical_and_decodable() {
    let Some(clear) = ffmpeg_ts(3) else { return };
    let mut engine = engine();
    let (applet, given) = mem_card(&mut engine, CARD, Some(WIDE));
    let _ = mem_card(&mut engine, OTHER_CARD, Some(WIDE));
    let t = START_MS / 1000;
    let old = given.unwrap();
    let renewed = engine.emm_u_for(CARD, t).unwrap();
    let others = engine.emm_u_for(OTHER_CARD, t).unwrap();
    let global = engine
        .emm_g(t, vec![proto::emm::EmmCommand::BlockCards(vec![99])])
        .unwrap();
    let mut feed = TestFeed::new(engine, 1000);
    for emm in [&old, &others, &global, &renewed] {
        feed.carousel_emm(emm);
    }
    let (scrambled, _) = scramble(&clear, feed, START_MS, 100_000);

    let card = SharedCard::new(applet);
    let rx = X25519Secret::random();
    let (out, result, stats) = receive(card.clone(), &rx, &scrambled, opts(), 65_424);
    result.unwrap();
    eprintln!("{}", stats.summary());
    assert_es_identical(&clear, &out);
    assert_clear_output(&out);
    assert_eq!(stats.undecryptable, 0, "{stats:?}");
    assert_eq!(stats.before_first_key, 0, "{stats:?}");
    assert!(stats.cw_changes >= 3, "{stats:?}");
    assert_eq!(stats.ecms_refused, 0);

    // EMMs: only this card's and the global one reached the card, each
    // once; the old one was refused as a replay, which is normal.
    let addresses = emm_addresses(&card.log());
    assert_eq!(
        addresses,
        [CARD, proto::emm::GLOBAL_ADDRESS, CARD],
        "{stats:?}"
    );
    assert_eq!(stats.emms_to_card, 3);
    assert_eq!(stats.emms_replayed, 1);
    assert_eq!(stats.emms_accepted, 2);
    assert_eq!(stats.emms_rejected, 0);
    assert!(stats.emm_duplicates > 10, "{stats:?}");
    assert!(stats.emm_sections > stats.emms_for_card);

    // ffprobe decodes it, without an error, to as many frames as the input.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("clear.ts"), dir.path().join("out.ts"));
    std::fs::write(&a, &clear).unwrap();
    std::fs::write(&b, &out).unwrap();
    if let (Some((want, _)), Some((got, errors))) = (ffprobe_frames(&a), ffprobe_frames(&b)) {
        assert!(want >= 70, "{want} frames in the input");
        assert_eq!(got, want, "frames decoded");
        assert_eq!(errors.trim(), "", "ffprobe errors");
    }
    // And the scrambled stream in between is not the clear one.
    let s = es(&scrambled, &[VIDEO]);
    let c = es(&clear, &[VIDEO]);
    let same = s[&VIDEO]
        .iter()
        .zip(&c[&VIDEO])
        .filter(|(x, y)| x[8..] == y[8..] && Packet::new(&y[..]).unwrap().payload().len() >= 64)
        .count();
    assert_eq!(same, 0, "{same} video packets went out clear");
}

#[test]
fn a_thousand_cw_changes_and_three_key_renewals_lose_no_packet() {
    // 100 ms crypto periods over 100 s of stream: 1,000 changes. The
    // product key is renewed three times; the card gets each new key by
    // EMM, and the ECMs switch to it 300 ms later.
    let clear = synthetic_ts(100_200, 6);
    let (engine, applet) = entitled_card();
    let mut feed = TestFeed::new(engine, 100);
    feed.renew_for = vec![CARD];
    feed.renewals = [25_000, 50_000, 75_000]
        .iter()
        .map(|ms| START_MS + ms)
        .collect();
    let (scrambled, feed) = scramble(&clear, feed, START_MS, 100_000);
    assert_eq!(
        feed.generations_used.len(),
        4,
        "{:?}",
        feed.generations_used
    );

    let card = SharedCard::new(applet);
    let (out, result, stats) = receive(card, &X25519Secret::random(), &scrambled, opts(), 1316);
    result.unwrap();
    eprintln!("{}", stats.summary());
    assert_eq!(stats.undecryptable, 0, "{stats:?}");
    assert_eq!(stats.before_first_key, 0, "{stats:?}");
    assert!(stats.cw_changes >= 1_000, "{stats:?}");
    assert_eq!(stats.ecms_refused, 0, "{stats:?}");
    assert_eq!(stats.emms_accepted, 3, "{stats:?}");
    assert_es_identical(&clear, &out);
}

#[test]
fn no_control_word_crosses_the_card_link_in_clear() {
    let clear = synthetic_ts(20_000, 6);
    let (engine, applet) = entitled_card();
    let feed = TestFeed::new(engine, 100);
    let (scrambled, feed) = scramble(&clear, feed, START_MS, 0);
    let card = SharedCard::new(applet);
    let rx = X25519Secret::random();
    let (out, result, stats) = receive(card.clone(), &rx, &scrambled, opts(), 4096);
    result.unwrap();
    assert_es_identical(&clear, &out);

    let log = card.log();
    let ecms = log
        .iter()
        .filter(|(c, _)| c[1] == Ins::PROCESS_ECM.0)
        .count();
    assert!(ecms >= 190, "{ecms} PROCESS ECM commands");
    assert_eq!(stats.ecms_to_card as usize, ecms);
    assert!(feed.cws.len() >= 195, "{} CWs", feed.cws.len());
    let traffic: Vec<&[u8]> = log
        .iter()
        .flat_map(|(c, r)| [c.as_slice(), r.as_slice()])
        .collect();
    for cw in &feed.cws {
        let cw = cw.expose();
        for m in &traffic {
            assert!(
                !m.windows(16).any(|w| w == cw),
                "a control word crossed the card link in clear"
            );
            // Not even half of one.
            assert!(!m.windows(8).any(|w| w == &cw[..8] || w == &cw[8..]));
        }
    }
    // Nor the receiver's private key.
    let seed = rx.to_seed();
    assert!(traffic
        .iter()
        .all(|m| !m.windows(32).any(|w| w == seed.expose())));
}

#[test]
fn the_card_pulled_out_and_reset_mid_stream_loses_no_packet() {
    let clear = synthetic_ts(30_000, 6);
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 100), START_MS, 0);
    let card = SharedCard::new(applet);
    {
        let mut f = card.faults.lock().unwrap();
        f.remove_at = vec![40, 181, 300];
        f.reset_at = vec![240, 280];
        f.absent_for = 3;
    }
    let (out, result, stats) = receive(
        card.clone(),
        &X25519Secret::random(),
        &scrambled,
        opts(),
        1316,
    );
    result.unwrap();
    eprintln!("{}", stats.summary());
    let f = card.faults.lock().unwrap();
    assert_eq!((f.removals, f.resets), (3, 2));
    assert_eq!(stats.card_reconnects, 5, "{stats:?}");
    assert_eq!(stats.undecryptable, 0, "{stats:?}");
    assert_es_identical(&clear, &out);
}

#[test]
fn a_card_entitled_by_an_emm_on_the_air_starts_descrambling() {
    let clear = synthetic_ts(10_000, 6);
    let mut engine = engine();
    let (applet, _) = mem_card(&mut engine, CARD, None);
    engine.entitle(CARD, PRODUCT, WIDE.0, WIDE.1).unwrap();
    let emm = engine.emm_u_for(CARD, START_MS / 1000).unwrap();
    let mut feed = TestFeed::new(engine, 1000);
    // The EMM comes 2 s into the stream; the ECMs before it are refused.
    feed.emm_at(START_MS + 2_000, &emm);
    let (scrambled, _) = scramble(&clear, feed, START_MS, 100_000);
    let (out, result, stats) = receive(
        SharedCard::new(applet),
        &X25519Secret::random(),
        &scrambled,
        opts(),
        1316,
    );
    result.unwrap();
    eprintln!("{}", stats.summary());
    assert_eq!(stats.emms_accepted, 1);
    assert!(stats.ecms_refused >= 1, "{stats:?}");
    // From the EMM on, everything; before it, nothing.
    let want = es(&clear, &[VIDEO, AUDIO]);
    let got = es(&out, &[VIDEO, AUDIO]);
    for pid in [VIDEO, AUDIO] {
        let (w, g) = (&want[&pid], &got[&pid]);
        assert!(
            g.len() * 10 > w.len() * 7 && g.len() * 10 < w.len() * 9,
            "{} of {}",
            g.len(),
            w.len()
        );
        assert_eq!(
            &w[w.len() - g.len()..],
            &g[..],
            "PID {pid:#x}: not a suffix"
        );
    }
}

/// What [`receive`] gives: the output, the result and the counters.
type Received = (Vec<u8>, Result<(), Failure>, Stats);

/// `clear` scrambled from `start_ms` with 1 s crypto periods, and
/// received with card 42 in process (entitled from `dates` if given): the
/// scrambled stream and what [`receive`] gives.
fn scramble_and_receive(
    clear: &[u8],
    dates: Option<(u64, u64)>,
    start_ms: u64,
) -> (Vec<u8>, Received) {
    let mut engine = engine();
    let (applet, _) = mem_card(&mut engine, CARD, dates);
    let (scrambled, _) = scramble(clear, TestFeed::new(engine, 1000), start_ms, 0);
    let ran = receive(
        SharedCard::new(applet),
        &X25519Secret::random(),
        &scrambled,
        opts(),
        1316,
    );
    (scrambled, ran)
}

#[test]
fn an_entitlement_that_ends_stops_the_output_at_the_next_crypto_period() {
    // The entitlement ends at 2026-11-30T23:59:59Z (inclusive); the stream
    // starts 2 s before, with 1 s crypto periods. The ECM of the period
    // that starts at midnight is refused.
    let end = DAY0 + DAY - 1;
    let start_ms = (end - 2) * 1000;
    let clear = synthetic_ts(8_000, 6);
    let (scrambled, (out, result, stats)) =
        scramble_and_receive(&clear, Some((DAY0 - DAY, end)), start_ms);
    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "card 42 has no entitlement for product 7 (ended 2026-11-30)"
    );
    assert_eq!(err.exit_code(), exit::NOT_ENTITLED);
    assert!(stats.undecryptable > 0, "{stats:?}");
    // Exactly the periods up to the end, and nothing after.
    let cut = es_before_epoch(&scrambled, end + 1);
    let want = es(&clear, &[VIDEO, AUDIO]);
    let got = es(&out, &[VIDEO, AUDIO]);
    for pid in [VIDEO, AUDIO] {
        assert!(cut[&pid] >= 80, "{cut:?}");
        assert_eq!(got[&pid].len(), cut[&pid], "PID {pid:#x}");
        assert_eq!(&got[&pid][..], &want[&pid][..cut[&pid]]);
    }
}

#[test]
fn a_card_without_the_product_gives_no_clear_output_and_says_why() {
    let clear = synthetic_ts(5_000, 6);
    let (_, (out, result, stats)) = scramble_and_receive(&clear, None, START_MS);
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), "card 42 has no entitlement for product 7");
    assert_eq!(err.exit_code(), exit::NOT_ENTITLED);
    assert_eq!(stats.descrambled, 0);
    let got = es(&out, &[VIDEO, AUDIO]);
    assert!(got.values().all(Vec::is_empty), "ES packets in the output");
}

/// The first ES packet of `pid` in `out` that equals one of `clear`'s,
/// as an index into `clear`'s packets of that PID.
fn first_clear_index(clear: &[u8], out: &[u8], pid: u16) -> Option<usize> {
    let c = &es(clear, &[pid])[&pid];
    let first = es(out, &[pid])[&pid].first().copied()?;
    c.iter().position(|p| *p == first)
}

#[test]
fn a_card_paired_with_another_receiver_keeps_its_emms_and_waits_for_the_operator() {
    let (mut engine, applet) = entitled_card();
    let mine = X25519Secret::random();
    let theirs = X25519Secret::random();
    let pair = engine
        .emm_u_pair(CARD, theirs.public(), START_MS / 1000)
        .unwrap();

    // Paired on the air 3 s in: the session ends, the new one is refused,
    // and the receiver writes nothing more of the service, but runs to
    // the end of the input (which it then reports, exit 5).
    let clear = synthetic_ts(8_000, 6);
    let mut feed = TestFeed::new(engine, 1000);
    feed.emm_at(START_MS + 3_000, &pair);
    let (scrambled, _) = scramble(&clear, feed, START_MS, 100_000);
    let card = SharedCard::new(applet);
    let (out, result, stats) = receive(card.clone(), &mine, &scrambled, opts(), 1316);
    let err = result.unwrap_err();
    assert!(
        matches!(err, Failure::Card(LinkError::PairedElsewhere { card_id: CARD, receiver }) if receiver == mine.public()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "card 42 is paired with another receiver: the operator must run \
             \"headend pair 42 {}\" (this receiver's key) or \"headend unpair 42\"",
            hex::encode(mine.public())
        )
    );
    assert_eq!(err.exit_code(), exit::PAIRED_ELSEWHERE);
    let video = &es(&out, &[VIDEO])[&VIDEO];
    assert!(!video.is_empty());
    // Nothing after the pairing's crypto period: 8 s of input, at most
    // 3 s (and the period that was running) came out.
    let all = es(&clear, &[VIDEO])[&VIDEO].len();
    assert!(
        video.len() <= all / 2,
        "{} of {all} video packets out",
        video.len()
    );
    // The ECMs of every later period went to the card again (new
    // sessions tried), and all were refused.
    assert!(stats.ecms_refused >= 3, "{stats:?}");
    // The refusal came from the card, with its own status word.
    let refused = card.log().iter().any(|(c, r)| {
        c[1] == Ins::ESTABLISH_SESSION.0
            && r.ends_with(&StatusWord::NOT_PAIRED_RECEIVER.0.to_be_bytes())
    });
    assert!(refused);

    // A receiver started with the card already paired elsewhere keeps
    // reading; with --pairing-wait it gives up after that long.
    let o = PipelineOptions {
        pairing_wait: Some(std::time::Duration::from_secs(2)),
        ..opts()
    };
    let (out, result, stats) = receive(card.clone(), &mine, &scrambled, o, 1316);
    assert!(matches!(
        result.unwrap_err(),
        Failure::Card(LinkError::PairedElsewhere { card_id: CARD, .. })
    ));
    assert!(es(&out, &[VIDEO])[&VIDEO].is_empty());
    assert!(stats.packets_in < scrambled.len() as u64 / PACKET_LEN as u64);
    // The paired receiver is welcome.
    let (_, result, stats) = receive(card, &theirs, &scrambled, opts(), 1316);
    result.unwrap();
    assert!(stats.descrambled > 0);
}

#[test]
fn unpair_or_pair_on_the_air_ends_the_wait_and_the_picture_starts() {
    let clear = synthetic_ts(8_000, 6);
    let mine = X25519Secret::random();
    let theirs = X25519Secret::random();
    for fix in ["unpair", "pair"] {
        let (mut engine, applet) = entitled_card();
        // Paired with the wrong receiver before the receiver starts.
        let wrong = engine
            .emm_u_pair(CARD, theirs.public(), START_MS / 1000)
            .unwrap();
        let mut c = cardlink::CardClient::new(cardlink::InProcessCard::new(applet));
        c.select().unwrap();
        c.process_emm(&wrong).unwrap();
        let applet = c.into_transport().applet;
        // The operator's fix comes on the air 4 s in.
        let command = match fix {
            "unpair" => proto::emm::EmmCommand::Unpair,
            _ => proto::emm::EmmCommand::Pair {
                receiver: mine.public(),
            },
        };
        let emm = engine
            .emm_u(CARD, START_MS / 1000 + 4, vec![command])
            .unwrap();
        let mut feed = TestFeed::new(engine, 1000);
        feed.emm_at(START_MS + 4_000, &emm);
        let (scrambled, _) = scramble(&clear, feed, START_MS, 100_000);
        let card = SharedCard::new(applet);
        let (out, result, stats) = receive(card.clone(), &mine, &scrambled, opts(), 1316);
        result.unwrap_or_else(|e| panic!("{fix}: {e}"));
        // The EMM reached the card, the ECM was tried again at once, and
        // the picture is clear from the period of the fix on.
        assert_eq!(stats.emms_accepted, 1, "{fix}: {stats:?}");
        assert!(stats.ecms_refused >= 1, "{fix}: {stats:?}");
        assert!(stats.descrambled > 0, "{fix}: {stats:?}");
        let all = es(&clear, &[VIDEO])[&VIDEO].len();
        let from = first_clear_index(&clear, &out, VIDEO).expect("clear video out");
        // Clear from at most one period after the fix (4 s of 8).
        assert!(
            from > all * 4 / 8 - all / 8 && from <= all * 5 / 8,
            "{fix}: first clear video packet {from} of {all}"
        );
        let got = &es(&out, &[VIDEO])[&VIDEO];
        assert_eq!(
            got.len(),
            all - from,
            "{fix}: a gap after the first clear packet"
        );
        assert_clear_output(&out);
    }
}

#[test]
fn not_ts_and_unknown_services_are_clear_errors() {
    let (_, applet) = entitled_card();
    let card = SharedCard::new(applet);
    let rx = X25519Secret::random();
    let text = b"This is not a transport stream. ".repeat(4096);
    let (_, r, _) = receive(card.clone(), &rx, &text, opts(), 4096);
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), exit::NOT_TS);
    assert!(
        e.to_string()
            .starts_with("input is not an MPEG transport stream: no packet sync"),
        "{e}"
    );
    let (_, r, _) = receive(card.clone(), &rx, b"", opts(), 4096);
    assert_eq!(
        r.unwrap_err().to_string(),
        "input is not an MPEG transport stream: the input is empty"
    );
    // TS without PSI.
    let nulls: Vec<u8> = (0..2000).flat_map(|_| ts::packet::null_packet()).collect();
    let (_, r, _) = receive(card.clone(), &rx, &nulls, opts(), 4096);
    assert_eq!(
        r.unwrap_err().to_string(),
        "input is not an MPEG transport stream: no PAT (program association table) in 2000 packets"
    );
    let clear = synthetic_ts(1_000, 6);
    let o = PipelineOptions {
        service: Some(5),
        ..opts()
    };
    let (_, r, _) = receive(card.clone(), &rx, &clear, o, 4096);
    let e = r.unwrap_err();
    assert_eq!(
        e.to_string(),
        "service 5 is not in the stream (it has service 1)"
    );
    assert_eq!(e.exit_code(), exit::UNKNOWN_SERVICE);
    // A clear service (no CA_descriptor): exit 6, as the README says, and
    // nothing passed through.
    let (out, r, _) = receive(card, &rx, &clear, opts(), 4096);
    let e = r.unwrap_err();
    assert!(
        e.to_string().starts_with("service 1 is not scrambled"),
        "{e}"
    );
    assert_eq!(e.exit_code(), exit::UNKNOWN_SERVICE);
    assert!(es(&out, &[VIDEO])[&VIDEO].is_empty());
}

fn want_pcrs(ts: &[u8]) -> usize {
    Packets::new(ts)
        .filter_map(|p| Packet::from_array(p).ok())
        .filter(|v| v.pid() == VIDEO && v.pcr().is_some())
        .count()
}

#[test]
fn one_service_of_two_comes_out_alone() {
    let clear = synthetic_multi(4_000, 8, 2);
    let (engine, applet) = entitled_card();
    let mut feed = TestFeed::new(engine, 1000);
    feed.add_service(2);
    let (scrambled, _) = scramble_services(
        &clear,
        feed,
        START_MS,
        0,
        &[(SERVICE, ECM_PID), (2, ECM_PID + 2)],
    );
    let o = PipelineOptions {
        service: Some(2),
        ..opts()
    };
    let (out, result, stats) = receive(
        SharedCard::new(applet),
        &X25519Secret::random(),
        &scrambled,
        o,
        1316,
    );
    result.unwrap();
    assert_eq!(stats.undecryptable, 0, "{stats:?}");
    let want = es(&clear, &[0x200, 0x201]);
    let got = es(
        &out,
        &[0x200, 0x201, VIDEO, AUDIO, ECM_PID, ECM_PID + 2, 0x1000],
    );
    for pid in [0x200, 0x201] {
        assert!(!want[&pid].is_empty());
        assert_eq!(got[&pid], want[&pid], "PID {pid:#x}");
    }
    for pid in [AUDIO, ECM_PID, ECM_PID + 2, 0x1000] {
        assert!(got[&pid].is_empty(), "PID {pid:#x} in the output");
    }
    // Both services take their PCR from service 1's video: it comes out
    // as PCRs alone, never as video descrambled with service 2's key.
    assert_eq!(got[&VIDEO].len(), want_pcrs(&clear));
    for p in &got[&VIDEO] {
        let v = Packet::new(&p[..]).unwrap();
        assert!(v.pcr().is_some() && !v.has_payload() && v.scrambling().0 == 0);
    }
    // The PAT lists service 2 alone.
    let mut asm = SectionAssembler::new();
    let pat = Packets::new(&out)
        .filter_map(|p| Packet::from_array(p).ok())
        .filter(|v| v.pid() == 0)
        .flat_map(|v| asm.push(&v))
        .next()
        .unwrap()
        .unwrap();
    let pat = ts::psi::Pat::from_section(&pat).unwrap();
    assert_eq!(pat.programs.len(), 1);
    assert_eq!(pat.programs[0].program_number, 2);
}
