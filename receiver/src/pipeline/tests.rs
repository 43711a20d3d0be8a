//! The pipeline with a scripted CA module ([`super::script`]): discovery,
//! the CW slots across changes, refusals, and the rewritten output, each
//! on a stream written packet by packet.

use super::script::{command::*, *};
use super::*;
use crate::card::LinkError;
use crate::error::exit;
use proto::emm::GLOBAL_ADDRESS;
use ts::psi::Pmt;

/// A run over the whole stream, one packet per push so that a failure
/// stops soon after it happened (`Stats::packets_in` says where: the
/// packets looked at, the failing one included).
struct Run {
    out: Vec<u8>,
    result: Result<(), Failure>,
    p: Pipeline<ScriptedCa>,
}

fn run(ts: &[u8], card: ScriptedCa, opts: PipelineOptions) -> Run {
    let mut p = Pipeline::new(card, opts);
    let mut out = Vec::new();
    let mut result = Ok(());
    for chunk in ts.chunks(PACKET_LEN) {
        result = p.push(chunk, &mut out);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = p.finish(&mut out);
    }
    Run { out, result, p }
}

fn opts() -> PipelineOptions {
    PipelineOptions::default()
}

fn pmts(out: &[u8], pid: u16) -> Vec<Pmt> {
    sections(out, pid)
        .iter()
        .map(|s| Pmt::from_section(s).unwrap())
        .collect()
}

const SECOND: u64 = 27_000_000;

#[test]
fn finds_the_service_its_ecm_and_emm_pids_and_replays_what_came_first() {
    let mut air = Air::new();
    // An ECM and EMMs before any table: held, then replayed.
    air.ecm(ECM_PID, 10);
    air.emm(CARD, NOTHING, 1);
    air.emm(OTHER_CARD, NOTHING, 2);
    air.emm(GLOBAL_ADDRESS, NOTHING, 3);
    air.emm(CARD, NOTHING, 1); // a carousel's repetition
    air.pat(&[(0, 0x10), (SERVICE, PMT_PID), (2, 0x200)]);
    air.cat(EMM_PID);
    air.pmt(
        PMT_PID,
        &service_pmt(SERVICE, VIDEO, &[VIDEO, AUDIO], Some(ECM_PID)),
    );
    air.pmt(0x200, &service_pmt(2, 0x201, &[0x201], Some(0x1F8)));
    for seq in 0..20 {
        air.es(VIDEO, Some(10), seq, Some(u64::from(seq) * SECOND / 25));
        air.es(AUDIO, Some(10), seq, None);
        // Service 2's stream and its ECMs are not ours; SI passes.
        air.es(0x201, Some(10), seq, None);
    }
    air.ecm(0x1F8, 10);
    air.es(0x11, None, 0, None);
    air.pat(&[(0, 0x10), (SERVICE, PMT_PID), (2, 0x200)]);

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    assert_eq!(p.service(), Some(SERVICE));
    let map = &p.stages.map;
    assert_eq!(map.pmt_pid(), Some(PMT_PID));
    assert_eq!(map.ecm_pid(), Some(ECM_PID));
    assert_eq!(map.emm_pid(), Some(EMM_PID));
    assert_eq!(map.pcr_pid(), Some(VIDEO));
    let stats = p.stats();
    assert_eq!(stats.descrambled, 40);
    assert_eq!(stats.before_first_key + stats.undecryptable, 0);
    assert_eq!(stats.emm_duplicates, 1);
    let card = p.into_card();
    assert_eq!(card.ecms, [10]);
    assert_eq!(
        card.emms,
        [(CARD, NOTHING), (GLOBAL_ADDRESS, NOTHING)],
        "only this card's EMMs and global ones, each once"
    );

    let expect: Vec<u32> = (0..20).collect();
    assert_eq!(seqs(&out, VIDEO), expect);
    assert_eq!(seqs(&out, AUDIO), expect);
    let pids: Vec<u16> = by_pid(&out).keys().copied().collect();
    assert_eq!(pids, [PAT_PID, 0x11, PMT_PID, VIDEO, AUDIO]);
    // The PAT has this service only; the PMT no CA signalling.
    let pats = sections(&out, PAT_PID);
    assert_eq!(pats.len(), 2);
    let pat = Pat::from_section(&pats[0]).unwrap();
    assert_eq!(pat.pmt_pid(SERVICE), Some(PMT_PID));
    assert_eq!(pat.pmt_pid(2), None);
    assert_eq!(pat.programs.len(), 2, "the network PID stays");
    let pmt = &pmts(&out, PMT_PID)[0];
    assert!(!has_ca(pmt));
    assert_eq!(pmt.streams.len(), 2);
}

#[test]
fn the_service_named_in_the_options_is_the_one_descrambled() {
    let mut air = Air::new();
    air.pat(&[(SERVICE, PMT_PID), (2, 0x200)]);
    air.pmt(
        PMT_PID,
        &service_pmt(SERVICE, VIDEO, &[VIDEO], Some(ECM_PID)),
    );
    air.pmt(0x200, &service_pmt(2, 0x201, &[0x201], Some(0x1F8)));
    air.ecm(ECM_PID, 7);
    air.ecm(0x1F8, 10);
    for seq in 0..5 {
        air.es(VIDEO, Some(7), seq, None);
        air.es(0x201, Some(10), seq, None);
    }
    let o = PipelineOptions {
        service: Some(2),
        ..opts()
    };
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), o);
    result.unwrap();
    assert_eq!(p.service(), Some(2));
    assert_eq!(p.into_card().ecms, [10]);
    assert_eq!(seqs(&out, 0x201), [0, 1, 2, 3, 4]);
    assert!(seqs(&out, VIDEO).is_empty());

    // A service the PAT does not have is refused at once.
    let o = PipelineOptions {
        service: Some(3),
        ..opts()
    };
    let r = run(&air.ts, ScriptedCa::new(), o);
    match r.result {
        Err(Failure::UnknownService { service, available }) => {
            assert_eq!((service, available), (3, vec![SERVICE, 2]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.p.stats().packets_in, 1);
    assert!(r.out.is_empty());
}

#[test]
fn a_pmt_change_mid_stream_moves_the_components_and_the_ecm_pid() {
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    for seq in 0..5 {
        air.es(VIDEO, Some(10), seq, None);
        air.es(AUDIO, Some(10), seq, None);
    }
    // Version 1: the audio moves to 0x103 and the ECMs to 0x1F2.
    let mut v1 = service_pmt(SERVICE, VIDEO, &[VIDEO, 0x103], Some(0x1F2));
    v1.version = 1;
    air.pmt(PMT_PID, &v1);
    // The same ECM on its new PID is new to the pipeline; one on the
    // old PID is no longer the service's.
    air.ecm(0x1F2, 10);
    air.ecm(ECM_PID, 11);
    for seq in 5..10 {
        air.es(VIDEO, Some(10), seq, None);
        air.es(AUDIO, Some(10), seq, None);
        air.es(0x103, Some(10), seq, None);
    }
    air.pmt(PMT_PID, &v1);

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    assert_eq!(p.stages.map.ecm_pid(), Some(0x1F2));
    assert_eq!(p.stats().undecryptable, 0);
    assert_eq!(p.into_card().ecms, [10, 10]);
    assert_eq!(seqs(&out, VIDEO), (0..10).collect::<Vec<_>>());
    assert_eq!(seqs(&out, AUDIO), (0..5).collect::<Vec<_>>());
    assert_eq!(seqs(&out, 0x103), (5..10).collect::<Vec<_>>());
    assert!(!by_pid(&out).contains_key(&0x1F2));
    // The output PMT follows, cleared, its counter continuous across the
    // change.
    let versions: Vec<u8> = pmts(&out, PMT_PID).iter().map(|t| t.version).collect();
    assert_eq!(versions, [0, 1, 1]);
    assert!(pmts(&out, PMT_PID).iter().all(|t| !has_ca(t)));
    for (i, p) in by_pid(&out)[&PMT_PID].iter().enumerate() {
        assert_eq!(
            usize::from(Packet::from_array(p).unwrap().continuity_counter()),
            i
        );
    }
}

#[test]
fn both_cw_slots_across_cw_changes_lose_no_packet() {
    // As the headend sends them: the ECM of period n a little before its
    // first packet, while packets of n - 1 still come, then repeated.
    let mut air = Air::new();
    air.tables();
    let mut seq = 0;
    for n in 10..15u64 {
        air.ecm(ECM_PID, n);
        if n > 10 {
            for _ in 0..3 {
                air.es(VIDEO, Some(n - 1), seq, None);
                seq += 1;
            }
        }
        for i in 0..10 {
            if i == 5 {
                air.ecm(ECM_PID, n);
            }
            air.es(VIDEO, Some(n), seq, None);
            seq += 1;
        }
    }
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    assert_eq!(seqs(&out, VIDEO), (0..seq).collect::<Vec<_>>());
    let stats = p.stats();
    assert_eq!(stats.descrambled, u64::from(seq));
    assert_eq!(stats.undecryptable + stats.before_first_key, 0);
    assert_eq!((stats.ecm_sections, stats.ecms_to_card), (10, 5));
    // CW_10 and CW_11 from the first ECM, then one new key per ECM.
    assert_eq!(stats.cw_changes, 6);
    assert_eq!(p.into_card().ecms, [10, 11, 12, 13, 14]);
}

#[test]
fn after_a_gap_no_packet_comes_out_before_an_ecm_gives_its_period() {
    let mut air = Air::new();
    air.tables();
    let mut seq = 0;
    let mut expected = Vec::new();
    for n in [10u64, 11] {
        air.ecm(ECM_PID, n);
        for _ in 0..5 {
            air.es(VIDEO, Some(n), seq, None);
            expected.push(seq);
            seq += 1;
        }
    }
    // The source stops, and comes back two periods on (epoch 13, the
    // parity of 11) with packets before its first ECM.
    air.lose(VIDEO, 5);
    for _ in 0..4 {
        air.es(VIDEO, Some(13), seq, None);
        seq += 1;
    }
    air.ecm(ECM_PID, 13);
    for _ in 0..5 {
        air.es(VIDEO, Some(13), seq, None);
        expected.push(seq);
        seq += 1;
    }
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    // Nothing of 13 came out under CW_11, the key its parity slot held.
    assert_eq!(seqs(&out, VIDEO), expected);
    let stats = p.stats();
    assert_eq!((stats.input_gaps, stats.after_gap), (1, 4), "{stats:?}");
    assert_eq!(stats.undecryptable, 0);
}

#[test]
fn a_refused_ecm_stops_the_output_at_its_period_until_an_emm_entitles_the_card() {
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    for seq in 0..5 {
        air.es(VIDEO, Some(10), seq, None);
    }
    // The subscription ends; ECM 11 comes (early) and is refused.
    air.emm(CARD, REVOKE, 1);
    air.ecm(ECM_PID, 11);
    for seq in 5..8 {
        air.es(VIDEO, Some(10), seq, None);
    }
    for seq in 8..12 {
        air.es(VIDEO, Some(11), seq, None);
    }
    // Renewed: the last ECM goes to the card again at once.
    air.emm(CARD, ENTITLE, 2);
    for seq in 12..15 {
        air.es(VIDEO, Some(11), seq, None);
    }
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    // Period 10 runs to its end although ECM 10 carried CW_11.
    let want: Vec<u32> = (0..8).chain(12..15).collect();
    assert_eq!(seqs(&out, VIDEO), want);
    let stats = p.stats();
    assert_eq!((stats.undecryptable, stats.ecms_refused), (4, 1));
    let card = p.into_card();
    assert_eq!(card.ecms, [10, 11, 11]);
    assert_eq!(card.emms, [(CARD, REVOKE), (CARD, ENTITLE)]);
}

#[test]
fn not_entitled_stops_the_output_and_gives_up_after_the_wait() {
    let mut air = Air::new();
    air.tables();
    // An EMM before the ECM (one after would have the ECM sent again).
    air.emm(CARD, NOTHING, 1);
    air.ecm(ECM_PID, 10);
    // Half a second of stream time per packet.
    for seq in 0..10 {
        air.es(VIDEO, Some(10), seq, Some(u64::from(seq) * SECOND / 2));
    }
    let o = PipelineOptions {
        entitlement_wait: Duration::from_secs(2),
        ..opts()
    };
    let r = run(&air.ts, ScriptedCa::not_entitled(), o.clone());
    let message = "card 42 has no entitlement for product 7";
    match &r.result {
        Err(f @ Failure::NotEntitled(m)) => {
            assert_eq!(m, message);
            assert_eq!(f.exit_code(), exit::NOT_ENTITLED);
        }
        other => panic!("{other:?}"),
    }
    // Given up at the packet 2 s of PCR after the refusal (the 5th), not
    // before: the wall clock has not run that long.
    let tables_and_ca = air.ts.len() / PACKET_LEN - 10;
    assert_eq!(r.p.stats().packets_in, tables_and_ca as u64 + 5);
    assert!(seqs(&r.out, VIDEO).is_empty());
    let stats = r.p.stats();
    assert_eq!((stats.ecms_refused, stats.undecryptable), (1, 5));
    // The EMMs still reached the card.
    assert_eq!(r.p.into_card().emms, [(CARD, NOTHING)]);

    // A stream that ends before the wait: the run fails all the same.
    let short = &air.ts[..(tables_and_ca + 2) * PACKET_LEN];
    let r = run(short, ScriptedCa::not_entitled(), o);
    assert!(
        matches!(&r.result, Err(Failure::NotEntitled(m)) if m == message),
        "{:?}",
        r.result
    );
}

#[test]
fn paired_elsewhere_the_emms_still_reach_the_card_until_it_is_paired_here() {
    let mut air = Air::new();
    air.tables();
    air.emm(CARD, NOTHING, 1);
    air.ecm(ECM_PID, 10);
    for seq in 0..5 {
        air.es(VIDEO, Some(10), seq, None);
    }
    air.emm(OTHER_CARD, PAIR, 2);
    // Every EMM the card accepts may have paired it: the ECM is sent
    // again (and refused again).
    air.emm(GLOBAL_ADDRESS, NOTHING, 3);
    // The operator's `headend pair` reaches the card.
    air.emm(CARD, PAIR, 4);
    for seq in 5..10 {
        air.es(VIDEO, Some(10), seq, None);
    }
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::paired_elsewhere(), opts());
    result.unwrap();
    assert_eq!(seqs(&out, VIDEO), [5, 6, 7, 8, 9]);
    let stats = p.stats();
    assert_eq!((stats.ecms_refused, stats.undecryptable), (2, 5));
    let card = p.into_card();
    assert_eq!(
        card.emms,
        [(CARD, NOTHING), (GLOBAL_ADDRESS, NOTHING), (CARD, PAIR)]
    );
    // Refused, asked again after each EMM, given after the pairing one.
    assert_eq!(card.ecms, [10, 10, 10]);

    // Never paired here: the EMMs keep flowing, no packet goes out, and
    // the run ends with the operator's fix.
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    for n in 0..5u8 {
        air.emm(CARD, NOTHING, n);
        air.es(VIDEO, Some(10), u32::from(n), None);
    }
    let r = run(&air.ts, ScriptedCa::paired_elsewhere(), opts());
    match &r.result {
        Err(f @ Failure::Card(LinkError::PairedElsewhere { card_id, .. })) => {
            assert_eq!(*card_id, CARD);
            assert_eq!(f.exit_code(), exit::PAIRED_ELSEWHERE);
            assert!(f.to_string().contains("headend pair 42 abab"), "{f}");
        }
        other => panic!("{other:?}"),
    }
    assert!(seqs(&r.out, VIDEO).is_empty());
    assert_eq!(r.p.into_card().emms.len(), 5);

    // With a pairing wait, the run gives up once it has passed.
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    for seq in 0..10 {
        air.es(VIDEO, Some(10), seq, Some(u64::from(seq) * SECOND));
    }
    let o = PipelineOptions {
        pairing_wait: Some(Duration::from_secs(3)),
        ..opts()
    };
    let r = run(&air.ts, ScriptedCa::paired_elsewhere(), o);
    assert!(
        matches!(
            r.result,
            Err(Failure::Card(LinkError::PairedElsewhere { .. }))
        ),
        "{:?}",
        r.result
    );
    assert_eq!(
        r.p.stats().packets_in as usize,
        air.ts.len() / PACKET_LEN - 10 + 4
    );
}

#[test]
fn a_clear_service_is_refused_not_passed_through() {
    let mut air = Air::new();
    air.pat(&[(SERVICE, PMT_PID)]);
    air.pmt(PMT_PID, &service_pmt(SERVICE, VIDEO, &[VIDEO], None));
    for seq in 0..3 {
        air.es(VIDEO, None, seq, None);
    }
    let r = run(&air.ts, ScriptedCa::new(), opts());
    match &r.result {
        Err(f @ Failure::NotScrambled { service: SERVICE }) => {
            assert_eq!(f.exit_code(), exit::UNKNOWN_SERVICE);
        }
        other => panic!("{other:?}"),
    }
    assert!(r.out.is_empty());
    assert!(r.p.into_card().ecms.is_empty());

    // Another CA system's service is refused too, naming it.
    let mut air = Air::new();
    air.pat(&[(SERVICE, PMT_PID)]);
    air.pmt(PMT_PID, &foreign_pmt(SERVICE, VIDEO));
    let r = run(&air.ts, ScriptedCa::new(), opts());
    assert!(
        matches!(&r.result, Err(Failure::ForeignCa { ca_system_ids, .. }) if ca_system_ids == &[0x0B00]),
        "{:?}",
        r.result
    );

    // A service that turns clear mid-stream (a headend failing open) stops
    // the run rather than pass its packets on.
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    air.es(VIDEO, Some(10), 0, None);
    let mut clear = service_pmt(SERVICE, VIDEO, &[VIDEO, AUDIO], None);
    clear.version = 1;
    air.pmt(PMT_PID, &clear);
    air.es(VIDEO, None, 1, None);
    let r = run(&air.ts, ScriptedCa::new(), opts());
    assert!(
        matches!(r.result, Err(Failure::NotScrambled { .. })),
        "{:?}",
        r.result
    );
    assert_eq!(seqs(&r.out, VIDEO), [0]);
}

#[test]
fn a_pcr_pid_shared_with_another_service_gives_its_pcr_alone() {
    // Service 1 takes its PCR from service 2's video, 0x201, which is
    // scrambled under keys this card never gets.
    let mut air = Air::new();
    air.pat(&[(SERVICE, PMT_PID), (2, 0x200)]);
    air.pmt(
        PMT_PID,
        &service_pmt(SERVICE, 0x201, &[VIDEO, AUDIO], Some(ECM_PID)),
    );
    air.pmt(0x200, &service_pmt(2, 0x201, &[0x201], Some(0x1F8)));
    air.ecm(ECM_PID, 10);
    for seq in 0..6u32 {
        air.es(VIDEO, Some(10), seq, None);
        // Every other packet of 0x201 has a PCR.
        let pcr = (seq % 2 == 0).then(|| u64::from(seq) * SECOND);
        air.es(0x201, Some(99), seq, pcr);
    }
    air.pcr_alone(0x201, 7 * SECOND);
    air.es(0x201, None, 6, Some(8 * SECOND));
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    assert_eq!(p.stages.map.pcr_pid(), Some(0x201));
    assert_eq!(p.stages.map.role(0x201), Role::PcrOnly);
    assert_eq!(seqs(&out, VIDEO), (0..6).collect::<Vec<_>>());
    // Three scrambled packets without a PCR are dropped.
    assert_eq!(p.stats().scrambled_elsewhere, 3);

    let input = by_pid(&{
        // The input's 0x201 packets, with their scrambling bits cleared so
        // that `by_pid` takes them.
        let mut v = air.ts.clone();
        for p in v.chunks_mut(PACKET_LEN) {
            if let Ok(mut p) = ts::PacketMut::new(p) {
                p.set_scrambling(ts::ScramblingControl::CLEAR);
            }
        }
        v
    })
    .remove(&0x201)
    .unwrap();
    let output = by_pid(&out).remove(&0x201).unwrap();
    let pcr_packets: Vec<_> = input
        .iter()
        .filter(|p| Packet::from_array(p).unwrap().pcr().is_some())
        .collect();
    assert_eq!(output.len(), pcr_packets.len());
    for (o, i) in output.iter().zip(pcr_packets) {
        let (o, i) = (
            Packet::from_array(o).unwrap(),
            Packet::from_array(i).unwrap(),
        );
        assert_eq!(o.pcr(), i.pcr());
        assert_eq!(o.continuity_counter(), i.continuity_counter());
    }
    // The scrambled ones keep no payload; the clear one goes out whole.
    let payloads: Vec<bool> = output
        .iter()
        .map(|p| Packet::from_array(p).unwrap().has_payload())
        .collect();
    assert_eq!(payloads, [false, false, false, false, true]);
    assert_eq!(seqs(&out, 0x201), [6]);
    // The service's clock runs on that PCR: 8 s of it.
    let clock = &p.stages.clock;
    assert!(clock.since(StreamClock::new().now()) >= Duration::from_secs(8));
}

#[test]
fn a_service_that_leaves_the_pat_mid_stream_is_waited_for_not_an_error() {
    // A fail-closed headend withholds a service it cannot scramble: it
    // leaves the PAT (another service stays), then comes back.
    let mut air = Air::new();
    air.pat(&[(SERVICE, PMT_PID), (2, 0x200)]);
    air.cat(EMM_PID);
    air.pmt(
        PMT_PID,
        &service_pmt(SERVICE, VIDEO, &[VIDEO], Some(ECM_PID)),
    );
    air.ecm(ECM_PID, 10);
    for seq in 0..10 {
        air.es(VIDEO, Some(10), seq, Some(u64::from(seq) * SECOND / 25));
    }
    air.pat(&[(2, 0x200)]);
    air.pat(&[(2, 0x200)]);
    air.pat(&[(SERVICE, PMT_PID), (2, 0x200)]);
    air.pmt(
        PMT_PID,
        &service_pmt(SERVICE, VIDEO, &[VIDEO], Some(ECM_PID)),
    );
    // Its ECMs come back with it: the packets' crypto period is taken
    // from them again.
    air.ecm(ECM_PID, 10);
    for seq in 10..20 {
        air.es(VIDEO, Some(10), seq, Some(u64::from(seq) * SECOND / 25));
    }
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    assert_eq!(p.service(), Some(SERVICE));
    let expect: Vec<u32> = (0..20).collect();
    assert_eq!(seqs(&out, VIDEO), expect);
    let s = p.stats();
    assert_eq!((s.service_lost, s.service_returned), (1, 1), "{s:?}");

    // A service asked for that was never there is still an error at once.
    let mut air = Air::new();
    air.pat(&[(2, 0x200)]);
    let o = PipelineOptions {
        service: Some(SERVICE),
        ..opts()
    };
    let r = run(&air.ts, ScriptedCa::new(), o);
    assert!(matches!(
        r.result,
        Err(Failure::UnknownService {
            service: SERVICE,
            ..
        })
    ));
}

// ---- a slow card --------------------------------------------------------

/// A card as slow as a real one behind a T=0 reader.
const SLOW: Duration = Duration::from_millis(300);

fn slow_card(delay: Duration) -> ScriptedCa {
    ScriptedCa {
        delay,
        ..ScriptedCa::new()
    }
}

/// Pushes `air` one packet at a time, `pace` apart as a live input
/// brings them; the longest push from packet `from` on, and the run.
fn paced(
    air: &Air,
    card: ScriptedCa,
    o: PipelineOptions,
    pace: Duration,
    from: usize,
) -> (Duration, Run) {
    let mut p = Pipeline::new(card, o);
    let mut out = Vec::new();
    let mut longest = Duration::ZERO;
    let start = Instant::now();
    for (i, chunk) in air.ts.chunks(PACKET_LEN).enumerate() {
        // On the schedule of the input, not after the previous push.
        let due = start + pace * u32::try_from(i).unwrap();
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        p.push(chunk, &mut out).unwrap();
        if i >= from {
            longest = longest.max(t.elapsed());
        }
    }
    let result = p.finish(&mut out);
    (longest, Run { out, result, p })
}

#[test]
fn the_card_works_through_its_queue_between_bursts_of_input() {
    // A live burst: the ECM and ten EMMs at once, then no input. The
    // input loop polls the card between inputs, and the card goes through
    // all of them without waiting for more packets.
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    for n in 0..10 {
        air.emm(CARD, NOTHING, n);
    }
    air.es(VIDEO, Some(10), 0, None);
    let o = PipelineOptions {
        live: true,
        ..opts()
    };
    let mut p = Pipeline::new(slow_card(Duration::from_millis(5)), o);
    let mut out = Vec::new();
    p.push(&air.ts, &mut out).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.card_working() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        p.poll_card().unwrap();
    }
    assert!(!p.card_working(), "{:?}", p.stats());
    let card = p.into_card();
    assert_eq!((card.ecms.len(), card.emms.len()), (1, 10));
}

#[test]
fn at_a_zap_the_first_ecm_goes_to_the_card_before_an_emm_that_came_first() {
    // A live tune-in: an EMM for the card, then, 10 ms later, the ECM. The
    // EMM waits (it would hold the first picture up for the card's time),
    // the ECM goes first, and the EMM follows once the ECM is answered.
    let mut air = Air::new();
    air.tables();
    air.emm(CARD, NOTHING, 1);
    air.ecm(ECM_PID, 10);
    for seq in 0..20 {
        air.es(VIDEO, Some(10), seq, None);
    }
    let o = PipelineOptions {
        live: true,
        ..opts()
    };
    let (_, r) = paced(&air, slow_card(SLOW), o, Duration::from_millis(10), 0);
    r.result.unwrap();
    assert_eq!(seqs(&r.out, VIDEO), (0..20).collect::<Vec<_>>());
    let stats = r.p.stats();
    assert!(stats.ecm_wait_us_max < 100_000, "{stats:?}");
    let card = r.p.into_card();
    assert_eq!((card.ecms.len(), card.emms.len()), (1, 1));
}

#[test]
fn a_slow_card_does_not_stop_the_packets() {
    // Four crypto periods of 16 packets, 45 ms apart (720 ms a period,
    // more than an EMM and an ECM at 300 ms each). An EMM comes just
    // before each ECM, so that the ECM finds the card busy.
    let mut air = Air::new();
    air.tables();
    let mut seq = 0;
    for epoch in 10..14u64 {
        air.emm(CARD, NOTHING, epoch as u8);
        air.ecm(ECM_PID, epoch);
        for _ in 0..16 {
            air.es(VIDEO, Some(epoch), seq, None);
            seq += 1;
        }
    }
    let first_es = air.ts.len() / PACKET_LEN - 4 * 18 + 2;
    let o = PipelineOptions {
        live: true,
        ..opts()
    };
    let (longest, r) = paced(
        &air,
        slow_card(SLOW),
        o,
        Duration::from_millis(45),
        first_es + 16,
    );
    r.result.unwrap();
    // Every packet out, in order, and none waited for the card after the
    // first key: the next period's key was always already held.
    assert_eq!(seqs(&r.out, VIDEO), (0..seq).collect::<Vec<_>>());
    assert!(longest < SLOW / 3, "a push took {longest:?}");
    let stats = r.p.stats();
    assert_eq!(
        (stats.undecryptable, stats.ecms_stale, stats.emms_dropped),
        (0, 0, 0)
    );
    assert!(
        stats.card_us_p50 >= 300_000 && stats.card_us_max >= 300_000,
        "{stats:?}"
    );
    // The ECM after an EMM waited for it.
    assert!(stats.ecm_wait_us_max >= 200_000, "{stats:?}");
    let card = r.p.into_card();
    assert_eq!(card.ecms, [10, 11, 12, 13]);
    assert_eq!(card.emms.len(), 4);

    // The same card in stream order stops the packets for its time.
    let o = PipelineOptions {
        card_thread: false,
        ..opts()
    };
    let (longest, r) = paced(&air, slow_card(SLOW), o, Duration::ZERO, first_es + 16);
    r.result.unwrap();
    assert!(longest >= SLOW, "{longest:?}");
}

#[test]
fn a_card_slower_than_the_stream_drops_stale_ecms_and_old_emms_live_and_waits_on_a_file() {
    let mut air = Air::new();
    air.tables();
    // 100 distinct EMMs for the card, then three ECMs at once.
    for n in 0..100u8 {
        air.emm(CARD, NOTHING, n);
    }
    for epoch in 10..13u64 {
        air.ecm(ECM_PID, epoch);
    }
    air.es(VIDEO, Some(12), 0, None);
    let delay = Duration::from_millis(5);
    let live = PipelineOptions {
        live: true,
        ..opts()
    };
    let r = run(&air.ts, slow_card(delay), live);
    r.result.unwrap();
    let stats = r.p.stats();
    // At most EMM_QUEUE wait, the rest are dropped (the carousel brings
    // them again); of the ECMs only the newest is sent, and the packet
    // waits for its key.
    assert!(
        stats.emms_dropped >= 100 - access::EMM_QUEUE as u64 - 5,
        "{stats:?}"
    );
    assert_eq!(stats.emms_to_card + stats.emms_dropped, 100, "{stats:?}");
    assert!(stats.ecms_stale >= 1, "{stats:?}");
    assert_eq!(seqs(&r.out, VIDEO), [0]);
    assert_eq!(r.p.into_card().ecms.last(), Some(&12));

    // A file waits for the card: nothing is dropped.
    let r = run(&air.ts, slow_card(delay), opts());
    r.result.unwrap();
    let stats = r.p.stats();
    assert_eq!((stats.emms_dropped, stats.ecms_stale), (0, 0));
    assert_eq!(stats.emms_to_card, 100);
    assert_eq!(seqs(&r.out, VIDEO), [0]);
    assert_eq!(r.p.into_card().ecms, [10, 11, 12]);
}

#[test]
fn ecms_go_before_the_emms_queued_ahead_of_them() {
    let mut air = Air::new();
    air.tables();
    for n in 0..5u8 {
        air.emm(CARD, NOTHING, n);
    }
    air.ecm(ECM_PID, 10);
    air.es(VIDEO, Some(10), 0, None);
    let r = run(&air.ts, slow_card(Duration::from_millis(20)), opts());
    r.result.unwrap();
    assert_eq!(seqs(&r.out, VIDEO), [0]);
    let stats = r.p.stats();
    // The first EMM was in the card's hands when the ECM came; the ECM
    // went next, before the four others.
    assert!(stats.ecm_wait_us_max < 60_000, "{stats:?}");
    assert_eq!(r.p.into_card().emms.len(), 5);
}

#[test]
fn emms_the_card_refused_as_replayed_are_not_sent_again() {
    // The scripted card accepts everything; a repetition after it
    // accepted is held back, whether queued or done.
    let mut air = Air::new();
    air.tables();
    air.ecm(ECM_PID, 10);
    for _ in 0..3 {
        air.emm(CARD, NOTHING, 1);
        air.emm(CARD, NOTHING, 2);
    }
    let r = run(&air.ts, slow_card(Duration::from_millis(2)), opts());
    r.result.unwrap();
    let stats = r.p.stats();
    assert_eq!((stats.emms_to_card, stats.emm_duplicates), (2, 4));
}

// ---- joining a live stream, and a stream that changes under it ----------

/// H.264 access unit starts, as a PES packet's first bytes: an access
/// unit delimiter and an SPS, then an IDR slice (a key frame) or a P slice.
const IDR: &[u8] = &[
    0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x65,
];
const P_SLICE: &[u8] = &[0, 0, 0, 1, 0x09, 0x30, 0, 0, 1, 0x41];

/// Video (H.264, the PCR) and AAC audio, scrambled with Iodoform on `ecm`.
fn av_pmt(version: u8, es: &[(u8, u16)], ecm: u16) -> Pmt {
    let mut pmt = service_pmt(SERVICE, VIDEO, &[], Some(ecm));
    pmt.version = version;
    pmt.streams = es
        .iter()
        .map(|&(stream_type, pid)| ts::psi::PmtStream {
            stream_type,
            pid,
            descriptors: Vec::new(),
        })
        .collect();
    pmt
}

const H264: u8 = 0x1B;
const AAC: u8 = 0x0F;

fn joining() -> PipelineOptions {
    PipelineOptions {
        rap_join: true,
        ..opts()
    }
}

/// The PAT, the CAT and the audio-video PMT.
fn av_tables(air: &mut Air) {
    air.pat(&[(SERVICE, PMT_PID)]);
    air.cat(EMM_PID);
    air.pmt(PMT_PID, &av_pmt(0, &[(H264, VIDEO), (AAC, AUDIO)], ECM_PID));
}

/// Feeds `ts` one packet at a time.
fn feed(p: &mut Pipeline<ScriptedCa>, ts: &[u8], out: &mut Vec<u8>) {
    for chunk in ts.chunks(PACKET_LEN) {
        p.push(chunk, out).unwrap();
    }
}

#[test]
fn video_starts_at_its_first_random_access_point_and_audio_at_its_first_pes_start() {
    let mut air = Air::new();
    av_tables(&mut air);
    air.ecm(ECM_PID, 10);
    let e = Some(10);
    // Joined mid-GOP: the rest of a PES, a P frame, then a key frame
    // marked by the random_access_indicator.
    air.pes_more(VIDEO, e, 0, &[]);
    air.pes_more(AUDIO, e, 0, &[]);
    air.pes_start(VIDEO, e, 1, P_SLICE, false);
    air.pes_more(VIDEO, e, 2, &[]);
    air.pes_start(AUDIO, e, 1, &[], false);
    air.pes_start(VIDEO, e, 3, IDR, true);
    air.pes_more(VIDEO, e, 4, &[]);
    air.pes_more(AUDIO, e, 2, &[]);
    air.pes_start(VIDEO, e, 5, P_SLICE, false);
    air.pes_more(VIDEO, e, 6, &[]);

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), joining());
    result.unwrap();
    assert_eq!(seqs(&out, VIDEO), [3, 4, 5, 6]);
    assert_eq!(seqs(&out, AUDIO), [1, 2]);
    let s = p.stats();
    assert_eq!((s.held_before_rap, s.rap_joins), (4, 2), "{s:?}");
    assert_eq!((s.descrambled, s.undecryptable, s.cc_errors), (10, 0, 0));
    // The PAT and the PMT are written from the start, for the player.
    assert_eq!(sections(&out, PAT_PID).len(), 1);
    assert_eq!(pmts(&out, PMT_PID).len(), 1);

    // Turned off, everything that can be descrambled is written.
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), opts());
    result.unwrap();
    assert_eq!(seqs(&out, VIDEO), (0..7).collect::<Vec<_>>());
    assert_eq!(p.stats().held_before_rap, 0);
}

#[test]
fn without_the_indicator_the_key_frame_is_found_in_the_pes_even_a_few_packets_in() {
    let mut air = Air::new();
    av_tables(&mut air);
    air.ecm(ECM_PID, 10);
    let e = Some(10);
    air.pes_start(VIDEO, e, 0, P_SLICE, false);
    // A key frame whose slice starts in the PES packet's fifth TS packet,
    // after a long SEI.
    air.pes_start(
        VIDEO,
        e,
        1,
        &[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x06, 5],
        false,
    );
    air.pes_more(VIDEO, e, 2, &[0x44, 0x55]);
    air.pes_more(VIDEO, e, 3, &[0x66]);
    air.pes_more(VIDEO, e, 4, &[0, 0, 1, 0x65, 0x88]);
    air.pes_more(VIDEO, e, 5, &[]);
    // A P frame: written, the stream has started.
    air.pes_start(VIDEO, e, 6, P_SLICE, false);

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), joining());
    result.unwrap();
    // The IDR's PES packet comes out whole, from its first packet.
    assert_eq!(seqs(&out, VIDEO), [1, 2, 3, 4, 5, 6]);
    let s = p.stats();
    assert_eq!((s.held_before_rap, s.rap_joins), (1, 1), "{s:?}");
}

#[test]
fn a_continuity_jump_restarts_that_component_at_its_next_random_access_point() {
    let mut air = Air::new();
    av_tables(&mut air);
    air.ecm(ECM_PID, 10);
    let e = Some(10);
    air.pes_start(VIDEO, e, 0, IDR, true);
    air.pes_start(AUDIO, e, 0, &[], false);
    air.pes_more(VIDEO, e, 1, &[]);
    air.lose(VIDEO, 1);
    // After a jump nothing is descrambled until an ECM comes (the keys'
    // rule), and the video waits for its next random access point.
    air.pes_more(VIDEO, e, 3, &[]);
    air.ecm(ECM_PID, 10);
    air.pes_more(AUDIO, e, 1, &[]);
    air.pes_start(VIDEO, e, 4, P_SLICE, false);
    air.pes_start(VIDEO, e, 5, IDR, true);
    air.pes_more(VIDEO, e, 6, &[]);
    air.lose(AUDIO, 1);
    air.pes_more(AUDIO, e, 3, &[]);
    air.ecm(ECM_PID, 10);
    air.pes_start(AUDIO, e, 4, &[], false);

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), joining());
    result.unwrap();
    assert_eq!(seqs(&out, VIDEO), [0, 1, 5, 6]);
    assert_eq!(seqs(&out, AUDIO), [0, 1, 4]);
    let s = p.stats();
    assert_eq!(
        (s.cc_errors, s.held_before_rap, s.rap_joins, s.after_gap),
        (2, 1, 4, 2),
        "{s:?}"
    );
}

#[test]
fn an_input_outage_is_counted_and_the_output_starts_again_at_a_random_access_point() {
    let mut before = Air::new();
    av_tables(&mut before);
    before.ecm(ECM_PID, 10);
    before.pes_start(VIDEO, Some(10), 0, IDR, true);
    before.pes_start(AUDIO, Some(10), 0, &[], false);
    before.pes_more(VIDEO, Some(10), 1, &[]);
    // (The reader keeps a packet until it sees the next one's sync byte.)
    before.ts.extend_from_slice(&ts::packet::null_packet());

    // Two crypto periods later, same parity: until the ECM of the period
    // on the air arrives, nothing may be descrambled with the key of
    // period 10 (it would be noise).
    let mut after = Air::new();
    after.pes_more(VIDEO, Some(12), 2, &[]);
    after.pes_start(AUDIO, Some(12), 1, &[], false);
    after.pat(&[(SERVICE, PMT_PID)]);
    after.pmt(PMT_PID, &av_pmt(0, &[(H264, VIDEO), (AAC, AUDIO)], ECM_PID));
    after.ecm(ECM_PID, 12);
    after.pes_more(VIDEO, Some(12), 3, &[]);
    after.pes_more(AUDIO, Some(12), 2, &[]);
    after.pes_start(AUDIO, Some(12), 3, &[], false);
    after.pes_start(VIDEO, Some(12), 4, IDR, true);
    after.pes_more(VIDEO, Some(12), 5, &[]);

    let o = PipelineOptions {
        live: true,
        ..joining()
    };
    let mut p = Pipeline::new(ScriptedCa::new(), o);
    let mut out = Vec::new();
    feed(&mut p, &before.ts, &mut out);
    p.input_outage(Duration::from_secs(2));
    feed(&mut p, &after.ts, &mut out);
    p.finish(&mut out).unwrap();
    assert_eq!(seqs(&out, VIDEO), [0, 1, 4, 5]);
    assert_eq!(seqs(&out, AUDIO), [0, 3]);
    let s = p.stats();
    assert_eq!(s.input_outages, 1);
    assert_eq!(
        s.undecryptable, 0,
        "a join after an outage is not a loss: {s:?}"
    );
    assert_eq!((s.after_gap, s.input_gaps), (2, 1), "{s:?}");
    assert_eq!(s.cc_errors, 0, "{s:?}");
    assert_eq!(p.into_card().ecms, [10, 12]);
}

#[test]
fn pmt_and_cat_changes_are_followed_live_and_counted() {
    let mut air = Air::new();
    av_tables(&mut air);
    air.ecm(ECM_PID, 10);
    air.pes_start(VIDEO, Some(10), 0, IDR, true);
    air.pes_start(AUDIO, Some(10), 0, &[], false);
    // Version 1: a new ECM PID.
    air.pmt(PMT_PID, &av_pmt(1, &[(H264, VIDEO), (AAC, AUDIO)], 0x1F4));
    air.pmt(PMT_PID, &av_pmt(1, &[(H264, VIDEO), (AAC, AUDIO)], 0x1F4));
    air.ecm(0x1F4, 11);
    air.pes_more(VIDEO, Some(11), 1, &[]);
    // Version 2: a second audio added (it starts at its first PES start).
    let three = [(H264, VIDEO), (AAC, AUDIO), (AAC, 0x103)];
    air.pmt(PMT_PID, &av_pmt(2, &three, 0x1F4));
    air.pes_more(0x103, Some(11), 0, &[]);
    air.pes_start(0x103, Some(11), 1, &[], false);
    air.pes_more(AUDIO, Some(11), 1, &[]);
    // Version 3: the first audio removed; its packets are dropped.
    air.pmt(PMT_PID, &av_pmt(3, &[(H264, VIDEO), (AAC, 0x103)], 0x1F4));
    air.pes_more(AUDIO, Some(11), 2, &[]);
    air.pes_more(0x103, Some(11), 2, &[]);
    // A new CAT: the EMMs move.
    let mut cat = ts::psi::Cat {
        version: 1,
        current_next: true,
        descriptors: vec![ts::psi::Descriptor::iodoform_ca(0x1F5)],
    };
    air.section(ts::packet::CAT_PID, &cat.to_section().unwrap());
    let mut emm = vec![0u8; proto::emm::EMM_HEADER_LEN + 2];
    emm[proto::emm::ADDRESS_OFFSET..proto::emm::ADDRESS_OFFSET + 4]
        .copy_from_slice(&CARD.to_be_bytes());
    emm[proto::emm::EMM_HEADER_LEN] = NOTHING;
    emm[proto::emm::EMM_HEADER_LEN + 1] = 9;
    let emm = ts::psi::emm_section(ts::psi::TableId(0x82), &emm).unwrap();
    air.section(0x1F5, &emm);
    // The same CAT again is no change.
    air.section(ts::packet::CAT_PID, &cat.to_section().unwrap());
    cat.version = 2;
    let _ = cat;

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), joining());
    result.unwrap();
    let s = p.stats();
    assert_eq!((s.pmt_changes, s.cat_changes), (3, 1), "{s:?}");
    assert_eq!(p.stages.map.emm_pid(), Some(0x1F5));
    assert_eq!(p.stages.map.ecm_pid(), Some(0x1F4));
    assert_eq!(seqs(&out, VIDEO), [0, 1]);
    assert_eq!(seqs(&out, AUDIO), [0, 1]);
    assert_eq!(seqs(&out, 0x103), [1, 2]);
    let versions: Vec<u8> = pmts(&out, PMT_PID).iter().map(|t| t.version).collect();
    assert_eq!(versions, [0, 1, 1, 2, 3]);
    let card = p.into_card();
    assert_eq!(card.ecms, [10, 11]);
    assert_eq!(card.emms, [(CARD, NOTHING)]);
}

#[test]
fn multi_section_pat_and_cat_are_gathered_before_they_are_read() {
    let mut air = Air::new();
    let pat = |version: u8, services: &[(u16, u16)]| ts::psi::Pat {
        transport_stream_id: 1,
        version,
        current_next: true,
        programs: services
            .iter()
            .map(|&(program_number, pid)| ts::psi::PatEntry {
                program_number,
                pid,
            })
            .collect(),
    };
    // The service is in the PAT's second section; the EMM PID in the
    // CAT's second.
    let p0 = pat(0, &[(5, 0x500), (SERVICE, PMT_PID)])
        .to_sections(1)
        .unwrap();
    assert_eq!(p0.len(), 2);
    let c0 = ts::psi::Cat {
        version: 0,
        current_next: true,
        descriptors: vec![
            ts::psi::Descriptor::Ca(ts::psi::CaDescriptor {
                ca_system_id: 0x0B00,
                ca_pid: 0x1E1,
                private_data: Vec::new(),
            }),
            ts::psi::Descriptor::iodoform_ca(EMM_PID),
        ],
    }
    .to_sections(1)
    .unwrap();
    for s in p0.iter().chain(&c0) {
        let pid = if s[0] == 0 {
            PAT_PID
        } else {
            ts::packet::CAT_PID
        };
        air.section(pid, s);
    }
    air.pmt(PMT_PID, &av_pmt(0, &[(H264, VIDEO)], ECM_PID));
    air.ecm(ECM_PID, 10);
    air.emm(CARD, NOTHING, 1);
    air.es(VIDEO, Some(10), 0, None);
    // Version 1 in three sections: the service moves its PMT.
    for s in pat(1, &[(5, 0x500), (6, 0x600), (SERVICE, 0x110)])
        .to_sections(1)
        .unwrap()
    {
        air.section(PAT_PID, &s);
    }
    air.pmt(0x110, &av_pmt(0, &[(H264, VIDEO)], ECM_PID));
    air.es(VIDEO, Some(10), 1, None);

    let o = PipelineOptions {
        service: Some(SERVICE),
        ..opts()
    };
    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), o);
    result.unwrap();
    assert_eq!(p.service(), Some(SERVICE));
    assert_eq!(p.stages.map.emm_pid(), Some(EMM_PID));
    assert_eq!(p.stages.map.pmt_pid(), Some(0x110));
    let s = p.stats();
    assert_eq!((s.pat_changes, s.section_errors), (1, 0), "{s:?}");
    assert_eq!(seqs(&out, VIDEO), [0, 1]);
    // The output's PAT is one section with this service alone.
    let last = sections(&out, PAT_PID).pop().unwrap();
    let out_pat = Pat::from_section(&last).unwrap();
    assert_eq!(out_pat.programs.len(), 1);
    assert_eq!(out_pat.pmt_pid(SERVICE), Some(0x110));
    assert_eq!(p.into_card().emms, [(CARD, NOTHING)]);
}

#[test]
fn a_service_whose_pmt_stops_is_lost_and_comes_back_at_a_random_access_point() {
    let mut air = Air::new();
    av_tables(&mut air);
    air.ecm(ECM_PID, 10);
    air.pes_start(VIDEO, Some(10), 0, IDR, true);
    air.pes_more(VIDEO, Some(10), 1, &[]);
    // The PAT goes on, the PMT and the service's packets stop.
    for _ in 0..=super::PMT_LOST_AFTER_PATS {
        air.pat(&[(SERVICE, PMT_PID)]);
    }
    air.pmt(PMT_PID, &av_pmt(0, &[(H264, VIDEO), (AAC, AUDIO)], ECM_PID));
    air.ecm(ECM_PID, 10);
    air.pes_more(VIDEO, Some(10), 2, &[]);
    air.pes_start(VIDEO, Some(10), 3, IDR, true);

    let Run { out, result, p, .. } = run(&air.ts, ScriptedCa::new(), joining());
    result.unwrap();
    let s = p.stats();
    assert_eq!((s.service_lost, s.service_returned), (1, 1), "{s:?}");
    assert_eq!(seqs(&out, VIDEO), [0, 1, 3]);

    // One PAT fewer: not lost.
    let mut air = Air::new();
    av_tables(&mut air);
    air.ecm(ECM_PID, 10);
    for _ in 0..super::PMT_LOST_AFTER_PATS {
        air.pat(&[(SERVICE, PMT_PID)]);
    }
    air.pmt(PMT_PID, &av_pmt(0, &[(H264, VIDEO)], ECM_PID));
    let Run { result, p, .. } = run(&air.ts, ScriptedCa::new(), joining());
    result.unwrap();
    assert_eq!(p.stats().service_lost, 0);
}
