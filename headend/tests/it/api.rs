//! Bad API requests: each gets a 4xx with `{"error": "..."}`, never a
//! 500, and nothing is written.

use crate::common::*;
use serde_json::{json, Value};

/// Everything the API can show, to compare before and after.
fn snapshot(h: &Headend) -> Value {
    let status = h.get("/api/v1/status");
    json!({
        "products": h.get("/api/v1/products"),
        "channels": h.get("/api/v1/channels"),
        "cards": h.get("/api/v1/cards"),
        "subscriptions": h.get("/api/v1/subscriptions"),
        "card": h.get("/api/v1/cards/7"),
        "cards_count": status["cards"],
        "carousel": status["carousel_cards"],
    })
}

fn raw(
    h: &Headend,
    method: &str,
    path: &str,
    token: Option<&str>,
    ctype: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut req = h.agent.request(method, &h.url(path));
    if let Some(t) = token {
        req = req.set("Authorization", t);
    }
    if let Some(c) = ctype {
        req = req.set("Content-Type", c);
    }
    let r = if body.is_empty() && method == "GET" {
        req.call()
    } else {
        req.send_bytes(body)
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    (resp.status(), resp.into_string().unwrap())
}

#[test]
fn bad_requests_get_4xx_json_and_change_nothing() {
    let mut h = Headend::init(BIN, 1000, Some(2000));
    h.start();
    let op = operator(&h);
    h.post("/api/v1/products", json!({"name": "sports", "id": 1}));
    h.post(
        "/api/v1/channels",
        json!({"name": "s1", "service_id": 257, "product": "sports", "ecm_pid": 0x201, "emm_pid": 0x202}),
    );
    let (_card, public) = new_card(&op, 7);
    register(&h, 7, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(7, "sports", "2099-01-31"),
    );
    let before = snapshot(&h);
    let bearer = format!("Bearer {}", h.token);
    let t = Some(bearer.as_str());
    let j = Some("application/json");
    let pk = hex::encode(public);
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(100 * 1024));
    let zero_key = format!(r#"{{"card_id": 7, "receiver_key": "{}"}}"#, "00".repeat(32));
    let order_4_key = format!(
        r#"{{"card_id": 7, "receiver_key": "01{}"}}"#,
        "00".repeat(31)
    );

    // (method, path, authorization, content type, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        String,
        u16,
    );
    let cases: Vec<Case> = vec![
        // Token.
        ("GET", "/api/v1/products", None, None, String::new(), 401),
        (
            "GET",
            "/api/v1/products",
            Some("Bearer wrong"),
            None,
            String::new(),
            401,
        ),
        (
            "GET",
            "/api/v1/products",
            Some(h.token.as_str()),
            None,
            String::new(),
            401,
        ),
        (
            "POST",
            "/api/v1/products",
            Some("Bearer "),
            j,
            r#"{"name":"x"}"#.into(),
            401,
        ),
        ("GET", "/metrics", None, None, String::new(), 401),
        // Malformed JSON, wrong types, unknown fields, no content type.
        ("POST", "/api/v1/products", t, j, r#"{"name":"#.into(), 400),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": 5}"#.into(),
            422,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": "x", "colour": 1}"#.into(),
            422,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            None,
            r#"{"name": "x"}"#.into(),
            415,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": ""}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": "42"}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": "x", "id": 0}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/rotate",
            t,
            j,
            r#"{"product": "#.into(),
            400,
        ),
        // Oversized body.
        ("POST", "/api/v1/products", t, j, big, 413),
        // Unknown ids.
        ("GET", "/api/v1/cards/999", t, None, String::new(), 404),
        ("GET", "/api/v1/cards/abc", t, None, String::new(), 400),
        ("POST", "/api/v1/cards/999/revoke", t, j, "{}".into(), 404),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 999, "product": 1, "until": "2099-01-01"}"#.into(),
            404,
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": 99, "until": "2099-01-01"}"#.into(),
            404,
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": "golf", "until": "2099-01-01"}"#.into(),
            404,
        ),
        (
            "DELETE",
            "/api/v1/subscriptions/7/99",
            t,
            None,
            String::new(),
            404,
        ),
        (
            "DELETE",
            "/api/v1/subscriptions/999/1",
            t,
            None,
            String::new(),
            404,
        ),
        (
            "DELETE",
            "/api/v1/subscriptions/x/1",
            t,
            None,
            String::new(),
            400,
        ),
        (
            "POST",
            "/api/v1/pairings",
            t,
            j,
            format!(r#"{{"card_id": 999, "receiver_key": "{pk}"}}"#),
            404,
        ),
        (
            "POST",
            "/api/v1/rotate",
            t,
            j,
            r#"{"product": 99}"#.into(),
            404,
        ),
        (
            "POST",
            "/api/v1/channels",
            t,
            j,
            r#"{"name": "s2", "service_id": 258, "product": 99, "ecm_pid": 512, "emm_pid": 513}"#
                .into(),
            404,
        ),
        // Bad dates.
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": 1, "until": "2099-13-45"}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": 1, "until": "tomorrow"}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": 1, "until": "2001-01-01"}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": 1, "until": "2099-01-01", "start": "2099-02-01"}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/subscriptions",
            t,
            j,
            r#"{"card_id": 7, "product": 1, "until": "2099-01-01T25:00:00Z"}"#.into(),
            400,
        ),
        // Bad cards and keys.
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            r#"{"card_id": 8, "public_key": "abcd", "operator_id": 1}"#.into(),
            400,
        ),
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            format!(r#"{{"card_id": 8, "public_key": "{pk}", "operator_id": 2}}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            format!(r#"{{"card_id": 0, "public_key": "{pk}", "operator_id": 1}}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            format!(r#"{{"card_id": 4294967295, "public_key": "{pk}", "operator_id": 1}}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            format!(
                r#"{{"card_id": 8, "public_key": "{}", "operator_id": 1}}"#,
                "00".repeat(32)
            ),
            400,
        ),
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            r#"{"card_id": -1, "public_key": "", "operator_id": 1}"#.into(),
            422,
        ),
        (
            "POST",
            "/api/v1/pairings",
            t,
            j,
            r#"{"card_id": 7, "receiver_key": "zz"}"#.into(),
            400,
        ),
        // Low-order receiver keys, refused as card keys are.
        ("POST", "/api/v1/pairings", t, j, zero_key, 400),
        ("POST", "/api/v1/pairings", t, j, order_4_key, 400),
        ("DELETE", "/api/v1/pairings/99", t, None, String::new(), 404),
        ("DELETE", "/api/v1/pairings/x", t, None, String::new(), 400),
        (
            "POST",
            "/api/v1/channels",
            t,
            j,
            r#"{"name": "s2", "service_id": 258, "product": 1, "ecm_pid": 8191, "emm_pid": 513}"#
                .into(),
            400,
        ),
        (
            "GET",
            "/api/v1/cards?limit=lots",
            t,
            None,
            String::new(),
            400,
        ),
        // Conflicts.
        (
            "POST",
            "/api/v1/cards",
            t,
            j,
            format!(r#"{{"card_id": 7, "public_key": "{pk}", "operator_id": 1}}"#),
            409,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": "sports"}"#.into(),
            409,
        ),
        (
            "POST",
            "/api/v1/products",
            t,
            j,
            r#"{"name": "other", "id": 1}"#.into(),
            409,
        ),
        (
            "POST",
            "/api/v1/channels",
            t,
            j,
            r#"{"name": "s1", "service_id": 300, "product": 1, "ecm_pid": 512, "emm_pid": 513}"#
                .into(),
            409,
        ),
        // No such endpoint or method.
        ("GET", "/api/v1/nothing", t, None, String::new(), 404),
        ("PUT", "/api/v1/products", t, j, "{}".into(), 405),
    ];
    for (method, path, token, ctype, body, want) in &cases {
        let (status, text) = raw(&h, method, path, *token, *ctype, body.as_bytes());
        assert_eq!(status, *want, "{method} {path} {body:.80}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {text}"
        );
    }
    assert_eq!(snapshot(&h), before, "a refused request changed the state");
    let metrics = h
        .agent
        .get(&h.url("/metrics"))
        .set("Authorization", &bearer)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("iodoform_errors_total{kind=\"internal\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "iodoform_errors_total{{kind=\"client\"}} {}",
            cases.len()
        )),
        "{metrics}"
    );
    // The health endpoints need no token.
    assert_eq!(raw(&h, "GET", "/live", None, None, b"").0, 200);
    assert_eq!(raw(&h, "GET", "/ready", None, None, b"").0, 200);
    // And nothing was written to disk either: a restart shows the same.
    h.kill9();
    h.start();
    assert_eq!(snapshot(&h), before);
}
