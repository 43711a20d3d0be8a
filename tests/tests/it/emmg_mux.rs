//! The EMMG⇔MUX interface (ETSI TS 103 197 §6) through the real `headend`
//! daemon: its EMMG client against a MUX test peer written here from the
//! standard's tables, with its own few lines of byte framing (not the
//! `simulcrypt` crate the headend uses).
//!
//! * `the_emmg_client_sets_up_paces_and_reconnects`: channel_setup (the
//!   first one refused with `unknown client_id`), stream_setup,
//!   stream_BW_request; data_provision of EMM sections over TCP within the
//!   allocated bandwidth while the carousel makes far more; channel_test
//!   and stream_test answered; the peer restarted and a message in another
//!   protocol version, each followed by a reconnection; all of it in
//!   `headend status` and `/metrics`.
//! * `a_card_gets_its_entitlement_from_the_mux_alone`: the MUX peer takes
//!   the headend's channel output, drops the headend's own EMM PID and CAT,
//!   and puts the EMMs it got over SimulCrypt (TS packets over UDP) on an
//!   EMM PID of its own with its own CAT; a card subscribed while only the
//!   MUX carries its EMMs gets the entitlement, and the real `receiver`
//!   with that card behind pcscd descrambles the service.

use crate::e2e_stream::{
    go_on_air, pid_of, prerequisites, provision, receiver_input, Feeder, System, CARD, EMM_PID,
    PERIOD_MS,
};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testkit::{ffmpeg, vpcd, workspace_bin, Headend};
use ts::packet::{Packets, PACKET_LEN};

// The MUX side of TS 103 197 §6 (testkit's own framing, from the
// standard, not the `simulcrypt` crate).
use testkit::ts103197::emmg::*;
use testkit::ts103197::{decode, encode, Msg};

/// What the MUX peer saw and how it behaves; it outlives restarts.
#[derive(Debug, Default)]
struct MuxState {
    /// The bandwidth it grants, kbit/s.
    grant_kbps: AtomicU64,
    /// channel_setups still to refuse with `unknown client_id`.
    refuse_setups: AtomicU64,
    /// Send, once, a channel_test in protocol version 2.
    send_bad_version: AtomicBool,
    /// Send, once, a stream_error `exceeded bandwidth`.
    send_stream_error: AtomicBool,
    /// Connections accepted.
    connections: AtomicU64,
    /// Each message received: (connection, message_type).
    events: Mutex<Vec<(u64, u16)>>,
    /// error_status values the EMMG sent in channel_error.
    errors: Mutex<Vec<u16>>,
    /// Each datagram of data_provision: (arrival, connection, bytes).
    datagrams: Mutex<Vec<(Instant, u64, Vec<u8>)>>,
    /// What broke the standard or the configured ids.
    anomalies: Mutex<Vec<String>>,
}

impl MuxState {
    fn new(grant_kbps: u64) -> Arc<MuxState> {
        let s = MuxState::default();
        s.grant_kbps.store(grant_kbps, Ordering::Relaxed);
        Arc::new(s)
    }

    fn anomaly(&self, what: String) {
        self.anomalies.lock().unwrap().push(what);
    }

    fn saw(&self, conn: u64, ty: u16) -> bool {
        self.events.lock().unwrap().contains(&(conn, ty))
    }

    fn count(&self, ty: u16) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t == ty)
            .count()
    }

    /// Checks a data_provision's ids, then keeps its datagrams.
    fn data(&self, conn: u64, m: &Msg, want: &Ids) {
        if m.u32(CLIENT_ID) != Some(want.client_id)
            || m.u16(DATA_STREAM_ID) != Some(want.stream)
            || m.u16(DATA_ID) != Some(want.data_id)
            || m.get(DATA_CHANNEL_ID)
                .is_some_and(|c| c != want.channel.to_be_bytes())
        {
            self.anomaly(format!("data_provision with other ids: {m:?}"));
        }
        let now = Instant::now();
        let mut d = self.datagrams.lock().unwrap();
        for g in m.all(DATAGRAM) {
            d.push((now, conn, g.to_vec()));
        }
    }
}

/// The ids the MUX expects.
#[derive(Debug, Clone, Copy)]
struct Ids {
    client_id: u32,
    channel: u16,
    stream: u16,
    data_id: u16,
    /// section_TSpkt_flag.
    flag: u8,
}

/// A MUX test peer: a TCP server for the EMMG interface (and a UDP port
/// for data_provision), restartable on the same port.
struct MuxPeer {
    addr: SocketAddr,
    udp_addr: SocketAddr,
    udp: UdpSocket,
    state: Arc<MuxState>,
    ids: Ids,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl MuxPeer {
    fn start(state: Arc<MuxState>, ids: Ids) -> MuxPeer {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        Self::start_at(state, ids, "127.0.0.1:0".parse().unwrap(), udp)
    }

    fn start_at(state: Arc<MuxState>, ids: Ids, addr: SocketAddr, udp: UdpSocket) -> MuxPeer {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (state, stop) = (state.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let n = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
                            let (state, stop) = (state.clone(), stop.clone());
                            conns.push(std::thread::spawn(move || serve(s, n, &state, ids, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        {
            let (state, stop, udp) = (state.clone(), stop.clone(), udp.try_clone().unwrap());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = udp.recv(&mut buf) else { continue };
                    match decode(&buf[..n]) {
                        Some(Ok((m, used))) if used == n && m.ty == DATA_PROVISION => {
                            // Over UDP the channel must be named.
                            if m.u16(DATA_CHANNEL_ID) != Some(ids.channel) {
                                state.anomaly("UDP data_provision without data_channel_id".into());
                            }
                            let conn = state.connections.load(Ordering::Relaxed);
                            state.events.lock().unwrap().push((conn, m.ty));
                            state.data(conn, &m, &ids);
                        }
                        other => state.anomaly(format!("UDP datagram: {other:?}")),
                    }
                }
            }));
        }
        MuxPeer {
            addr,
            udp_addr,
            udp,
            state,
            ids,
            stop,
            threads,
        }
    }

    /// Closes the port and every connection.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Listens again on the same ports, after [`MuxPeer::stop`].
    fn resume(&mut self) {
        let udp = self.udp.try_clone().unwrap();
        *self = MuxPeer::start_at(self.state.clone(), self.ids, self.addr, udp);
    }
}

impl Drop for MuxPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One EMMG connection, as the MUX serves it.
fn serve(mut s: TcpStream, conn: u64, state: &MuxState, ids: Ids, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let mut allocated = false;
    let mut tested = false;
    let send = |s: &mut TcpStream, ty: u16, p: &[(u16, &[u8])]| {
        let _ = s.write_all(&encode(3, ty, p));
    };
    let cid = ids.client_id.to_be_bytes();
    let ch = ids.channel.to_be_bytes();
    let st = ids.stream.to_be_bytes();
    while !stop.load(Ordering::Relaxed) {
        if allocated && !tested {
            // The MUX's keep-alives.
            tested = true;
            send(
                &mut s,
                CHANNEL_TEST,
                &[(CLIENT_ID, &cid), (DATA_CHANNEL_ID, &ch)],
            );
            send(
                &mut s,
                STREAM_TEST,
                &[
                    (CLIENT_ID, &cid),
                    (DATA_CHANNEL_ID, &ch),
                    (DATA_STREAM_ID, &st),
                ],
            );
        }
        if allocated && state.send_stream_error.swap(false, Ordering::Relaxed) {
            send(
                &mut s,
                STREAM_ERROR,
                &[
                    (CLIENT_ID, &cid),
                    (DATA_CHANNEL_ID, &ch),
                    (DATA_STREAM_ID, &st),
                    (ERROR_STATUS, &EXCEEDED_BANDWIDTH.to_be_bytes()),
                ],
            );
        }
        if allocated && state.send_bad_version.swap(false, Ordering::Relaxed) {
            let _ = s.write_all(&encode(
                2,
                CHANNEL_TEST,
                &[(CLIENT_ID, &cid), (DATA_CHANNEL_ID, &ch)],
            ));
        }
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => continue,
        }
        while let Some(r) = decode(&buf) {
            let (m, used) = match r {
                Ok(x) => x,
                Err(e) => {
                    state.anomaly(format!("connection {conn}: {e}"));
                    return;
                }
            };
            buf.drain(..used);
            if m.version != 3 {
                state.anomaly(format!("protocol_version {}", m.version));
            }
            state.events.lock().unwrap().push((conn, m.ty));
            match m.ty {
                CHANNEL_SETUP => {
                    if m.u32(CLIENT_ID) != Some(ids.client_id)
                        || m.u16(DATA_CHANNEL_ID) != Some(ids.channel)
                        || m.get(SECTION_TSPKT_FLAG) != Some(&[ids.flag][..])
                    {
                        state.anomaly(format!("channel_setup {m:?}"));
                    }
                    if state
                        .refuse_setups
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        send(
                            &mut s,
                            CHANNEL_ERROR,
                            &[
                                (CLIENT_ID, &cid),
                                (DATA_CHANNEL_ID, &ch),
                                (ERROR_STATUS, &UNKNOWN_CLIENT_ID.to_be_bytes()),
                            ],
                        );
                        // A MUX that refuses the channel closes.
                        let _ = s.shutdown(Shutdown::Both);
                        return;
                    }
                    send(
                        &mut s,
                        CHANNEL_STATUS,
                        &[
                            (CLIENT_ID, &cid),
                            (DATA_CHANNEL_ID, &ch),
                            (SECTION_TSPKT_FLAG, &[ids.flag]),
                        ],
                    );
                }
                STREAM_SETUP => {
                    if m.u16(DATA_STREAM_ID) != Some(ids.stream)
                        || m.u16(DATA_ID) != Some(ids.data_id)
                        || m.get(DATA_TYPE) != Some(&[0][..])
                        || !state.saw(conn, CHANNEL_SETUP)
                    {
                        state.anomaly(format!("stream_setup {m:?}"));
                    }
                    send(
                        &mut s,
                        STREAM_STATUS,
                        &[
                            (CLIENT_ID, &cid),
                            (DATA_CHANNEL_ID, &ch),
                            (DATA_STREAM_ID, &st),
                            (DATA_ID, &ids.data_id.to_be_bytes()),
                            (DATA_TYPE, &[0]),
                        ],
                    );
                }
                STREAM_BW_REQUEST => {
                    if !state.saw(conn, STREAM_SETUP) {
                        state.anomaly("stream_BW_request before stream_setup".into());
                    }
                    let grant = state.grant_kbps.load(Ordering::Relaxed) as u16;
                    send(
                        &mut s,
                        STREAM_BW_ALLOCATION,
                        &[
                            (CLIENT_ID, &cid),
                            (DATA_CHANNEL_ID, &ch),
                            (DATA_STREAM_ID, &st),
                            (BANDWIDTH, &grant.to_be_bytes()),
                        ],
                    );
                    allocated = true;
                }
                DATA_PROVISION => {
                    if !allocated {
                        state.anomaly("data_provision before the allocation".into());
                    }
                    state.data(conn, &m, &ids);
                }
                CHANNEL_ERROR => {
                    if let Some(e) = m.u16(ERROR_STATUS) {
                        state.errors.lock().unwrap().push(e);
                    }
                }
                STREAM_CLOSE_REQUEST => send(
                    &mut s,
                    STREAM_CLOSE_RESPONSE,
                    &[
                        (CLIENT_ID, &cid),
                        (DATA_CHANNEL_ID, &ch),
                        (DATA_STREAM_ID, &st),
                    ],
                ),
                CHANNEL_CLOSE => return,
                CHANNEL_STATUS | STREAM_STATUS => {}
                other => state.anomaly(format!("message_type 0x{other:04x}")),
            }
        }
    }
}

/// TS bytes a datagram takes on the air: TS packets as they are, a
/// section as a pointer field and 184 payload bytes a packet.
fn air(d: &[u8]) -> u64 {
    if d.len() % PACKET_LEN == 0 && d.first() == Some(&0x47) {
        d.len() as u64
    } else {
        (d.len() as u64 + 1).div_ceil(184) * PACKET_LEN as u64
    }
}

/// headend.toml's `[[simulcrypt.mux]]` table for `peer`, with more lines.
fn mux_table(peer: &MuxPeer, extra: &str) -> String {
    format!(
        "\n[[simulcrypt.mux]]\nname = \"mux-a\"\naddress = \"{}\"\ndata_id = {}\n{extra}",
        peer.addr, peer.ids.data_id
    )
}

fn append_config(h: &Headend, text: &str) {
    let mut toml = std::fs::read_to_string(h.config()).unwrap();
    toml.push_str(text);
    std::fs::write(h.config(), toml).unwrap();
}

fn metrics(h: &Headend) -> String {
    match h.request("GET", "/metrics", None) {
        Some((200, Value::String(s))) => s,
        other => panic!("/metrics: {other:?}"),
    }
}

/// A sample's value in a scrape (`name{labels}` exactly as written), 0 if
/// absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn wait_until(what: &str, limit: Duration, h: &Headend, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; headend log:\n{}",
            h.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

const IDS: Ids = Ids {
    client_id: 0xF10D_0001,
    channel: 1,
    stream: 1,
    data_id: 0x0042,
    flag: 0,
};

#[test]
fn the_emmg_client_sets_up_paces_and_reconnects() {
    const GRANT_KBPS: u64 = 16;
    let state = MuxState::new(GRANT_KBPS);
    state.refuse_setups.store(1, Ordering::Relaxed);
    let mut peer = MuxPeer::start(state.clone(), IDS);
    let mut h = Headend::init(workspace_bin("headend"), PERIOD_MS, Some(1000));
    append_config(&h, &mux_table(&peer, "bandwidth_kbps = 100\n"));
    h.start();

    // The refusal, then a channel: the client backs off and tries again.
    wait_until(
        "an allocation and the tests answered",
        Duration::from_secs(10),
        &h,
        || state.count(CHANNEL_STATUS) >= 1 && state.count(STREAM_STATUS) >= 1,
    );
    assert_eq!(state.connections.load(Ordering::Relaxed), 2);
    assert!(h.log().contains("0x000e"), "{}", h.log_tail(20));
    assert!(h.log().contains("set client_id"), "{}", h.log_tail(20));
    // channel_test and stream_test answered with their status.
    assert!(state.saw(2, CHANNEL_STATUS) && state.saw(2, STREAM_STATUS));

    // Far more EMMs than 16 kbit/s: 40 cards subscribed, a 1 s cycle.
    h.cli(&["product", "add", "basic"]);
    let t_load = Instant::now();
    for i in 0..40u32 {
        let key = proto::crypto::X25519Secret::random().public();
        h.post(
            "/api/v1/cards",
            serde_json::to_value(api::NewCard::new(5000 + i, &key, 1)).unwrap(),
        );
        h.post(
            "/api/v1/subscriptions",
            json!({"card_id": 5000 + i, "product": "basic", "until": "2099-12-31"}),
        );
    }
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(t_load.elapsed()) + Duration::from_secs(1),
    );
    let text = metrics(&h);
    let mux = "{mux=\"mux-a\"}";
    assert!(
        sample(&text, &format!("iodoform_mux_emm_backlog_sections{mux}")) > 0.0,
        "the carousel should make more than 16 kbit/s: {text}"
    );

    // Pacing: over the connection's data, never more than the allocation
    // (its 200 ms bank and one section aside), and most of it used.
    {
        let d = state.datagrams.lock().unwrap();
        let ours: Vec<_> = d.iter().filter(|(_, c, _)| *c == 2).collect();
        assert!(ours.len() > 10, "{} datagrams", ours.len());
        for (_, _, g) in &ours {
            // EMM-U (0x82) or EMM-G (0x83) sections, whole.
            assert!(matches!(g[0], 0x82 | 0x83), "table_id 0x{:02x}", g[0]);
            let len = usize::from(u16::from_be_bytes([g[1] & 0x0F, g[2]]));
            assert_eq!(g.len(), 3 + len);
        }
        let (first, last) = (ours[0].0, ours[ours.len() - 1].0);
        let secs = last.duration_since(first).as_secs_f64();
        let sent: u64 = ours.iter().map(|(_, _, g)| air(g)).sum();
        let biggest = ours.iter().map(|(_, _, g)| air(g)).max().unwrap();
        let rate = GRANT_KBPS as f64 * 1000.0 / 8.0;
        eprintln!(
            "{} datagrams, {sent} TS bytes in {secs:.2} s: {:.0} bit/s of {} allocated",
            ours.len(),
            sent as f64 * 8.0 / secs,
            GRANT_KBPS * 1000
        );
        let allowed = rate * secs + rate * 0.2 + biggest as f64;
        assert!(
            (sent as f64) <= allowed,
            "{sent} TS bytes in {secs:.2} s: more than {allowed:.0} at {GRANT_KBPS} kbit/s"
        );
        assert!(
            secs > 2.0 && sent as f64 >= 0.7 * rate * secs,
            "{sent} TS bytes in {secs:.2} s: the allocation is not used"
        );
    }
    let text = metrics(&h);
    assert_eq!(sample(&text, &format!("iodoform_mux_connected{mux}")), 1.0);
    assert_eq!(
        sample(
            &text,
            &format!("iodoform_mux_allocated_bandwidth_bits_per_second{mux}")
        ),
        16_000.0
    );
    assert!(sample(&text, &format!("iodoform_mux_emm_bytes_sent_total{mux}")) > 0.0);
    assert_eq!(
        sample(
            &text,
            "iodoform_mux_errors_total{mux=\"mux-a\",code=\"0x000e\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("iodoform_mux_reconnects_total{mux}")),
        0.0
    );
    let st = h.cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&st.stdout).unwrap();
    let m = &v["muxes"][0];
    assert_eq!(m["name"], "mux-a");
    assert_eq!(m["connected"], true);
    assert_eq!(m["allocated_kbps"], 16);
    assert_eq!(m["requested_kbps"], 100);
    assert_eq!(m["client_id"], IDS.client_id);
    assert_eq!(m["errors"]["0x000e"], 1);
    let table = String::from_utf8(h.cli(&["status"]).stdout).unwrap();
    assert!(
        table.contains("mux-a") && table.contains("16 of 100 kbit/s"),
        "{table}"
    );

    // A stream_error that leaves the stream up: logged with its fix and
    // counted, and the EMMs go on on the same connection.
    state.send_stream_error.store(true, Ordering::Relaxed);
    wait_until(
        "the stream_error counted",
        Duration::from_secs(5),
        &h,
        || {
            sample(
                &metrics(&h),
                "iodoform_mux_errors_total{mux=\"mux-a\",code=\"0x000f\"}",
            ) == 1.0
        },
    );
    let sent = state.datagrams.lock().unwrap().len();
    wait_until(
        "EMMs after the stream_error",
        Duration::from_secs(5),
        &h,
        || state.datagrams.lock().unwrap().len() > sent,
    );
    assert_eq!(state.connections.load(Ordering::Relaxed), 2);
    assert!(
        h.log().contains("lower bandwidth_kbps"),
        "{}",
        h.log_tail(20)
    );

    // The MUX restarts: the client sees it go, and comes back.
    peer.stop();
    std::thread::sleep(Duration::from_millis(700));
    let gone = metrics(&h);
    assert_eq!(
        sample(&gone, &format!("iodoform_mux_connected{mux}")),
        0.0,
        "{gone}"
    );
    std::thread::sleep(Duration::from_millis(800));
    peer.resume();
    wait_until(
        "a reconnection after the MUX restarted",
        Duration::from_secs(10),
        &h,
        || {
            state.connections.load(Ordering::Relaxed) >= 3
                && state
                    .datagrams
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(_, c, _)| *c == 3)
        },
    );
    let text = metrics(&h);
    assert_eq!(
        sample(&text, &format!("iodoform_mux_reconnects_total{mux}")),
        1.0
    );
    assert!(
        h.log().contains("reconnected to the MUX"),
        "{}",
        h.log_tail(20)
    );

    // A message in protocol version 2: answered with error_status 0x0002
    // (unsupported protocol version), then a new connection.
    state.send_bad_version.store(true, Ordering::Relaxed);
    wait_until(
        "a reconnection after a version-2 message",
        Duration::from_secs(10),
        &h,
        || state.connections.load(Ordering::Relaxed) >= 4 && state.saw(4, STREAM_BW_REQUEST),
    );
    assert_eq!(*state.errors.lock().unwrap(), [0x0002]);
    let text = metrics(&h);
    assert_eq!(
        sample(
            &text,
            "iodoform_mux_protocol_faults_total{mux=\"mux-a\",code=\"0x0002\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("iodoform_mux_reconnects_total{mux}")),
        2.0
    );
    assert!(h.is_running());
    let anomalies = state.anomalies.lock().unwrap().clone();
    assert!(anomalies.is_empty(), "{anomalies:?}");
    h.stop();
    // A clean stop closes the stream and the channel.
    let deadline = Instant::now() + Duration::from_secs(2);
    while state.count(CHANNEL_CLOSE) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(state.count(STREAM_CLOSE_REQUEST) >= 1 && state.count(CHANNEL_CLOSE) >= 1);
}

/// The MUX's EMM PID, not the headend's.
const MUX_EMM_PID: u16 = 0x1F5;

/// The MUX's output: the headend's channel without its EMM PID and CAT,
/// plus a CAT naming [`MUX_EMM_PID`] and, on it, the EMMs of the MUX peer's
/// data_provision (TS packets re-stamped on its PID and counter).
struct Remux {
    addr: SocketAddr,
    /// Packets of the headend's EMM PID dropped, EMM packets put in.
    dropped_own: Arc<AtomicU64>,
    inserted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Remux {
    fn start(state: Arc<MuxState>, to: SocketAddr) -> Remux {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let (dropped_own, inserted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, i, s) = (dropped_own.clone(), inserted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let out = UdpSocket::bind("127.0.0.1:0").unwrap();
            let cat = ts::psi::Cat {
                version: 5,
                current_next: true,
                descriptors: vec![ts::psi::Descriptor::iodoform_ca(MUX_EMM_PID)],
            }
            .to_section()
            .unwrap();
            let (mut cat_cc, mut emm_cc) = (0u8, 0u8);
            let mut next_cat = Instant::now();
            let mut taken = 0;
            let mut queue: VecDeque<[u8; PACKET_LEN]> = VecDeque::new();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                // The EMMs the MUX received since the last pass.
                {
                    let g = state.datagrams.lock().unwrap();
                    for (_, _, dg) in g.iter().skip(taken) {
                        for p in Packets::new(dg) {
                            let mut p = *p;
                            p[1] = (p[1] & 0xE0) | (MUX_EMM_PID >> 8) as u8;
                            p[2] = MUX_EMM_PID as u8;
                            p[3] = (p[3] & 0xF0) | emm_cc;
                            emm_cc = (emm_cc + 1) & 0x0F;
                            queue.push_back(p);
                        }
                    }
                    taken = g.len();
                }
                let mut dgram = Vec::new();
                if Instant::now() >= next_cat {
                    next_cat = Instant::now() + Duration::from_millis(100);
                    let mut pkts = Vec::new();
                    ts::psi::packetize(&[&cat], 0x0001, &mut cat_cc, &mut pkts).unwrap();
                    for p in pkts {
                        dgram.extend_from_slice(&p);
                    }
                }
                while let Some(p) = queue.pop_front() {
                    dgram.extend_from_slice(&p);
                    i.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(n) = sock.recv(&mut buf) {
                    for p in Packets::new(&buf[..n]) {
                        match pid_of(p) {
                            EMM_PID => {
                                d.fetch_add(1, Ordering::Relaxed);
                            }
                            0x0001 => {}
                            _ => dgram.extend_from_slice(p),
                        }
                    }
                }
                for chunk in dgram.chunks(7 * PACKET_LEN) {
                    let _ = out.send_to(chunk, to);
                }
            }
        });
        Remux {
            addr,
            dropped_own,
            inserted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Remux {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_card_gets_its_entitlement_from_the_mux_alone() {
    let test = "a_card_gets_its_entitlement_from_the_mux_alone";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    // TS packets over UDP this time.
    let ids = Ids { flag: 1, ..IDS };
    let state = MuxState::new(64);
    let peer = MuxPeer::start(state.clone(), ids);
    let rx_in = receiver_input();
    let remux = Remux::start(state.clone(), rx_in);

    let headend = Headend::init(workspace_bin("headend"), PERIOD_MS, Some(1000));
    append_config(
        &headend,
        &mux_table(
            &peer,
            &format!(
                "datagrams = \"ts\"\ndata_provision = \"udp\"\nudp_address = \"{}\"\nbandwidth_kbps = 64\n",
                peer.udp_addr
            ),
        ),
    );
    let (headend, input) = go_on_air(headend, remux.addr);
    let dir = tempfile::tempdir().unwrap();
    let card = provision(&headend, &slot, CARD, &dir.path().join("card.img"), false);
    let sys = System::from_parts(dir, headend, card, slot.reader, input);
    let clip = Arc::new(ffmpeg::clip(
        &sys.path("clear.ts"),
        2,
        "testsrc=size=160x120:rate=25",
        1000,
    ));
    let feeder = Feeder::start(sys.input, move || Some(clip.clone()));
    wait_until(
        "the MUX's allocation",
        Duration::from_secs(10),
        &sys.headend,
        || state.count(STREAM_BW_REQUEST) >= 1,
    );

    let out_path = sys.path("out.ts");
    let log = sys.path("receiver.log");
    let rx = sys.receiver(rx_in, out_path.to_str().unwrap(), &log);
    // Not subscribed: nothing comes out.
    std::thread::sleep(Duration::from_secs(2));
    let before = std::fs::read(&out_path).unwrap_or_default();
    assert!(
        !Packets::new(&before).any(|p| crate::e2e_stream::ES.contains(&pid_of(p))),
        "clear video before the subscription:\n{}",
        sys.logs(&log)
    );
    let emms_before = remux.inserted.load(Ordering::Relaxed);

    // Subscribed now: its EMMs reach the card by the MUX alone.
    sys.headend
        .cli(&["subscribe", CARD, "basic", "--until", "2099-12-31"]);
    let subscribed = Instant::now();
    let deadline = subscribed + Duration::from_secs(20);
    loop {
        let out = std::fs::read(&out_path).unwrap_or_default();
        if Packets::new(&out).any(|p| pid_of(p) == 0x100) {
            eprintln!(
                "clear video {:?} after the subscription; the MUX put {} EMM packets on the air, the headend's own {} were dropped",
                subscribed.elapsed(),
                remux.inserted.load(Ordering::Relaxed),
                remux.dropped_own.load(Ordering::Relaxed)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no clear video within 20 s of the subscription:\n{}",
            sys.logs(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stats = sys.stop_receiver(rx, &log);
    drop(feeder);
    assert!(stats["exit_code"] == 0, "{stats}");
    // The headend's own EMM PID carried EMMs, and none reached the receiver;
    // the MUX's did.
    assert!(remux.dropped_own.load(Ordering::Relaxed) > 0);
    assert!(remux.inserted.load(Ordering::Relaxed) > emms_before);
    // The card holds the entitlement (read through pcscd).
    let o = std::process::Command::new(workspace_bin("smartcard"))
        .args(["info", "--json", "--reader", slot.reader])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ents = info["entitlements"].as_array().cloned().unwrap_or_default();
    assert!(!ents.is_empty(), "{info}");
    let anomalies = state.anomalies.lock().unwrap().clone();
    assert!(anomalies.is_empty(), "{anomalies:?}");
    let v: Value = sys.headend.get("/api/v1/status");
    assert_eq!(v["muxes"][0]["data_provision"], "udp");
    assert!(v["muxes"][0]["emm_bytes_sent"].as_u64().unwrap() > 0);
    drop(peer);
}
