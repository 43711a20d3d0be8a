//! The admin API: HTTP + JSON on axum, versioned under `/api/v1`.
//!
//! * Every route but `/live` and `/ready` needs `Authorization: Bearer
//!   TOKEN`, the admin token; `/metrics` also takes the read-only scrape
//!   token (`scrape.token`), which every other route refuses with 403.
//!   Tokens are compared in constant time.
//! * Errors are `{"error": "..."}`. Bad input (malformed JSON, unknown
//!   fields, unknown ids, bad dates, a body over 64 KiB, a missing or
//!   wrong token) is a 4xx and is refused before anything is written; a
//!   5xx means a fault of the headend and is counted in `/metrics`.
//! * A write is answered only after its transaction committed. While the
//!   clock check refuses the clock (`state::clock`), every write is
//!   refused with 503 and the fix.
//!
//! Routes:
//!
//! | method | path | body / query |
//! |---|---|---|
//! | GET | `/live`, `/ready` | |
//! | GET | `/metrics` | Prometheus text; the admin or the scrape token |
//! | GET, POST | `/api/v1/products` | `{"name", "id"?}` |
//! | GET, POST | `/api/v1/channels` | `{"name", "service_id", "product", "ecm_pid", "emm_pid", "maturity"?, "input"?, "output"?, "clear_services"?}` |
//! | GET, PATCH, DELETE | `/api/v1/channels/{channel}` | a service id or a name; PATCH: any of the POST fields but `service_id` (`input`, `output`: `null` takes them away) |
//! | GET, POST | `/api/v1/cards` | `?after=&limit=`; `{"card_id", "public_key", "operator_id"}` |
//! | GET | `/api/v1/cards/{id}` | |
//! | POST | `/api/v1/cards/{id}/revoke` | |
//! | GET, POST | `/api/v1/subscriptions` | `?card=`; `{"card_id", "product", "until", "start"?}` |
//! | DELETE | `/api/v1/subscriptions/{card}/{product}` | |
//! | POST | `/api/v1/pairings` | `{"card_id", "receiver_key"}` |
//! | DELETE | `/api/v1/pairings/{card}` | unpair |
//! | POST | `/api/v1/rotate` | `{"product"?}` |
//! | GET | `/api/v1/status` | |
//! | GET | `/api/v1/operator` | the operator's public keys |
//! | POST | `/api/v1/backup` | `{"path", "force"?}`: a consistent copy of the database, written by the daemon |
//! | POST | `/api/v1/clock/accept` | accept a clock jump the clock check refused |
//! | GET | `/api/v1/debug/sections` | `?since=&max=`: current ECM sections, EMM sections (hex) |

use crate::metrics::Metrics;
use crate::output::CaOutput;
use crate::state::{Headend, StateError};
use crate::supervisor::{ChannelStatus, Supervisor};
use api::{
    path, BackupRequest, BackupTaken, Channel, ChannelRef, ChannelRemoved, ChannelReport,
    ChannelRun, ChannelUpdate, ChannelView, ErrorBody, Live, NewCard, NewChannel, NewPairing,
    NewProduct, NewSubscription, NotOnAir, ProductRef, Ready, RotateRequest, Rotation,
    Unsubscribed,
};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub headend: Arc<Mutex<Headend>>,
    pub token: Arc<Zeroizing<String>>,
    /// The read-only token: it opens `/metrics` and nothing else.
    pub scrape_token: Arc<Zeroizing<String>>,
    pub metrics: Arc<Metrics>,
    pub output: CaOutput,
    /// The owner of the channel streams.
    pub supervisor: Arc<Supervisor>,
    /// The SimulCrypt MUXes fed with the EMM carousel.
    pub muxes: crate::simulcrypt::MuxPeers,
    pub run: u64,
    pub now_ms: fn() -> u64,
    /// The SimulCrypt ECMG, if configured: its part of the status.
    pub ecmg: Option<crate::simulcrypt::ecmg::Ecmg>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the headend's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The one place where the domain's errors become status codes: a bad
/// field is 400, an unknown name 404, a clash with the stored state 409,
/// and anything else the headend's own fault (500, logged, counted).
impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Invalid { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            StateError::Unknown(u) => ApiError::new(StatusCode::NOT_FOUND, u.to_string()),
            StateError::Clash(c) => ApiError::new(StatusCode::CONFLICT, c.to_string()),
            StateError::ClockJump { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::internal()
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}
impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}
impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

type ApiResult = Result<Response, ApiError>;

/// A request's JSON body; one that does not parse is refused with the
/// API's error body (the status axum gives it: 400, 415 or 422).
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// A request's query parameters; bad ones are a 400.
struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Params(v))
    }
}

/// The card id of a `/cards/{id}` route; one that is not a `u32` is a 400.
struct CardId(u32);

impl<S: Send + Sync> FromRequestParts<S> for CardId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await?;
        parse_id(&id, "card id").map(CardId)
    }
}

/// Runs `f` on the headend state in a blocking thread (SQLite commits wait for the
/// disk).
async fn with_headend<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&mut Headend, u64) -> Result<T, StateError> + Send + 'static,
) -> Result<T, ApiError> {
    let core = st.headend.clone();
    let now = st.now_ms;
    tokio::task::spawn_blocking(move || {
        let mut c = core.lock().map_err(|_| ApiError::internal())?;
        f(&mut c, now()).map_err(ApiError::from)
    })
    .await
    .map_err(|_| ApiError::internal())?
}

/// [`with_headend`] for a write: refused while the clock check refuses
/// the clock, since whatever it would send would carry that time.
async fn writing<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&mut Headend, u64) -> Result<T, StateError> + Send + 'static,
) -> Result<T, ApiError> {
    with_headend(st, move |c, now| {
        c.check_clock(now)?;
        f(c, now)
    })
    .await
}

fn created(v: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

fn ok(v: impl serde::Serialize) -> Response {
    Json(v).into_response()
}

fn parse_id(s: &str, what: &str) -> Result<u32, ApiError> {
    s.parse::<u32>().map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow => "is too large",
            _ => "is not a number",
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what}: {s:?} {why}; use a whole number from 0 to 4294967295"),
        )
    })
}

/// The admin API's router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(METRICS_PATH, get(metrics))
        .route(path::PRODUCTS, get(list_products).post(add_product))
        .route(path::CHANNELS, get(list_channels).post(add_channel))
        .route(
            "/api/v1/channels/{channel}",
            get(show_channel)
                .patch(update_channel)
                .put(update_channel)
                .delete(remove_channel),
        )
        .route(path::CARDS, get(list_cards).post(add_card))
        .route("/api/v1/cards/{id}", get(show_card))
        .route("/api/v1/cards/{id}/revoke", post(revoke_card))
        .route(path::SUBSCRIPTIONS, get(list_subscriptions).post(subscribe))
        .route(
            "/api/v1/subscriptions/{card}/{product}",
            delete(unsubscribe),
        )
        .route(path::PAIRINGS, post(pair))
        .route("/api/v1/pairings/{card}", delete(unpair))
        .route(path::ROTATE, post(rotate))
        .route(path::STATUS, get(status))
        .route(path::OPERATOR, get(operator))
        .route(path::BACKUP, post(backup))
        .route(path::CLOCK_ACCEPT, post(accept_clock))
        .route("/api/v1/debug/sections", get(debug_sections))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/live",
            get(|| async {
                Json(Live {
                    status: "live".into(),
                })
            }),
        )
        .route("/ready", get(ready))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn count(State(st): State<AppState>, req: Request, next: Next) -> Response {
    Metrics::inc(&st.metrics.api_requests);
    let r = next.run(req).await;
    if r.status().is_client_error() {
        Metrics::inc(&st.metrics.api_client_errors);
    } else if r.status().is_server_error() {
        Metrics::inc(&st.metrics.internal_errors);
    }
    r
}

async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response(),
        Some(t) => {
            let admin = bool::from(t.as_bytes().ct_eq(st.token.as_bytes()));
            let scrape = bool::from(t.as_bytes().ct_eq(st.scrape_token.as_bytes()));
            if admin || (scrape && req.uri().path() == METRICS_PATH) {
                next.run(req).await
            } else if scrape {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the scrape token opens only GET /metrics; use the admin token (admin.token) for this",
                )
                .into_response()
            } else {
                ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response()
            }
        }
    }
}

/// The one route the scrape token opens.
const METRICS_PATH: &str = "/metrics";

async fn metrics(State(st): State<AppState>) -> ApiResult {
    let gauges = with_headend(&st, |c, now| Ok(c.gauges(now))).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.render(&gauges),
    )
        .into_response())
}

async fn list_products(State(st): State<AppState>) -> ApiResult {
    Ok(ok(with_headend(&st, |c, _| Ok(c.products())).await?))
}

async fn add_product(State(st): State<AppState>, Body(req): Body<NewProduct>) -> ApiResult {
    Ok(created(
        writing(&st, move |c, now| c.add_product(req, now)).await?,
    ))
}

/// How long a channel change waits for the supervisor to act on it.
const CHANNEL_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A channel and where it stands: its fields, then `state`, `error`,
/// `cause`, `fix`, `detail` from the supervisor.
fn channel_view(c: &Channel, s: Option<&ChannelStatus>) -> ChannelView {
    ChannelView {
        channel: c.clone(),
        report: s.map(|s| ChannelReport {
            state: s.state.as_str().into(),
            error: s.error.clone(),
            cause: s.cause.map(|w| w.as_str().into()),
            fix: s.fix.clone(),
            detail: s.detail.clone(),
        }),
    }
}

/// Has the supervisor act on a channel change now, and waits for it, so
/// that the answer comes once the stream has started, stopped or
/// restarted.
async fn apply_channels(st: &AppState) {
    let sup = st.supervisor.clone();
    let _ = tokio::task::spawn_blocking(move || sup.kick_and_wait(CHANNEL_CHANGE_WAIT)).await;
}

async fn channel_answer(st: &AppState, c: &Channel) -> ChannelView {
    let sup = st.supervisor.clone();
    let service = c.service_id;
    let s = tokio::task::spawn_blocking(move || sup.status(service))
        .await
        .ok()
        .flatten();
    channel_view(c, s.as_ref())
}

async fn list_channels(State(st): State<AppState>) -> ApiResult {
    let channels = with_headend(&st, |c, _| Ok(c.channels())).await?;
    let sup = st.supervisor.clone();
    let statuses = tokio::task::spawn_blocking(move || sup.statuses())
        .await
        .unwrap_or_default();
    let v: Vec<ChannelView> = channels
        .iter()
        .map(|c| channel_view(c, statuses.iter().find(|s| s.service_id == c.service_id)))
        .collect();
    Ok(ok(v))
}

async fn add_channel(State(st): State<AppState>, Body(req): Body<NewChannel>) -> ApiResult {
    let c = writing(&st, move |c, now| c.add_channel(req, now)).await?;
    apply_channels(&st).await;
    Ok(created(channel_answer(&st, &c).await))
}

/// The channel of a `/channels/{channel}` route: a service id or a name.
struct ChannelPath(ChannelRef);

impl<S: Send + Sync> FromRequestParts<S> for ChannelPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(s) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(ChannelPath(ChannelRef::parse(&s)))
    }
}

async fn show_channel(State(st): State<AppState>, ChannelPath(r): ChannelPath) -> ApiResult {
    let c = with_headend(&st, move |c, _| c.channel(&r)).await?;
    Ok(ok(channel_answer(&st, &c).await))
}

async fn update_channel(
    State(st): State<AppState>,
    ChannelPath(r): ChannelPath,
    Body(req): Body<ChannelUpdate>,
) -> ApiResult {
    let c = writing(&st, move |c, _| c.update_channel(&r, req)).await?;
    st.supervisor.retry(c.service_id);
    apply_channels(&st).await;
    Ok(ok(channel_answer(&st, &c).await))
}

async fn remove_channel(State(st): State<AppState>, ChannelPath(r): ChannelPath) -> ApiResult {
    let c = writing(&st, move |c, _| c.remove_channel(&r)).await?;
    apply_channels(&st).await;
    Ok(ok(ChannelRemoved {
        service_id: c.service_id,
        name: c.name,
        removed: true,
    }))
}

/// 200 when every channel with an input and an output is on the air, 503
/// (naming those that are not) otherwise.
async fn ready(State(st): State<AppState>) -> Response {
    let sup = st.supervisor.clone();
    let not = tokio::task::spawn_blocking(move || sup.not_on_air())
        .await
        .unwrap_or_default();
    if not.is_empty() {
        return Json(Ready {
            status: "ready".into(),
            not_on_air: None,
        })
        .into_response();
    }
    let channels: Vec<NotOnAir> = not
        .into_iter()
        .map(|s| NotOnAir {
            name: s.name,
            service_id: s.service_id,
            state: s.state.as_str().into(),
            cause: s.cause.map(|w| w.as_str().into()),
            error: s.error,
        })
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Ready {
            status: "not ready".into(),
            not_on_air: Some(channels),
        }),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardsQuery {
    #[serde(default)]
    after: u32,
    #[serde(default)]
    limit: Option<u32>,
}

async fn list_cards(State(st): State<AppState>, Params(q): Params<CardsQuery>) -> ApiResult {
    let limit = match q.limit {
        None => 1000,
        Some(l @ 1..=10_000) => l,
        Some(l) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("limit: {l} is out of range; ask for 1 to 10000 cards a page"),
            ))
        }
    };
    Ok(ok(
        with_headend(&st, move |c, _| c.cards(q.after, limit)).await?
    ))
}

async fn add_card(State(st): State<AppState>, Body(req): Body<NewCard>) -> ApiResult {
    Ok(created(
        writing(&st, move |c, now| c.add_card(req, now)).await?,
    ))
}

async fn show_card(State(st): State<AppState>, CardId(id): CardId) -> ApiResult {
    Ok(ok(with_headend(&st, move |c, _| c.card(id)).await?))
}

async fn revoke_card(State(st): State<AppState>, CardId(id): CardId) -> ApiResult {
    Ok(ok(writing(&st, move |c, now| c.revoke(id, now)).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionsQuery {
    #[serde(default)]
    card: Option<u32>,
}

async fn list_subscriptions(
    State(st): State<AppState>,
    Params(q): Params<SubscriptionsQuery>,
) -> ApiResult {
    Ok(ok(
        with_headend(&st, move |c, _| c.subscriptions(q.card)).await?
    ))
}

async fn subscribe(State(st): State<AppState>, Body(req): Body<NewSubscription>) -> ApiResult {
    Ok(created(
        writing(&st, move |c, now| c.subscribe(req, now)).await?,
    ))
}

async fn unsubscribe(
    State(st): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let Path((card, product)) = p?;
    let card = parse_id(&card, "card id")?;
    let product = ProductRef::Name(product);
    writing(&st, move |c, now| c.unsubscribe(card, &product, now)).await?;
    Ok(ok(Unsubscribed {
        card_id: card,
        unsubscribed: true,
    }))
}

async fn pair(State(st): State<AppState>, Body(req): Body<NewPairing>) -> ApiResult {
    Ok(created(writing(&st, move |c, now| c.pair(req, now)).await?))
}

async fn unpair(State(st): State<AppState>, CardId(card): CardId) -> ApiResult {
    Ok(ok(writing(&st, move |c, now| c.unpair(card, now)).await?))
}

async fn rotate(
    State(st): State<AppState>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    // An empty body rotates every product.
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}"))
        })?
    };
    let rotated = writing(&st, move |c, now| {
        c.rotate(req.product.as_ref(), "operator request", now)
    })
    .await?;
    Ok(ok(Rotation { rotated }))
}

async fn status(State(st): State<AppState>) -> ApiResult {
    let mut v = with_headend(&st, |c, now| Ok(c.status(now))).await?;
    v.ecmg = st.ecmg.as_ref().map(|e| e.status());
    // Each channel with where it stands: state, error or cause with its
    // fix, input counters, and the stream's own report.
    let sup = st.supervisor.clone();
    let statuses = tokio::task::spawn_blocking(move || sup.statuses())
        .await
        .unwrap_or_default();
    for c in &mut v.channels {
        c.run = statuses
            .iter()
            .find(|s| s.service_id == c.channel.service_id)
            .map(channel_run);
    }
    v.muxes = st.muxes.statuses();
    Ok(ok(v))
}

/// The supervisor's report on a channel, as `/api/v1/status` shows it.
fn channel_run(s: &ChannelStatus) -> ChannelRun {
    ChannelRun {
        state: s.state.as_str().into(),
        error: s.error.clone(),
        cause: s.cause.map(|w| w.as_str().into()),
        fix: s.fix.clone(),
        detail: s.detail.clone(),
        input_packets: s.input_packets,
        input_bitrate_bps: s.input_bitrate_bps,
        input_silence_seconds: s.input_silence_seconds,
        retry_in_seconds: s.retry_in_seconds,
        health: s.health.as_ref().map(|h| api::ChannelHealth {
            started_unix_ms: h.started_unix_ms,
            input_packets: h.input_packets,
            input_bytes: h.input_bytes,
            input_bitrate_bps: h.input_bitrate_bps,
            last_input_unix_ms: h.last_input_unix_ms,
            input_cc_errors: h.input_cc_errors,
            output_packets: h.output_packets,
            output_errors: h.output_errors,
            clear_packets: h.clear_packets,
            services: h
                .services
                .iter()
                .map(|v| api::ServiceHealth {
                    service_id: v.service_id,
                    on_air: v.on_air,
                    withheld: v.withheld.map(|w| w.as_str().into()),
                    detail: v.detail.clone(),
                    scrambled_packets: v.scrambled_packets,
                    clear_packets: v.clear_packets,
                    withheld_packets: v
                        .withheld_packets
                        .iter()
                        .map(|(w, n)| (w.as_str().into(), *n))
                        .collect(),
                })
                .collect(),
        }),
    }
}

/// The daemon writes a consistent copy of its database (see
/// [`crate::backup`]): 409 if the file exists and `force` is not set, 400
/// if it cannot be made there.
async fn backup(State(st): State<AppState>, Body(req): Body<BackupRequest>) -> ApiResult {
    let core = st.headend.clone();
    let now = st.now_ms;
    let taken = tokio::task::spawn_blocking(move || {
        let c = core.lock().map_err(|_| ApiError::internal())?;
        c.backup(std::path::Path::new(&req.path), req.force, now())
            .map_err(|e| {
                use crate::backup::BackupError as B;
                let status = match &e {
                    B::Exists(_) => StatusCode::CONFLICT,
                    B::Target { .. } | B::Write { .. } => StatusCode::BAD_REQUEST,
                    _ => {
                        tracing::error!(error = %e, "backup failed");
                        return ApiError::internal();
                    }
                };
                ApiError::new(status, e.to_string())
            })
    })
    .await
    .map_err(|_| ApiError::internal())??;
    Ok(created(BackupTaken {
        path: taken.path.display().to_string(),
        bytes: taken.bytes,
        taken: crate::state::rfc3339(taken.taken_ms / 1000),
        taken_unix_ms: taken.taken_ms,
    }))
}

/// `headend clock accept`.
async fn accept_clock(State(st): State<AppState>) -> ApiResult {
    Ok(ok(with_headend(&st, |c, now| c.accept_clock(now)).await?))
}

async fn operator(State(st): State<AppState>) -> ApiResult {
    let o = with_headend(&st, |c, _| Ok(c.operator_public())).await?;
    Ok(ok(api::Operator {
        operator_id: o.operator_id,
        x25519: hex::encode(o.x25519),
        ed25519: hex::encode(o.ed25519),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    max: Option<usize>,
}

async fn debug_sections(State(st): State<AppState>, Params(q): Params<SectionsQuery>) -> ApiResult {
    let max = q.max.unwrap_or(10_000).clamp(1, 65_536);
    let ecms = st
        .output
        .current_ecms()
        .iter()
        .map(|e| api::EcmSection {
            service_id: e.service,
            ecm_pid: e.ecm_pid,
            product: e.product,
            generation: e.generation,
            epoch: e.epoch,
            table_id: e.section[0],
            section: hex::encode(&e.section),
        })
        .collect();
    let (emms, next, dropped) = st.output.emm_sections_since(q.since, max);
    Ok(ok(api::DebugSections {
        run: st.run,
        ecms,
        emms: api::EmmSections {
            since: q.since,
            next,
            dropped,
            sections: emms.iter().map(|s| hex::encode(&s.section)).collect(),
        },
    }))
}
