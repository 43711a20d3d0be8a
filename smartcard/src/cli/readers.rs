//! `smartcard readers`: every PC/SC reader, and whether it holds a card.

use cardlink::pcsc::list_readers;
use cardlink::TransportError;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let readers = match list_readers() {
        Ok(r) => r,
        Err(e @ TransportError::NoService(_)) => return Err(super::card::explain(e)),
        Err(e) => return Err(e.into()),
    };
    if readers.is_empty() {
        ::cli::outln!("no readers");
        return Ok(());
    }
    for r in readers {
        if r.card_present {
            let atr: String = r.atr.iter().map(|b| format!("{b:02X}")).collect();
            ::cli::outln!("{}\tcard\t{atr}", r.name);
        } else {
            ::cli::outln!("{}\tempty", r.name);
        }
    }
    Ok(())
}
