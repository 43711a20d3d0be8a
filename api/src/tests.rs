use super::*;
use serde_json::json;

#[test]
fn product_refs_are_ids_or_names() {
    assert_eq!(ProductRef::parse("7"), ProductRef::Id(7));
    assert_eq!(
        ProductRef::parse("sports"),
        ProductRef::Name("sports".into())
    );
    let r: ProductRef = serde_json::from_value(json!(3)).unwrap();
    assert_eq!(r, ProductRef::Id(3));
    let r: ProductRef = serde_json::from_value(json!("news")).unwrap();
    assert_eq!(r.to_string(), "\"news\"");
}

#[test]
fn channel_refs_take_decimal_hex_or_a_name() {
    assert_eq!(ChannelRef::parse("257"), ChannelRef::Service(257));
    assert_eq!(ChannelRef::parse("0x101"), ChannelRef::Service(257));
    assert_eq!(ChannelRef::parse("news"), ChannelRef::Name("news".into()));
    assert_eq!(ChannelRef::parse("70000").to_string(), "\"70000\"");
    assert_eq!(ChannelRef::Service(5).to_string(), "service 5");
}

#[test]
fn a_channel_update_tells_null_from_absent() {
    let u: ChannelUpdate = serde_json::from_value(json!({"input": null})).unwrap();
    assert_eq!(u.input, Some(None));
    assert_eq!(u.output, None);
    assert!(!u.is_empty());
    // What the CLI sends is what the server reads.
    assert_eq!(serde_json::to_value(&u).unwrap(), json!({"input": null}));
    assert_eq!(
        serde_json::to_value(ChannelUpdate::default()).unwrap(),
        json!({})
    );
    assert!(ChannelUpdate::default().is_empty());
    assert!(serde_json::from_value::<ChannelUpdate>(json!({"nme": "x"})).is_err());
}

#[test]
fn requests_refuse_unknown_fields_and_omit_what_is_not_given() {
    let p = NewProduct {
        name: "basic".into(),
        id: None,
    };
    assert_eq!(serde_json::to_value(&p).unwrap(), json!({"name": "basic"}));
    assert!(serde_json::from_value::<NewProduct>(json!({"name": "x", "ids": 1})).is_err());
    let s = NewSubscription {
        card_id: 1,
        product: ProductRef::Id(2),
        until: "2027-01-01".into(),
        start: None,
    };
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        json!({"card_id": 1, "product": 2, "until": "2027-01-01"})
    );
    assert_eq!(
        serde_json::to_value(RotateRequest::default()).unwrap(),
        json!({})
    );
}

#[test]
fn a_card_record_is_the_body_the_headend_takes() {
    let c = NewCard::new(5, &[0xA5; 32], 1);
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        json!({"card_id": 5, "public_key": "a5".repeat(32), "operator_id": 1})
    );
    let back: NewCard = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

fn channel() -> Channel {
    Channel {
        service_id: 257,
        name: "news".into(),
        product: 1,
        ecm_pid: 0x101,
        emm_pid: 0x102,
        maturity: 0,
        input: Some("udp://127.0.0.1:5000".into()),
        output: None,
        clear_services: vec![],
        origin: ChannelOrigin::Api,
    }
}

#[test]
fn a_channel_view_is_the_channel_with_the_report_beside_its_fields() {
    let bare = ChannelView {
        channel: channel(),
        report: None,
    };
    let v = serde_json::to_value(&bare).unwrap();
    assert_eq!(v, serde_json::to_value(channel()).unwrap());
    assert_eq!(serde_json::from_value::<ChannelView>(v).unwrap(), bare);
    let seen = ChannelView {
        channel: channel(),
        report: Some(ChannelReport {
            state: "waiting".into(),
            error: None,
            cause: Some("no_input".into()),
            fix: Some("check the encoder".into()),
            detail: None,
        }),
    };
    let v = serde_json::to_value(&seen).unwrap();
    assert_eq!(v["service_id"], 257);
    assert_eq!(v["state"], "waiting");
    assert_eq!(v["cause"], "no_input");
    assert!(v["error"].is_null() && v.get("error").is_some());
    assert_eq!(serde_json::from_value::<ChannelView>(v).unwrap(), seen);
}

#[test]
fn ready_and_live_keep_their_shapes() {
    let ready = Ready {
        status: "ready".into(),
        not_on_air: None,
    };
    assert_eq!(
        serde_json::to_string(&ready).unwrap(),
        r#"{"status":"ready"}"#
    );
    let not = Ready {
        status: "not ready".into(),
        not_on_air: Some(vec![NotOnAir {
            name: "news".into(),
            service_id: 257,
            state: "failed".into(),
            cause: None,
            error: Some("cannot bind: use another port".into()),
        }]),
    };
    let v = serde_json::to_value(&not).unwrap();
    assert_eq!(v["not_on_air"][0]["state"], "failed");
    assert_eq!(serde_json::from_value::<Ready>(v).unwrap(), not);
    assert_eq!(
        serde_json::to_string(&Live {
            status: "live".into()
        })
        .unwrap(),
        r#"{"status":"live"}"#
    );
    assert_eq!(
        serde_json::to_string(&ErrorBody {
            error: "no such card".into()
        })
        .unwrap(),
        r#"{"error":"no such card"}"#
    );
}

#[test]
fn backup_and_clock_bodies_keep_their_shapes() {
    let b = BackupRequest {
        path: "/srv/b.db".into(),
        force: false,
    };
    assert_eq!(
        serde_json::to_value(&b).unwrap(),
        json!({"path": "/srv/b.db"})
    );
    let f: BackupRequest = serde_json::from_value(json!({"path": "/b", "force": true})).unwrap();
    assert!(f.force);
    assert!(serde_json::from_value::<BackupRequest>(json!({"path": "/b", "forse": true})).is_err());
    // A status from a headend without the clock check still reads.
    let c = ClockStatus::default();
    assert_eq!(
        serde_json::to_value(&c).unwrap(),
        json!({"persisted": null, "persisted_unix_ms": null, "max_jump_secs": 0, "refused": false})
    );
    let a: ClockAccepted = serde_json::from_value(
        json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T02:00:00Z", "jump_secs": 7200}),
    )
    .unwrap();
    assert_eq!(a.jump_secs, 7200);
}
