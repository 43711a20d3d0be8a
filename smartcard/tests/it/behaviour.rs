//! One behaviour suite, two transports: every case in `suite` runs on the
//! in-process applet and on the real pcscd + vpcd with `smartcard emulate`
//! as a child process, each on a blank card of its own.

use crate::suite;
use testkit::emulator::PcscCard;
use testkit::{vpcd, Emulator};

macro_rules! on_both_transports {
    ($($case:ident),* $(,)?) => {
        mod in_process {
            $(
                #[test]
                fn $case() {
                    let mut c = testkit::operator::blank_card();
                    crate::suite::$case(&mut c);
                }
            )*
        }

        mod pcsc {
            $(
                #[test]
                fn $case() {
                    super::through_pcscd(stringify!($case), |c| crate::suite::$case(c));
                }
            )*
        }
    };
}

on_both_transports!(
    personalize_blank_card,
    lock_card,
    locked_card_refuses_personalization,
    wrong_cla_and_ins,
    malformed_and_truncated_apdus,
    get_info,
    large_emm_goes_through,
);

/// Runs `case` on a fresh emulated card behind pcscd.
fn through_pcscd(name: &str, case: impl FnOnce(&mut PcscCard)) {
    if !vpcd::pcscd_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let mut c = emu.connect();
    case(&mut c);
}

/// vpcd and pcscd pass extended APDUs, so a large EMM goes whole; with
/// extended length turned off the client chains it instead, and that must
/// work through pcscd too.
#[test]
fn large_emm_chained_through_pcscd() {
    through_pcscd("large_emm_chained_through_pcscd", |c| {
        assert!(
            cardlink::CardTransport::supports_extended(c.transport()),
            "vpcd passes extended APDUs"
        );
        c.transport().set_extended(false);
        suite::large_emm_goes_through(c);
    });
}

#[test]
fn large_emm_chained_in_process() {
    let mut c = cardlink::CardClient::new(
        cardlink::InProcessCard::new(
            card::Applet::power_on(card::eeprom::MemEeprom::default()).unwrap(),
        )
        .short_only(),
    );
    suite::large_emm_goes_through(&mut c);
}
