//! The SimulCrypt ECMG of `headend run`, driven by an SCS written here
//! from ETSI TS 103 197 (§4 framing, §5 ECMG⇔SCS messages, parameter
//! types and error_status values), with its own byte framing and not the
//! `simulcrypt` crate's codec: set-up, a run of crypto periods with ECMs
//! that an in-process card opens into the SCS's own control words,
//! keepalives, closes, every error case, bad peers and a thousand dropped
//! connections while a good peer is served.

use crate::common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

// The standard's numbers and framing: testkit's own, not the
// `simulcrypt` crate's.
use testkit::ts103197::ecmg::*;
use testkit::ts103197::{self as wire, encode};

const VERSION: u8 = 0x03;

/// Iodoform's CA_system_id; the test headend's CA_subsystem_id is 0.
const SUPER_CAS_ID: u32 = 0xF10D_0000;
const SERVICE: u16 = 300;

// ------------------------------------------------------ the test SCS

type Params = Vec<(u16, Vec<u8>)>;

struct Scs {
    tcp: TcpStream,
}

impl Scs {
    fn connect(addr: SocketAddr) -> Scs {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        Scs { tcp }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).unwrap();
    }

    fn send(&mut self, ty: u16, params: &[(u16, &[u8])]) {
        self.send_raw(&encode(VERSION, ty, params));
    }

    /// The next message, or `None` at the end of the connection.
    fn recv(&mut self) -> Option<(u16, Params)> {
        let m = match wire::read(&mut self.tcp) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                panic!("parameters do not fill the message exactly: {e}")
            }
            Err(_) => return None,
        };
        assert_eq!(m.version, VERSION, "the ECMG answers in version 3");
        Some((m.ty, m.params))
    }

    fn expect(&mut self, ty: u16) -> Params {
        let (got, params) = self.recv().expect("an answer");
        assert_eq!(got, ty, "message type 0x{got:04x}, params {params:?}");
        params
    }

    /// Expects a channel_error or stream_error with this error_status.
    fn expect_error(&mut self, ty: u16, status: u16) {
        let params = self.expect(ty);
        let got = u16::from_be_bytes(param(&params, P_ERROR_STATUS)[..2].try_into().unwrap());
        assert_eq!(got, status, "error_status 0x{got:04x}, params {params:?}");
        let info = param(&params, 0x7001);
        assert!(!info.is_empty(), "an error_information text");
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.tcp.read(&mut b), Ok(0)) || self.tcp.read(&mut b).is_err()
    }

    fn channel_setup(&mut self, channel: u16) -> Params {
        self.send(
            CHANNEL_SETUP,
            &[
                (P_ECM_CHANNEL_ID, &channel.to_be_bytes()),
                (P_SUPER_CAS_ID, &SUPER_CAS_ID.to_be_bytes()),
            ],
        );
        self.expect(CHANNEL_STATUS)
    }

    fn stream_setup(&mut self, channel: u16, stream: u16, ecm_id: u16) {
        self.send(
            STREAM_SETUP,
            &[
                (P_ECM_CHANNEL_ID, &channel.to_be_bytes()),
                (P_ECM_STREAM_ID, &stream.to_be_bytes()),
                (P_ECM_ID, &ecm_id.to_be_bytes()),
                (P_NOMINAL_CP_DURATION, &10u16.to_be_bytes()),
            ],
        );
        let p = self.expect(STREAM_STATUS);
        assert_eq!(param(&p, P_ECM_ID), ecm_id.to_be_bytes());
    }

    /// CW_provision of crypto period `cp` with the words of `cp` and
    /// `cp + 1`.
    fn cw_provision(
        &mut self,
        channel: u16,
        stream: u16,
        cp: u16,
        cws: [[u8; 16]; 2],
        ac: Option<&[u8]>,
    ) {
        let mut c0 = cp.to_be_bytes().to_vec();
        c0.extend_from_slice(&cws[0]);
        let mut c1 = cp.wrapping_add(1).to_be_bytes().to_vec();
        c1.extend_from_slice(&cws[1]);
        let (ch, st, n) = (
            channel.to_be_bytes(),
            stream.to_be_bytes(),
            cp.to_be_bytes(),
        );
        let mut params: Vec<(u16, &[u8])> = vec![
            (P_ECM_CHANNEL_ID, &ch),
            (P_ECM_STREAM_ID, &st),
            (P_CP_NUMBER, &n),
            (P_CP_CW_COMBINATION, &c0),
            (P_CP_CW_COMBINATION, &c1),
        ];
        if let Some(ac) = ac {
            params.push((P_ACCESS_CRITERIA, ac));
        }
        self.send(CW_PROVISION, &params);
    }

    /// The ECM section of the ECM_response for `cp`.
    fn ecm(&mut self, channel: u16, stream: u16, cp: u16) -> Vec<u8> {
        let p = self.expect(ECM_RESPONSE);
        assert_eq!(param(&p, P_ECM_CHANNEL_ID), channel.to_be_bytes());
        assert_eq!(param(&p, P_ECM_STREAM_ID), stream.to_be_bytes());
        assert_eq!(param(&p, P_CP_NUMBER), cp.to_be_bytes());
        param(&p, P_ECM_DATAGRAM)
    }
}

fn param(params: &Params, ty: u16) -> Vec<u8> {
    params
        .iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no parameter 0x{ty:04x} in {params:?}"))
}

/// The access criteria of product `product` and the test service.
fn ac(product: u32) -> Vec<u8> {
    let mut v = product.to_be_bytes().to_vec();
    v.extend_from_slice(&SERVICE.to_be_bytes());
    v
}

fn random_cw() -> [u8; 16] {
    let mut b = [0u8; 16];
    proto::secret::fill_random(&mut b);
    b
}

/// A headend with a `scrambler = "simulcrypt"` channel (service 300 of
/// product "sports") and its ECMG on a free port; the product's id.
fn headend_with_ecmg() -> (Headend, SocketAddr, u32) {
    headend_with_ecmg_config("")
}

/// [`headend_with_ecmg`] with more lines for `[simulcrypt.ecmg]`.
fn headend_with_ecmg_config(ecmg: &str) -> (Headend, SocketAddr, u32) {
    let mut h = Headend::init(BIN, 1000, Some(500));
    let port = testkit::free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut toml = std::fs::read_to_string(h.config()).unwrap();
    toml.push_str(&format!(
        "\n[[channels]]\nname = \"partner\"\nservice_id = {SERVICE}\nproduct = \"sports\"\nscrambler = \"simulcrypt\"\n\n[simulcrypt.ecmg]\nlisten = \"{addr}\"\n{ecmg}"
    ));
    std::fs::write(h.config(), toml).unwrap();
    h.start();
    let products = h.get("/api/v1/products");
    let product = products
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sports")
        .and_then(|p| p["id"].as_u64())
        .unwrap_or_else(|| panic!("product sports: {products}")) as u32;
    (h, addr, product)
}

/// The ECM inside a section, its header, and the section's table_id.
fn ecm_in(section: &[u8]) -> (proto::ecm::EcmHeader, Vec<u8>, u8) {
    let (h, ecm) = ecm_of(section);
    (h, ecm.to_vec(), section[0])
}

// ------------------------------------------------------------ tests

#[test]
fn an_scs_gets_ecms_that_a_card_opens_into_its_own_control_words() {
    let (h, addr, product) = headend_with_ecmg();
    let op = operator(&h);
    let (mut card, public) = new_card(&op, 21);
    register(&h, 21, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(21, "sports", "2099-12-31"),
    );

    let mut scs = Scs::connect(addr);
    let status = scs.channel_setup(1);
    assert_eq!(param(&status, P_SECTION_TSPKT_FLAG), [0], "sections");
    assert_eq!(param(&status, P_LEAD_CW), [1]);
    assert_eq!(param(&status, P_CW_PER_MSG), [2]);
    assert_eq!(param(&status, P_ECM_REP_PERIOD), 100u16.to_be_bytes());
    assert_eq!(param(&status, P_MAX_STREAMS), 1000u16.to_be_bytes());
    assert_eq!(param(&status, P_MAX_COMP_TIME), 100u16.to_be_bytes());
    scs.stream_setup(1, 7, 70);

    // A run of crypto periods, from near the end of the CP_number range
    // across its wrap.
    let cws: Vec<[u8; 16]> = (0..7).map(|_| random_cw()).collect();
    let first_cp = 65533u16;
    let mut ecms = Vec::new();
    for i in 0..6u16 {
        let cp = first_cp.wrapping_add(i);
        let ac = ac(product);
        scs.cw_provision(
            1,
            7,
            cp,
            [cws[i as usize], cws[i as usize + 1]],
            (i == 0).then_some(&ac[..]),
        );
        ecms.push((cp, scs.ecm(1, 7, cp)));
    }
    // Keepalives.
    scs.send(CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &1u16.to_be_bytes())]);
    scs.expect(CHANNEL_STATUS);
    scs.send(
        STREAM_TEST,
        &[
            (P_ECM_CHANNEL_ID, &1u16.to_be_bytes()),
            (P_ECM_STREAM_ID, &7u16.to_be_bytes()),
        ],
    );
    scs.expect(STREAM_STATUS);

    let mut epochs = Vec::new();
    for (cp, section) in &ecms {
        let (header, _, table_id) = ecm_in(section);
        assert_eq!(header.product, product);
        assert_eq!(header.service, SERVICE);
        assert!(header.epoch >= 1 << 63, "apart from the own mux's epochs");
        assert_eq!(
            header.epoch % 2,
            u64::from(cp % 2),
            "the epoch has the CP's parity"
        );
        assert_eq!(u64::from(table_id), 0x80 + u64::from(cp % 2));
        epochs.push(header.epoch);
    }
    assert!(
        epochs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive crypto periods take consecutive epochs: {epochs:?}"
    );

    // The card, once its EMMs came, opens each ECM into the SCS's words:
    // the word of an even CP in the even slot.
    let mut sections = Sections::default();
    let t = Instant::now();
    let mut opened = 0;
    while opened < ecms.len() {
        if let Some((_, emms)) = sections.poll(&h) {
            feed_emms(&mut card, 21, &emms);
        }
        opened = 0;
        for (i, (cp, section)) in ecms.iter().enumerate() {
            let (_, ecm, _) = ecm_in(section);
            if let Ok(got) = card.process_ecm(&ecm) {
                let (even, odd) = if cp % 2 == 0 {
                    (cws[i], cws[i + 1])
                } else {
                    (cws[i + 1], cws[i])
                };
                assert_eq!(got.cws.even.expose(), &even, "CP {cp}");
                assert_eq!(got.cws.odd.expose(), &odd, "CP {cp}");
                opened += 1;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the card opened {opened} of the ECMs; log:\n{}",
            h.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The same CP_number again: with the same words, the same bytes;
    // with other words (an SCS that restarted), another epoch, so another
    // (key, nonce), and the card gets the new words.
    let last = first_cp.wrapping_add(5);
    scs.cw_provision(1, 7, last, [cws[5], cws[6]], None);
    assert_eq!(scs.ecm(1, 7, last), ecms[5].1, "a repeat gets the same ECM");
    let other = [random_cw(), random_cw()];
    scs.cw_provision(1, 7, last, other, None);
    let again = scs.ecm(1, 7, last);
    let (h1, _, _) = ecm_in(&ecms[5].1);
    let (h2, ecm2, _) = ecm_in(&again);
    assert_ne!(h1.epoch, h2.epoch, "other words for a CP: a fresh epoch");
    assert_eq!(h2.epoch % 2, u64::from(last % 2));
    let got = card.process_ecm(&ecm2).unwrap();
    assert_eq!(got.cws.for_epoch(u64::from(last)).expose(), &other[0]);

    // A second stream, on the same product and service, with the same
    // CP_number: epochs of its own.
    scs.stream_setup(1, 8, 80);
    scs.cw_provision(1, 8, last, other, Some(&ac(product)));
    let (h3, _, _) = ecm_in(&scs.ecm(1, 8, last));
    assert!(h3.epoch != h2.epoch && h3.epoch != h1.epoch);

    // The status and the metrics show the peer.
    let st = h.get("/api/v1/status");
    assert_eq!(st["ecmg"]["channels"], 1, "{st}");
    assert_eq!(st["ecmg"]["streams"], 2, "{st}");
    assert_eq!(st["ecmg"]["super_cas_id"], "0xf10d0000");
    assert!(st["ecmg"]["ecm_responses"].as_u64().unwrap() >= 9, "{st}");
    let shown = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(
        shown.contains("SimulCrypt ECMG on") && shown.contains("1 channels, 2 streams"),
        "{shown}"
    );
    let metrics = h
        .agent
        .get(&h.url("/metrics"))
        .set("Authorization", &format!("Bearer {}", h.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(metrics.contains("iodoform_ecmg_streams 2\n"), "{metrics}");
    assert!(
        metrics.contains("iodoform_ecmg_ecm_requests_total 9\n"),
        "{metrics}"
    );

    // Stream close, then channel close: the ECMG closes the connection.
    scs.send(
        STREAM_CLOSE_REQUEST,
        &[
            (P_ECM_CHANNEL_ID, &1u16.to_be_bytes()),
            (P_ECM_STREAM_ID, &7u16.to_be_bytes()),
        ],
    );
    scs.expect(STREAM_CLOSE_RESPONSE);
    scs.cw_provision(1, 7, 1, [random_cw(), random_cw()], None);
    scs.expect_error(STREAM_ERROR, E_UNKNOWN_STREAM);
    scs.send(CHANNEL_CLOSE, &[(P_ECM_CHANNEL_ID, &1u16.to_be_bytes())]);
    assert!(scs.closed(), "channel_close ends the connection");
    wait_for("the ECMG's log line", Duration::from_secs(5), || {
        h.log().contains("ECMG: SCS connection ended after")
    });
}

#[test]
fn every_fault_gets_its_error_status_and_the_connection_goes_on() {
    let (h, addr, product) = headend_with_ecmg();
    let ch = 3u16.to_be_bytes();
    let st = 4u16.to_be_bytes();
    let mut scs = Scs::connect(addr);

    // Before channel_setup.
    scs.send(CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &ch)]);
    scs.expect_error(CHANNEL_ERROR, E_UNKNOWN_CHANNEL);
    scs.send(
        STREAM_SETUP,
        &[
            (P_ECM_CHANNEL_ID, &ch),
            (P_ECM_STREAM_ID, &st),
            (P_ECM_ID, &[0, 1]),
            (P_NOMINAL_CP_DURATION, &[0, 10]),
        ],
    );
    scs.expect_error(CHANNEL_ERROR, E_UNKNOWN_CHANNEL);
    // A wrong Super_CAS_id.
    scs.send(
        CHANNEL_SETUP,
        &[
            (P_ECM_CHANNEL_ID, &ch),
            (P_SUPER_CAS_ID, &0x0B00_0000u32.to_be_bytes()),
        ],
    );
    scs.expect_error(CHANNEL_ERROR, E_UNKNOWN_SUPER_CAS_ID);
    scs.channel_setup(3);
    // Unknown stream, for stream_test and CW_provision.
    scs.send(
        STREAM_TEST,
        &[(P_ECM_CHANNEL_ID, &ch), (P_ECM_STREAM_ID, &st)],
    );
    scs.expect_error(STREAM_ERROR, E_UNKNOWN_STREAM);
    scs.cw_provision(3, 4, 0, [random_cw(), random_cw()], Some(&ac(product)));
    scs.expect_error(STREAM_ERROR, E_UNKNOWN_STREAM);
    // Another channel's id.
    scs.send(CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &[0, 9])]);
    scs.expect_error(CHANNEL_ERROR, E_UNKNOWN_CHANNEL);
    scs.stream_setup(3, 4, 40);
    // The stream id again, the ECM_id again.
    scs.send(
        STREAM_SETUP,
        &[
            (P_ECM_CHANNEL_ID, &ch),
            (P_ECM_STREAM_ID, &st),
            (P_ECM_ID, &[0, 41]),
            (P_NOMINAL_CP_DURATION, &[0, 10]),
        ],
    );
    scs.expect_error(STREAM_ERROR, E_STREAM_ID_IN_USE);
    scs.send(
        STREAM_SETUP,
        &[
            (P_ECM_CHANNEL_ID, &ch),
            (P_ECM_STREAM_ID, &[0, 5]),
            (P_ECM_ID, &[0, 40]),
            (P_NOMINAL_CP_DURATION, &[0, 10]),
        ],
    );
    scs.expect_error(STREAM_ERROR, E_ECM_ID_IN_USE);
    // An unknown DVB parameter; a user-defined one is ignored.
    scs.send(CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &ch), (0x0050, &[1])]);
    scs.expect_error(CHANNEL_ERROR, E_UNKNOWN_PARAMETER);
    scs.send(
        CHANNEL_TEST,
        &[(P_ECM_CHANNEL_ID, &ch), (0x8123, &[1, 2, 3])],
    );
    scs.expect(CHANNEL_STATUS);
    // A missing parameter; a wrong length; an unknown message.
    scs.send(CHANNEL_TEST, &[]);
    scs.expect_error(CHANNEL_ERROR, E_MISSING_PARAMETER);
    scs.send(CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &[0, 0, 3])]);
    scs.expect_error(CHANNEL_ERROR, E_INCONSISTENT_LENGTH);
    scs.send(0x0999, &[(P_ECM_CHANNEL_ID, &ch)]);
    scs.expect_error(CHANNEL_ERROR, E_UNKNOWN_MESSAGE_TYPE);
    // CW_provision: no access criteria yet, an unknown product, a
    // missing next word, a short word.
    scs.cw_provision(3, 4, 0, [random_cw(), random_cw()], None);
    scs.expect_error(STREAM_ERROR, E_MISSING_PARAMETER);
    scs.cw_provision(
        3,
        4,
        0,
        [random_cw(), random_cw()],
        Some(&ac(product + 1000)),
    );
    scs.expect_error(STREAM_ERROR, E_INVALID_VALUE);
    scs.cw_provision(3, 4, 0, [random_cw(), random_cw()], Some(&[1, 2]));
    scs.expect_error(STREAM_ERROR, E_INVALID_VALUE);
    let mut c0 = vec![0, 0];
    c0.extend_from_slice(&random_cw());
    scs.send(
        CW_PROVISION,
        &[
            (P_ECM_CHANNEL_ID, &ch),
            (P_ECM_STREAM_ID, &st),
            (P_CP_NUMBER, &[0, 0]),
            (P_CP_CW_COMBINATION, &c0),
            (P_ACCESS_CRITERIA, &ac(product)),
        ],
    );
    scs.expect_error(STREAM_ERROR, E_NOT_ENOUGH_CWS);
    scs.send(
        CW_PROVISION,
        &[
            (P_ECM_CHANNEL_ID, &ch),
            (P_ECM_STREAM_ID, &st),
            (P_CP_NUMBER, &[0, 0]),
            (P_CP_CW_COMBINATION, &c0),
            (P_CP_CW_COMBINATION, &[0, 1, 9, 9, 9]),
            (P_ACCESS_CRITERIA, &ac(product)),
        ],
    );
    scs.expect_error(STREAM_ERROR, E_INVALID_VALUE);
    // Still served.
    scs.cw_provision(3, 4, 0, [random_cw(), random_cw()], Some(&ac(product)));
    scs.ecm(3, 4, 0);

    let st = h.get("/api/v1/status");
    assert_eq!(st["ecmg"]["errors"]["0x0007"], 2, "{st}");
    assert_eq!(st["ecmg"]["errors"]["0x0011"], 3, "{st}");
    drop(scs);
    wait_for("the ECMG's log line", Duration::from_secs(5), || {
        h.log().contains("ECMG: SCS connection ended")
    });
    let log = h.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ECMG: SCS connection"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the peer:\n{}", h.log_tail(20));
    assert!(
        lines[0].contains("17 errors") && lines[0].contains("first error 0x0006"),
        "{}",
        lines[0]
    );
}

#[test]
fn bad_peers_are_closed_with_a_reason_while_a_good_one_is_served() {
    let (h, addr, product) = headend_with_ecmg();
    let mut good = Scs::connect(addr);
    good.channel_setup(1);
    good.stream_setup(1, 1, 1);
    let mut cp = 0u16;
    let mut serve_good = |good: &mut Scs| {
        let ac = ac(product);
        good.cw_provision(
            1,
            1,
            cp,
            [random_cw(), random_cw()],
            (cp == 0).then_some(&ac[..]),
        );
        let t = Instant::now();
        good.ecm(1, 1, cp);
        assert!(t.elapsed() < Duration::from_secs(1));
        cp += 1;
    };
    serve_good(&mut good);

    // Garbage: an HTTP request.
    let mut bad = Scs::connect(addr);
    bad.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    bad.expect_error(CHANNEL_ERROR, E_UNSUPPORTED_VERSION);
    assert!(bad.closed());
    serve_good(&mut good);
    // A wrong protocol version.
    let mut bad = Scs::connect(addr);
    bad.send_raw(&encode(0x02, CHANNEL_SETUP, &[(P_ECM_CHANNEL_ID, &[0, 1])]));
    bad.expect_error(CHANNEL_ERROR, E_UNSUPPORTED_VERSION);
    assert!(bad.closed());
    serve_good(&mut good);
    // Longer than any ECMG message.
    let mut bad = Scs::connect(addr);
    bad.send_raw(&[VERSION, 0x00, 0x01, 0xFF, 0xFF]);
    bad.expect_error(CHANNEL_ERROR, E_MESSAGE_TOO_LONG);
    assert!(bad.closed());
    serve_good(&mut good);
    // A message longer than its length field: a parameter runs past it.
    let mut bad = Scs::connect(addr);
    let mut m = encode(VERSION, CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &[0, 1])]);
    m[4] -= 1;
    bad.send_raw(&m);
    bad.expect_error(CHANNEL_ERROR, E_MESSAGE_TOO_LONG);
    assert!(bad.closed());
    serve_good(&mut good);
    // A CW_provision for an unknown stream: an error, and served on.
    let mut bad = Scs::connect(addr);
    bad.channel_setup(2);
    bad.cw_provision(2, 9, 0, [random_cw(), random_cw()], Some(&ac(product)));
    bad.expect_error(STREAM_ERROR, E_UNKNOWN_STREAM);
    drop(bad);
    serve_good(&mut good);

    // A thousand connections opened and dropped, the good peer served
    // all along.
    let t = Instant::now();
    for i in 0..1000 {
        let c = TcpStream::connect(addr).unwrap();
        if i % 2 == 0 {
            let _ = (&c).write_all(&[VERSION, 0x00]);
        }
        drop(c);
        if i % 100 == 0 {
            serve_good(&mut good);
        }
    }
    serve_good(&mut good);
    eprintln!("1000 connections in {:?}", t.elapsed());

    wait_for("every bad peer's log line", Duration::from_secs(10), || {
        h.log()
            .lines()
            .filter(|l| l.contains("ECMG: SCS connection"))
            .count()
            >= 1005
    });
    let log = h.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ECMG: SCS connection"))
        .collect();
    assert_eq!(lines.len(), 1005, "one line per bad peer");
    for why in [
        "protocol_version 71 is not supported",
        "protocol_version 2 is not supported",
        "message_length 65535 is more than this ECMG accepts",
        "longer than its message_length",
        "first error 0x0007",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(why)).count(),
            1,
            "{why}:\n{}",
            h.log_tail(30)
        );
    }
    assert!(h.get("/api/v1/status")["ecmg"]["connections"] == json!(1));
}

#[test]
fn ecms_follow_a_key_renewal_like_the_own_muxs() {
    let (h, addr, product) = headend_with_ecmg();
    let op = operator(&h);
    let (mut card, public) = new_card(&op, 31);
    register(&h, 31, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(31, "sports", "2099-12-31"),
    );
    let mut scs = Scs::connect(addr);
    scs.channel_setup(1);
    scs.stream_setup(1, 1, 1);
    let mut sections = Sections::default();
    let mut cp = 0u16;
    let mut next = |scs: &mut Scs, sections: &mut Sections, card: &mut Card| {
        if let Some((_, emms)) = sections.poll(&h) {
            feed_emms(card, 31, &emms);
        }
        let ac = ac(product);
        scs.cw_provision(
            1,
            1,
            cp,
            [random_cw(), random_cw()],
            (cp == 0).then_some(&ac[..]),
        );
        let (header, ecm, _) = ecm_in(&scs.ecm(1, 1, cp));
        cp += 1;
        (header.generation, card.process_ecm(&ecm).is_ok())
    };
    let (g0, _) = next(&mut scs, &mut sections, &mut card);
    h.post("/api/v1/rotate", json!({"product": "sports"}));
    // The new generation reaches the ECMs once its delivery is through,
    // and the card, which got it from its EMMs, opens every ECM.
    let t = Instant::now();
    loop {
        let (g, opened) = next(&mut scs, &mut sections, &mut card);
        if g != g0 {
            assert!(g > g0);
            assert!(opened, "the card opens the first ECM of generation {g}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the ECMG's ECMs never left generation {g0}:\n{}",
            h.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(h.log().contains("ECMG: ECMs follow the product's new key"));
}

#[test]
fn a_stalled_scs_is_closed_after_the_write_timeout_and_holds_up_no_other() {
    let (h, addr, product) = headend_with_ecmg_config("write_timeout_ms = 1000\n");
    let mut good = Scs::connect(addr);
    good.channel_setup(1);
    good.stream_setup(1, 1, 1);
    // The stalled SCS sends and never reads, until the ECMG's answers
    // fill its socket.
    let mut stalled = Scs::connect(addr);
    stalled.channel_setup(2);
    stalled.stream_setup(2, 1, 1);
    stalled
        .tcp
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let ac = ac(product);
    let flood = encode(
        VERSION,
        STREAM_TEST,
        &[(P_ECM_CHANNEL_ID, &[0, 2]), (P_ECM_STREAM_ID, &[0, 1])],
    );
    let t = Instant::now();
    let mut sent = 0usize;
    while t.elapsed() < Duration::from_secs(3) {
        if stalled.tcp.write_all(&flood.repeat(100)).is_err() {
            break;
        }
        sent += 100;
    }
    // Meanwhile the good SCS is served at once.
    for cp in 0..20u16 {
        let t = Instant::now();
        good.cw_provision(
            1,
            1,
            cp,
            [random_cw(), random_cw()],
            (cp == 0).then_some(&ac[..]),
        );
        good.ecm(1, 1, cp);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    wait_for("the stalled SCS closed", Duration::from_secs(10), || {
        h.log().contains("took no answer for 1000 ms")
    });
    eprintln!("the stalled SCS got {sent} messages out");
    good.send(CHANNEL_TEST, &[(P_ECM_CHANNEL_ID, &1u16.to_be_bytes())]);
    good.expect(CHANNEL_STATUS);
}
