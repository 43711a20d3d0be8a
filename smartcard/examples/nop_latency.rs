//! The bare round trip of a NOP APDU through pcscd to a card, usually the
//! emulator (`smartcard emulate`) behind vpcd.
//!
//! `cargo run --release -p iodoform-smartcard --example nop_latency -- [READER] [COUNT]`
#![forbid(unsafe_code)]

use cardlink::pcsc::{PcscTransport, ReaderChoice};
use cardlink::{CardClient, CardTransport};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let reader = args.next();
    let count: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(2000);
    let t = PcscTransport::wait_for_card(
        ReaderChoice::from_option(reader.as_deref()),
        Duration::from_secs(5),
    )?;
    println!(
        "reader {:?}, extended APDUs pass: {}",
        t.reader(),
        t.supports_extended()
    );
    let mut c = CardClient::new(t);
    c.select()?;
    for _ in 0..100 {
        c.nop()?;
    }
    let mut us: Vec<f64> = (0..count)
        .map(|_| {
            let t0 = Instant::now();
            c.nop().map(|()| t0.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_, _>>()?;
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| us[((us.len() - 1) as f64 * p) as usize] / 1000.0;
    println!(
        "NOP round trip over {count}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
