//! A real multiplex through the real binaries: ffmpeg's three-program TS
//! into `headend run`, service 1 scrambled for product "basic", service 2
//! for "premium", service 3 sent clear; one `receiver` per scrambled
//! service, each with a virtual card on the real pcscd entitled to that
//! service's product. The SDT on the air is read by an independent
//! parser, `sdt_services.py` (Python's standard library, written from
//! EN 300 468), not by our `ts` crate.

use crate::e2e_stream::{
    as_in_clip, pid_of, prerequisites, provision_card, receiver_input, Feeder, System, Tap, EMM_PID,
};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::emulator::CardModel;
use testkit::ffmpeg::{ffprobe_frames, mpts, MPTS_PROGRAMS};
use testkit::{env, vpcd};
use ts::packet::{Packets, PACKET_LEN};

/// Service 2's ECM PID (service 1 has channel 1's).
const ECM_PID_2: u16 = 0x1F2;
const CLEAR: u16 = 3;
/// The multiplex is sent once, this long: the receivers start before it,
/// and what they write is one stretch of it that ffprobe decodes whole.
const PASS_S: u32 = 12;

/// The (program, PMT PID, video, audio) of MPTS program `n`.
fn program(n: u16) -> (u16, u16, u16, u16) {
    let (p, _, pmt, video, audio) = MPTS_PROGRAMS[usize::from(n) - 1];
    (p, pmt, video, audio)
}

/// The packets of `ts` on `pid`.
fn on_pid(ts: &[u8], pid: u16) -> Vec<[u8; PACKET_LEN]> {
    Packets::new(ts)
        .filter(|p| pid_of(p) == pid)
        .copied()
        .collect()
}

/// What `sdt_services.py` reads in the SDT of `file`: service_id →
/// (free_CA_mode, name). `None` (after a note) without python3 outside
/// CI.
fn sdt_by_python(file: &Path) -> Option<BTreeMap<u16, (bool, String)>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/sdt_services.py");
    let out = match Command::new("python3").arg(&script).arg(file).output() {
        Ok(o) => o,
        Err(e) => {
            env::unavailable(
                "the SDT check",
                &format!("python3 not found ({e}); install it with `apt-get install python3`"),
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "sdt_services.py refused the headend's SDT: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        v.as_object()
            .expect("a JSON object")
            .iter()
            .map(|(id, s)| {
                (
                    id.parse().unwrap(),
                    (
                        s["free_ca_mode"].as_bool().unwrap(),
                        s["name"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect(),
    )
}

/// The three-service multiplex: each scrambled service comes out clear
/// (the packets ffmpeg made, and ffprobe decodes the video) from a
/// receiver whose card holds that service's product, the clear service
/// is on the air untouched, and the SDT marks the two scrambled services
/// and not the clear one.
#[test]
fn a_three_service_multiplex_gives_each_card_its_own_service_and_passes_the_clear_one() {
    let test = "a_three_service_multiplex_gives_each_card_its_own_service_and_passes_the_clear_one";
    if !prerequisites(test) {
        return;
    }
    let Some(clear) = mpts(PASS_S) else { return };
    let t0 = Instant::now();
    let slots = vpcd::slots(2);
    let (in_a, in_b) = (receiver_input(), receiver_input());
    let tee = Tap::start_to(vec![in_a, in_b]);
    // Channel 1 (service 1, "basic") and its card; then service 2 for
    // "premium" on the same input and output, and service 3 clear.
    let sys = System::set_up(&slots[0], tee.addr);
    let h = &sys.headend;
    h.cli(&["product", "add", "premium"]);
    h.cli(&[
        "channel",
        "update",
        "1",
        "--clear-service",
        &CLEAR.to_string(),
    ]);
    h.cli(&[
        "channel",
        "add",
        "--name",
        "two",
        "--service-id",
        "2",
        "--product",
        "premium",
        "--ecm-pid",
        &ECM_PID_2.to_string(),
        "--emm-pid",
        &EMM_PID.to_string(),
        "--input",
        &format!("udp://{}", sys.input),
        "--output",
        &format!("udp://{}", tee.addr),
    ]);
    let _card_b = provision_card(
        h,
        &slots[1],
        "1001",
        &sys.path("premium.img"),
        CardModel::default(),
        Some("premium"),
    );
    let mut runs = Vec::new();
    for (service, reader, files, input) in [
        (1u16, slots[0].reader, "a-", in_a),
        (2, slots[1].reader, "b-", in_b),
    ] {
        let out = sys.path(&format!("{files}out.ts"));
        let log = sys.path(&format!("{files}receiver.log"));
        let rx = sys.receiver_in(
            reader,
            files,
            input,
            out.to_str().unwrap(),
            &log,
            &[
                "--service",
                &service.to_string(),
                "--entitlement-wait",
                "30",
            ],
        );
        runs.push((service, files, out, log, rx));
    }
    let mut once = Some(Arc::new(clear.clone()));
    let feeder = Feeder::start(sys.input, move || once.take());
    // Each receiver writes its service's video, to the end of the pass.
    for (service, _, out, log, rx) in &mut runs {
        let (_, _, video, _) = program(*service);
        let deadline = Instant::now() + Duration::from_secs(20);
        while on_pid(&std::fs::read(&*out).unwrap_or_default(), video).is_empty() {
            assert!(rx.is_running(), "receiver exited:\n{}", sys.logs(log));
            assert!(
                Instant::now() < deadline,
                "service {service}: no clear video within 20 s:\n{}",
                sys.logs(log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    feeder.finish(false);
    std::thread::sleep(Duration::from_millis(1000));
    let mut report = Vec::new();
    for (service, files, out, log, rx) in runs {
        let stats = sys.stop_receiver_in(rx, &log, files);
        assert_eq!(stats["exit_code"], 0, "service {service}: {stats}");
        let bytes = std::fs::read(&out).unwrap();
        let (_, pmt, video, audio) = program(service);
        // Only this service's components, each packet ffmpeg's own.
        for (n, ..) in MPTS_PROGRAMS {
            let (_, other_pmt, v, a) = program(n);
            if n != service {
                for pid in [other_pmt, v, a] {
                    assert!(
                        on_pid(&bytes, pid).is_empty(),
                        "service {service}'s receiver wrote PID {pid:#06x} of service {n}"
                    );
                }
            }
        }
        let theirs: HashSet<[u8; PACKET_LEN]> = [video, audio]
            .iter()
            .flat_map(|&pid| on_pid(&clear, pid))
            .map(|p| as_in_clip(&p))
            .collect();
        let es: Vec<_> = [video, audio]
            .iter()
            .flat_map(|&pid| on_pid(&bytes, pid))
            .collect();
        let foreign = es
            .iter()
            .filter(|p| !theirs.contains(&as_in_clip(p)))
            .count();
        assert_eq!(
            foreign, 0,
            "service {service}: ES packets that are not ffmpeg's"
        );
        assert!(
            es.len() * 3 >= theirs.len() * 2,
            "service {service}: {} ES packets out, the pass has {}: {stats}",
            es.len(),
            theirs.len()
        );
        assert!(!on_pid(&bytes, pmt).is_empty(), "service {service}: no PMT");
        let (frames, err) = ffprobe_frames(&out).expect("ffprobe");
        assert!(
            frames >= 25 * u64::from(PASS_S) * 2 / 3,
            "service {service}: ffprobe decodes {frames} frames of {} bytes: {}",
            bytes.len(),
            testkit::process::last_lines(&err, 5)
        );
        report.push(format!(
            "service {service}: {} ES packets, {frames} frames, {} descrambled, {} ECMs refused while \
             the entitlement came",
            es.len(),
            stats["stats"]["descrambled"],
            stats["stats"]["ecms_refused"]
        ));
    }

    // On the air: services 1 and 2 scrambled, service 3 as it came.
    let air = tee.bytes();
    for service in [1, 2] {
        let (_, _, video, audio) = program(service);
        for pid in [video, audio] {
            let got = on_pid(&air, pid);
            assert!(!got.is_empty(), "PID {pid:#06x} is on the air");
            let clear_ones = got
                .iter()
                .filter(|p| p[3] & 0x10 != 0 && p[3] & 0xC0 == 0)
                .count();
            assert_eq!(clear_ones, 0, "PID {pid:#06x}: packets sent clear");
        }
    }
    let (_, pmt, video, audio) = program(CLEAR);
    for pid in [pmt, video, audio] {
        let got = on_pid(&air, pid);
        let want = on_pid(&clear, pid);
        assert!(
            got == want,
            "PID {pid:#06x} of the clear service: {} packets on the air, {} in, {} of them equal",
            got.len(),
            want.len(),
            got.iter().zip(&want).filter(|(a, b)| a == b).count()
        );
    }

    // The SDT, read by the independent parser.
    let air_file = sys.path("air.ts");
    std::fs::write(&air_file, &air).unwrap();
    if let Some(sdt) = sdt_by_python(&air_file) {
        let want: BTreeMap<u16, (bool, String)> = MPTS_PROGRAMS
            .iter()
            .map(|(n, name, ..)| (*n, (*n != CLEAR, (*name).to_owned())))
            .collect();
        assert_eq!(
            sdt, want,
            "the SDT on the air (service: free_CA_mode, name)"
        );
    }
    eprintln!(
        "{}\ntotal {:.1} s",
        report.join("\n"),
        t0.elapsed().as_secs_f64()
    );
}
