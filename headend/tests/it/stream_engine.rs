//! The stream engine on a real TS made by ffmpeg, file to file: PSI
//! signalling, scrambling and parity, byte-identical descrambling with the
//! CWs from the ECMs on the air, ECM repetition and alternation, the EMM
//! carousel within its bandwidth, continuity counters and CRCs.

use crate::stream_support::*;
use headend::stream::{run_channel, spawn_channel, validate, Shutdown};
use headend_engine::stream::{process_buffer, ChannelStreamConfig, EmmInsertion, Mux};
use std::time::Duration;
use ts::packet::{null_packet, Packet, Packets, PACKET_LEN};

const PERIOD_MS: u64 = 200;
const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;

fn config(input: &str, output: &str) -> ChannelStreamConfig {
    let mut c = ChannelStreamConfig::new("test", input, output, EMM_PID).service(SERVICE, ECM_PID);
    c.start_unix_ms = Some(START_MS);
    c
}

#[test]
fn file_to_file_scrambles_signals_and_descrambles_byte_identical() {
    let Some(clear) = ffmpeg_ts(4) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (dir.path().join("in.ts"), dir.path().join("out.ts"));
    std::fs::write(&inp, &clear).unwrap();
    let (feed, key) = feed(PERIOD_MS, 40);
    let carousel: Vec<Vec<u8>> = feed.emm_carousel().iter().map(|s| s.to_vec()).collect();
    let cfg = config(inp.to_str().unwrap(), outp.to_str().unwrap());
    let stats = run_channel(cfg, feed, Shutdown::new()).unwrap();
    let out = std::fs::read(&outp).unwrap();
    assert_eq!(out.len() % PACKET_LEN, 0);
    assert_eq!(stats.packets_out as usize * PACKET_LEN, out.len());
    // Nothing of the input was lost: ffmpeg's PAT and PMT come first.
    assert_eq!(stats.dropped_no_cw, 0, "{stats:?}");
    assert_eq!(stats.dropped_unreferenced, 0, "{stats:?}");
    assert_eq!(stats.psi_errors, 0, "{stats:?}");

    let a = analyze(&out, &key, &[VIDEO, AUDIO]);
    let input = packets_by_pid(&clear);

    // PSI: the PAT as it came, the PMT with our descriptors, a CAT.
    assert!(
        a.psi_errors.is_empty(),
        "section errors (CRC, continuity): {:?}",
        a.psi_errors
    );
    assert!(!a.pat.is_empty());
    assert!(a.pmts.len() >= 10, "{} PMTs", a.pmts.len());
    for pmt in &a.pmts {
        check_pmt_signalling(pmt);
        assert_eq!(pmt.version, a.pmts[0].version, "the PMT did not change");
        assert_eq!(pmt.streams.len(), 2);
    }
    assert!(a.cats.len() >= 7, "{} CATs", a.cats.len());
    for cat in &a.cats {
        assert_eq!(cat.emm_pid(ts::psi::CA_SYSTEM_ID), Some(EMM_PID));
    }

    // Continuity on every PID we wrote or passed.
    assert!(
        a.cc_errors.is_empty(),
        "continuity errors: {:?}",
        a.cc_errors
    );

    // Every ES packet scrambled, with the parity of the ECM on the air,
    // and it descrambles to exactly the input.
    assert_eq!(a.clear_es, 0);
    assert_eq!(a.wrong_parity, 0);
    assert_eq!(a.undecryptable, 0);
    for pid in [VIDEO, AUDIO] {
        let want = with_payload(&input[&pid]);
        let got = &a.es[&pid];
        assert_eq!(got.len(), want.len(), "PID {pid:#x}");
        assert!(
            got == &want,
            "PID {pid:#x}: descrambled packets differ from the input"
        );
    }
    // And the scrambled payloads are not the clear ones.
    let out_by_pid = packets_by_pid(&out);
    let same = out_by_pid[&VIDEO]
        .iter()
        .zip(&input[&VIDEO])
        .filter(|(o, i)| o[8..] == i[8..] && Packet::new(&o[..]).unwrap().payload().len() >= 64)
        .count();
    assert_eq!(same, 0, "scrambled video packets equal to clear ones");

    // ECMs: one per crypto period, table_id alternating with the epoch's
    // parity, repeated every 100 ms.
    let duration = a.duration();
    assert!((3.5..4.5).contains(&duration), "duration {duration}");
    let mut epochs: Vec<u64> = a.ecms.iter().map(|e| e.epoch).collect();
    epochs.dedup();
    assert!(epochs.len() >= 15, "{} crypto periods", epochs.len());
    assert!(
        epochs.windows(2).all(|w| w[1] == w[0] + 1),
        "epochs {epochs:?}"
    );
    // The air clock starts at START_MS with the first packet.
    assert_eq!(
        epochs[0],
        START_MS / PERIOD_MS,
        "first epoch from the stream clock"
    );
    for e in &a.ecms {
        assert_eq!(e.table_id, 0x80 + (e.epoch % 2) as u8);
    }
    for w in a.ecms.windows(2) {
        if w[1].epoch == w[0].epoch + 1 {
            // ECM n carried CW_{n+1}: the receiver had it a period ahead.
            let next_cw = if w[1].epoch % 2 == 0 {
                w[0].even
            } else {
                w[0].odd
            };
            let cur_cw = if w[1].epoch % 2 == 0 {
                w[1].even
            } else {
                w[1].odd
            };
            assert_eq!(next_cw, cur_cw);
        } else {
            assert_eq!(
                (w[0].even, w[0].odd),
                (w[1].even, w[1].odd),
                "repetitions are identical"
            );
        }
    }
    let ecm_times: Vec<f64> = a.ecms.iter().map(|e| a.times[e.at]).collect();
    let gaps: Vec<f64> = ecm_times.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let max = gaps.iter().cloned().fold(0.0, f64::max);
    assert!((0.07..0.13).contains(&mean), "mean ECM interval {mean}");
    let min = gaps.iter().cloned().fold(1.0, f64::min);
    // (Times here are interpolated by output position, which the
    // inserted packets skew a little.)
    assert!(max < 0.125 && min > 0.075, "ECM gaps from {min} to {max} s");
    // Each period's first ECM comes at the start of its epoch, on the
    // stream's clock: START_MS at the first packet, which is three packets
    // (about a millisecond) before ffmpeg's first PCR.
    let first_pcr = Packets::new(&out)
        .position(|p| Packet::from_array(p).unwrap().pcr().is_some())
        .unwrap();
    let t0 = a.times[first_pcr];
    for w in a.ecms.windows(2).filter(|w| w[1].epoch != w[0].epoch) {
        let air_ms = START_MS as f64 + (a.times[w[1].at] - t0) * 1000.0;
        let start = (w[1].epoch * PERIOD_MS) as f64;
        assert!(
            (air_ms - start).abs() < 15.0,
            "epoch {} switched at {air_ms}, not {start}",
            w[1].epoch
        );
    }
    assert_eq!(stats.cw_changes as usize, epochs.len() - 1);

    // EMMs: the carousel in order, within 100 kbit/s (plus the one burst
    // the budget allows), and using most of it.
    assert!(!a.emms.is_empty());
    for (k, (_, s)) in a.emms.iter().enumerate() {
        assert_eq!(
            s,
            &carousel[k % carousel.len()],
            "EMM {k} out of carousel order"
        );
        assert!((0x82..=0x8F).contains(&s[0]));
    }
    let bits = (a.emm_packets * PACKET_LEN * 8) as f64;
    let allowed = 100_000.0 * duration + 4_400.0 * 8.0;
    assert!(bits <= allowed, "EMMs took {bits} bits in {duration} s");
    assert!(
        bits >= 0.8 * 100_000.0 * duration,
        "EMMs took only {bits} bits in {duration} s"
    );
    assert_eq!(stats.emm_sections as usize, a.emms.len());
}

#[test]
fn emms_replace_null_packets_when_asked() {
    let Some(clear) = ffmpeg_ts(4) else { return };
    // Make a constant-rate stream: a null packet after each input packet.
    let mut cbr = Vec::with_capacity(clear.len() * 2);
    for p in Packets::new(&clear) {
        cbr.extend_from_slice(p);
        cbr.extend_from_slice(&null_packet());
    }
    let (feed, key) = feed(PERIOD_MS, 40);
    let mut cfg = config("-", "-");
    cfg.emm_insertion = EmmInsertion::ReplaceNulls;
    let (out, stats, _) = process_buffer(&cfg, feed, &cbr, START_MS).unwrap();
    let a = analyze(&out, &key, &[VIDEO, AUDIO]);
    assert!(a.cc_errors.is_empty(), "{:?}", a.cc_errors);
    assert!(a.psi_errors.is_empty(), "{:?}", a.psi_errors);
    assert_eq!(a.undecryptable + a.wrong_parity + a.clear_es, 0);
    assert!(stats.emm_packets > 100, "{stats:?}");
    // Null packets were replaced one for one, and EMMs went nowhere else.
    let count = |ts: &[u8], pid: u16| packets_by_pid(ts).get(&pid).map_or(0, Vec::len);
    assert_eq!(
        count(&out, 0x1FFF) + count(&out, EMM_PID),
        count(&cbr, 0x1FFF)
    );
    assert_eq!(stats.nulls_replaced as usize, count(&out, EMM_PID));
    // (The last few may still wait for a null packet.)
    assert!(stats.emm_packets - stats.nulls_replaced < 30, "{stats:?}");
    let bits = (a.emm_packets * PACKET_LEN * 8) as f64;
    assert!(bits <= 100_000.0 * a.duration() + 4_400.0 * 8.0);
}

#[test]
fn looping_keeps_continuity_and_flags_the_pcr_discontinuity() {
    let Some(clear) = ffmpeg_ts(4) else { return };
    let (feed, key) = feed(PERIOD_MS, 4);
    let cfg = config("-", "-");
    let mut mux = Mux::new(&cfg, feed, START_MS).unwrap();
    let mut out = Vec::new();
    for pass in 0..3 {
        if pass > 0 {
            mux.input_restarted();
        }
        for p in Packets::new(&clear) {
            mux.push(p);
        }
    }
    mux.flush();
    mux.take_output(&mut out);
    let bytes: Vec<u8> = out.iter().flat_map(|p| p.bytes).collect();
    let stats = *mux.stats();
    assert_eq!(stats.loops, 2);
    assert_eq!(stats.input_cc_errors, 0, "a loop loses nothing");
    assert_eq!(stats.pmt_versions, 1, "same PMT each pass: one version");
    let a = analyze(&bytes, &key, &[VIDEO, AUDIO]);
    assert!(
        a.cc_errors.is_empty(),
        "continuity across loops: {:?}",
        a.cc_errors
    );
    assert_eq!(a.undecryptable + a.wrong_parity + a.clear_es, 0);
    assert_eq!(a.pcr_discontinuities, 2, "one flagged PCR per loop");
    assert_eq!(mux.pcr_discontinuities(), 2);
    // The air clock ran on across the loops: about three times 4 s of
    // crypto periods, each epoch once.
    let mut epochs: Vec<u64> = a.ecms.iter().map(|e| e.epoch).collect();
    epochs.dedup();
    assert!(epochs.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(epochs.len() >= 55, "{} periods", epochs.len());
    // Each pass's ES payloads come out again, byte for byte (the counter
    // aside, and the discontinuity_indicator on the first PCR of a pass).
    let input = packets_by_pid(&clear);
    let want = with_payload(&input[&VIDEO]);
    let got = &a.es[&VIDEO];
    assert_eq!(got.len(), 3 * want.len());
    for (g, w) in got.iter().zip(want.iter().cycle()) {
        assert_eq!(g[..3], w[..3]);
        assert_eq!(g[3] & 0xF0, w[3] & 0xF0);
        assert_eq!(g[4], w[4]);
        let flags = if w[3] & 0x20 != 0 { 0x7F } else { 0xFF };
        assert_eq!(g[5] & flags, w[5] & flags);
        assert_eq!(g[6..], w[6..]);
    }
}

#[test]
fn a_spawned_looping_channel_runs_until_stopped() {
    let Some(clear) = ffmpeg_ts(4) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (dir.path().join("in.ts"), dir.path().join("out.ts"));
    std::fs::write(&inp, &clear).unwrap();
    let (feed, _) = feed(PERIOD_MS, 4);
    let mut cfg = config(inp.to_str().unwrap(), outp.to_str().unwrap());
    cfg.loop_input = true;
    let h = spawn_channel(cfg, feed, Shutdown::new()).unwrap();
    let t = std::time::Instant::now();
    while h.stats().loops < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no loop: {:?}",
            h.stats()
        );
        assert!(!h.is_finished());
        std::thread::sleep(Duration::from_millis(5));
    }
    h.stop();
    let stats = h.join().unwrap();
    assert!(stats.loops >= 2);
    assert_eq!(
        std::fs::metadata(&outp).unwrap().len(),
        stats.packets_out * PACKET_LEN as u64
    );
}

#[test]
fn bad_configs_name_the_field() {
    let (f, _) = feed(PERIOD_MS, 0);
    let mut cfg = config("in.ts", "out.ts");
    cfg.emm_pid = 0x1FFF;
    let e = run_channel(cfg, f, Shutdown::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("emm_pid"), "{e}");
    let mut cfg = config("in.ts", "out.ts").service(2, ECM_PID);
    assert!(cfg.validate().unwrap_err().to_string().contains("ecm_pid"));
    cfg.services.pop();
    cfg.input = "rtp://x:1".into();
    // The engine leaves the URLs to the stream I/O, which checks them.
    assert!(cfg.validate().is_ok());
    assert!(validate(&cfg)
        .unwrap_err()
        .to_string()
        .contains("rtp://x:1"));
    cfg.input = "/nonexistent/in.ts".into();
    let (f, _) = feed(PERIOD_MS, 0);
    let e = run_channel(cfg, f, Shutdown::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/in.ts"), "{e}");
}

#[test]
fn input_that_is_not_ts_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.txt");
    std::fs::write(&inp, "this is not a transport stream\n".repeat(100)).unwrap();
    let (f, _) = feed(PERIOD_MS, 0);
    let cfg = config(
        inp.to_str().unwrap(),
        dir.path().join("o.ts").to_str().unwrap(),
    );
    let e = run_channel(cfg, f, Shutdown::new()).unwrap_err();
    assert!(e.to_string().contains("holds no TS packet"), "{e}");
}

/// Packets missing from the input show as continuity errors of the input
/// (one per gap, on its PID), which the operator sees in /metrics.
#[test]
fn packets_lost_before_the_input_count_as_input_continuity_errors() {
    let Some(clear) = ffmpeg_ts(2) else { return };
    let (feed, _) = feed(PERIOD_MS, 4);
    let cfg = config("-", "-");
    let mut mux = Mux::new(&cfg, feed, START_MS).unwrap();
    // The 50th, 100th and 150th video packets with a payload are lost,
    // and a whole datagram's worth (7 packets) near the end.
    let mut video = 0;
    let packets: Vec<&[u8; PACKET_LEN]> = Packets::new(&clear).collect();
    let middle = packets.len() * 9 / 10;
    let mut lost = 0;
    for (i, p) in packets.iter().enumerate() {
        let v = Packet::from_array(p).unwrap();
        if v.pid() == VIDEO && v.has_payload() {
            video += 1;
            if [50, 100, 150].contains(&video) {
                lost += 1;
                continue;
            }
        }
        if (middle..middle + 7).contains(&i) {
            continue;
        }
        mux.push(p);
    }
    assert_eq!(lost, 3, "the clip has 150 video packets");
    let stats = *mux.stats();
    // The datagram cuts each PID it carried a payload of.
    let cut: std::collections::BTreeSet<u16> = packets[middle..middle + 7]
        .iter()
        .map(|p| Packet::from_array(p).unwrap())
        .filter(|v| v.has_payload() && v.pid() != ts::packet::NULL_PID)
        .map(|v| v.pid())
        .collect();
    assert_eq!(stats.input_cc_errors, 3 + cut.len() as u64, "{stats:?}");
}
