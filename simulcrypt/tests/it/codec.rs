//! Properties of the codec: any bytes give a message or a typed error and
//! never a panic; a message reads back from its own bytes; a typed message
//! reads back from its generic form; a faulty message gets the standard's
//! error code on each interface.

use proptest::prelude::*;
use simulcrypt::ecmg::{self, CpCw, CwProvision, EcmgMessage};
use simulcrypt::emmg::{self, EmmgMessage};
use simulcrypt::{Header, Message, Param, ViolationKind, HEADER_LEN};

fn any_message() -> impl Strategy<Value = Message> {
    (
        any::<u8>(),
        any::<u16>(),
        prop::collection::vec(
            (any::<u16>(), prop::collection::vec(any::<u8>(), 0..40)),
            0..12,
        ),
    )
        .prop_map(|(version, message_type, params)| Message {
            version,
            message_type,
            params: params.into_iter().map(|(t, v)| Param::new(t, v)).collect(),
        })
}

/// Messages built from the interfaces' own parameter types, so that the
/// typed layer is reached often rather than refused at the first type.
fn plausible_message(
    types: &'static [u16],
    params: &'static [u16],
) -> impl Strategy<Value = Message> {
    (
        prop::sample::select(types),
        prop::collection::vec(
            (
                prop::sample::select(params),
                prop::collection::vec(any::<u8>(), 0..6),
            ),
            0..10,
        ),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(message_type, params, v3)| Message {
            version: if v3 { 3 } else { 2 },
            message_type,
            params: params.into_iter().map(|(t, v)| Param::new(t, v)).collect(),
        })
}

const ECMG_TYPES: &[u16] = &[
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0106, 0x0201,
    0x0202, 0x0300,
];
const ECMG_PARAMS: &[u16] = &[
    0x0001, 0x0002, 0x0003, 0x0007, 0x000A, 0x000B, 0x000D, 0x000E, 0x000F, 0x0010, 0x0011, 0x0012,
    0x0014, 0x0015, 0x0019, 0x7000, 0x7001, 0x8001,
];
const EMMG_TYPES: &[u16] = &[
    0x0011, 0x0012, 0x0013, 0x0014, 0x0015, 0x0111, 0x0112, 0x0113, 0x0114, 0x0115, 0x0116, 0x0117,
    0x0118, 0x0211, 0x0001,
];
const EMMG_PARAMS: &[u16] = &[
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0008, 0x7000, 0x7001, 0x8001,
];

proptest! {
    #[test]
    fn any_bytes_decode_or_refuse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        match Message::decode(&bytes) {
            Ok((m, used)) => {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(m.encode().unwrap(), bytes[..used].to_vec());
                let _ = EcmgMessage::decode(&m);
                let _ = EmmgMessage::decode(&m);
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }

    #[test]
    fn a_message_reads_back_from_its_bytes(m in any_message()) {
        let bytes = m.encode().unwrap();
        let head: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        prop_assert_eq!(usize::from(Header::parse(&head).length), bytes.len() - HEADER_LEN);
        prop_assert_eq!(Message::decode(&bytes).unwrap(), (m, bytes.len()));
    }

    #[test]
    fn a_cut_message_is_refused(m in any_message(), cut in 1usize..20) {
        let bytes = m.encode().unwrap();
        let keep = bytes.len().saturating_sub(cut);
        prop_assert!(Message::decode(&bytes[..keep]).is_err());
    }

    #[test]
    fn an_ecmg_message_is_typed_or_refused_and_reads_back(m in plausible_message(ECMG_TYPES, ECMG_PARAMS)) {
        match EcmgMessage::decode(&m) {
            Ok(typed) => {
                let again = typed.to_message();
                prop_assert_eq!(EcmgMessage::decode(&again).unwrap(), typed);
            }
            Err(v) => {
                prop_assert!(v.ecmg_status() >= 1 && v.ecmg_status() <= 0x0011);
                prop_assert!(!v.detail.contains('\n'));
            }
        }
    }

    #[test]
    fn an_emmg_message_is_typed_or_refused_and_reads_back(m in plausible_message(EMMG_TYPES, EMMG_PARAMS)) {
        match EmmgMessage::decode(&m) {
            Ok(typed) => {
                let again = typed.to_message();
                prop_assert_eq!(EmmgMessage::decode(&again).unwrap(), typed);
            }
            Err(v) => {
                prop_assert!(v.emmg_status() >= 1 && v.emmg_status() <= 0x000D);
                prop_assert!(!v.detail.contains('\n'));
            }
        }
    }
}

fn cw_provision() -> EcmgMessage {
    EcmgMessage::CwProvision(CwProvision {
        channel: 1,
        stream: 2,
        cp_number: 7,
        cw_encryption: None,
        cp_cw: vec![
            CpCw {
                cp: 7,
                cw: vec![0x11; 16].into(),
            },
            CpCw {
                cp: 8,
                cw: vec![0x22; 16].into(),
            },
        ],
        cp_duration: Some(100),
        access_criteria: Some(b"IODO\x00\x01".to_vec()),
    })
}

#[test]
fn a_cw_provision_has_the_layout_of_the_standard() {
    let bytes = cw_provision().to_message().encode().unwrap();
    // protocol_version 3, CW_provision 0x0201.
    assert_eq!(&bytes[..3], &[0x03, 0x02, 0x01]);
    // First parameter: ECM_channel_id (0x000E), 2 bytes, value 1.
    assert_eq!(&bytes[5..11], &[0x00, 0x0E, 0x00, 0x02, 0x00, 0x01]);
    // CP_CW_combination: 0x0014, 18 bytes, CP 7 then the CW.
    let at = bytes
        .windows(4)
        .position(|w| w == [0x00, 0x14, 0x00, 0x12])
        .unwrap();
    assert_eq!(&bytes[at + 4..at + 6], &[0x00, 0x07]);
}

#[test]
fn debug_output_never_shows_a_control_word() {
    let text = format!("{:?} {:?}", cw_provision(), cw_provision().to_message());
    assert!(
        !text.contains("17, 17") && !text.contains("0x11") && !text.contains("[17"),
        "{text}"
    );
    assert!(text.contains("REDACTED"));
}

#[test]
fn faults_get_the_standard_error_codes_on_each_interface() {
    let setup = EcmgMessage::ChannelSetup {
        channel: 1,
        super_cas_id: 0x4AD0_0001,
    }
    .to_message();
    // A wrong version.
    let mut m = setup.clone();
    m.version = 2;
    let v = EcmgMessage::decode(&m).unwrap_err();
    assert_eq!(
        (v.kind, v.ecmg_status()),
        (ViolationKind::UnsupportedVersion, 0x0002)
    );
    // An unknown message type.
    let mut m = setup.clone();
    m.message_type = 0x0999;
    assert_eq!(EcmgMessage::decode(&m).unwrap_err().ecmg_status(), 0x0003);
    // A missing Super_CAS_id.
    let mut m = setup.clone();
    m.params.retain(|p| p.ty != ecmg::param::SUPER_CAS_ID);
    let v = EcmgMessage::decode(&m).unwrap_err();
    assert_eq!((v.ecmg_status(), v.param), (0x0010, Some(0x0001)));
    // ECM_channel_id of 3 bytes.
    let m = Message::new(ecmg::msg::CHANNEL_TEST).with(ecmg::param::ECM_CHANNEL_ID, [0, 0, 1]);
    assert_eq!(EcmgMessage::decode(&m).unwrap_err().ecmg_status(), 0x000F);
    // A DVB parameter channel_test does not define.
    let m = EcmgMessage::ChannelTest { channel: 1 }
        .to_message()
        .with(ecmg::param::LEAD_CW, [1]);
    assert_eq!(EcmgMessage::decode(&m).unwrap_err().ecmg_status(), 0x000E);
    // A user-defined parameter is ignored.
    let m = EcmgMessage::ChannelTest { channel: 1 }
        .to_message()
        .with(0x8001, [1, 2]);
    assert_eq!(
        EcmgMessage::decode(&m).unwrap(),
        EcmgMessage::ChannelTest { channel: 1 }
    );
    // The same faults on the EMMG interface have its own numbers.
    let m = Message::new(emmg::msg::CHANNEL_TEST).with(emmg::param::CLIENT_ID, [0, 0, 0, 1]);
    assert_eq!(EmmgMessage::decode(&m).unwrap_err().emmg_status(), 0x000C);
    let m = Message::new(emmg::msg::CHANNEL_TEST)
        .with(emmg::param::CLIENT_ID, [0, 0, 1])
        .with(emmg::param::DATA_CHANNEL_ID, [0, 1]);
    assert_eq!(EmmgMessage::decode(&m).unwrap_err().emmg_status(), 0x000B);
}
