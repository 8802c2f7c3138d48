//! The HTTP API on actix-web: routes, authentication and roles, body limits, per-key rate
//! limits (429), load shedding (503), metrics of every answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::Value;

use super::engine::{DecisionRead, Engine, LoadedModel, Reader};
use super::keys::{Caller, LiveKeys, Role};
use super::openapi::{
    BatchAnswer, BatchRequest, DecisionRecordAnswer, DraftAnswer, DraftList, DraftRequest, Erased,
    ErasureRequest, LabelsAnswer, LabelsRequest, ModelArtifact, ModelInstalled, ModelQuery,
    ModelRole, PolicyVersions, ScoreAnswer, Status,
};
use super::problem::{Problem, ProblemAnswer};
use fraud_core::transaction::RawTransaction;

/// Shared by every worker.
pub struct AppState {
    /// The scoring engine.
    pub engine: Arc<Engine>,
    /// API keys (re-read when their file changes).
    pub keys: Arc<LiveKeys>,
    /// Requests being processed.
    in_flight: AtomicUsize,
    /// The per-key rate limit (GCRA, sharded by key: no lock shared by all requests).
    limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Limits.
    pub limits: super::config::Limits,
    /// Score on the HTTP worker itself (nothing blocks: no fsync, no network); otherwise on
    /// the blocking pool.
    pub inline: bool,
}

impl AppState {
    /// The state of a service.
    pub fn new(
        engine: Arc<Engine>,
        keys: Arc<LiveKeys>,
        limits: super::config::Limits,
        inline: bool,
    ) -> Self {
        AppState {
            engine,
            keys,
            in_flight: AtomicUsize::new(0),
            limiter: governor::RateLimiter::keyed(per_key_quota(&limits)),
            limits,
            inline,
        }
    }

    /// The caller of `req` if its key is valid, has one of `roles` (any role when empty)
    /// and is within its rate.
    fn authorize(&self, req: &HttpRequest, roles: &[Role]) -> Result<Caller, Problem> {
        let header = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let Some(key) = key else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send an API key as `Authorization: Bearer KEY`",
            ));
        };
        let caller = self.keys.authenticate(key).ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is unknown, revoked or expired",
            )
        })?;
        if !roles.is_empty() && !roles.iter().any(|&r| caller.may(r)) {
            let named: Vec<String> = roles.iter().map(|r| format!("`{}`", r.name())).collect();
            let needs = match named.as_slice() {
                [one] => format!("the {one} role"),
                _ => format!("the {} role", named.join(" or the ")),
            };
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this endpoint needs {needs}"),
            ));
        }
        if let Err(not_until) = self.limiter.check_key(&caller.name) {
            self.engine.metrics.refused(false);
            use governor::clock::Clock as _;
            let wait = not_until
                .wait_time_from(self.limiter.clock().now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64;
            return Err(Problem {
                retry_after: Some(wait),
                ..Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests",
                    format!(
                        "this key is limited to {} requests a second",
                        self.limits.rate_per_key
                    ),
                )
            });
        }
        Ok(caller)
    }
}

/// The quota of one key: `rate_per_key` a second, bursts of `burst_per_key`.
fn per_key_quota(limits: &super::config::Limits) -> governor::Quota {
    // The configuration is checked: a rate > 0, a burst >= 1.
    let period = std::time::Duration::try_from_secs_f64(1.0 / limits.rate_per_key)
        .unwrap_or(std::time::Duration::ZERO)
        .max(std::time::Duration::from_nanos(1));
    let burst = std::num::NonZeroU32::new(limits.burst_per_key.min(u32::MAX as f64) as u32)
        .unwrap_or(std::num::NonZeroU32::MIN);
    governor::Quota::with_period(period)
        .unwrap_or(governor::Quota::per_second(std::num::NonZeroU32::MAX))
        .allow_burst(burst)
}

type Data = web::Data<AppState>;

/// A request admitted under `limits.max_in_flight` (503 beyond): held while it is served.
pub(crate) struct Admitted(Data);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The roles an endpoint accepts (a marker type for [`Authorized`]).
pub(crate) trait Needs {
    /// Any one of these roles will do; none listed: any valid key.
    const ROLES: &'static [Role];
}

/// The `score` role.
pub(crate) struct ScoreRole;
/// The `analyst` role.
pub(crate) struct AnalystRole;
/// The `admin` role.
pub(crate) struct AdminRole;
/// Any valid key.
pub(crate) struct AnyRole;
/// The `analyst` or the `admin` role (who may read the live policy).
pub(crate) struct ReaderRole;

impl Needs for ScoreRole {
    const ROLES: &'static [Role] = &[Role::Score];
}
impl Needs for AnalystRole {
    const ROLES: &'static [Role] = &[Role::Analyst];
}
impl Needs for AdminRole {
    const ROLES: &'static [Role] = &[Role::Admin];
}
impl Needs for ReaderRole {
    const ROLES: &'static [Role] = &[Role::Analyst, Role::Admin];
}
impl Needs for AnyRole {
    const ROLES: &'static [Role] = &[];
}

/// The caller of a request: a valid API key with the role `R` needs, within its rate (401,
/// 403, 429 otherwise).
pub(crate) struct Authorized<R: Needs> {
    /// Who is calling.
    pub caller: Caller,
    role: std::marker::PhantomData<R>,
}

/// An extraction done when first polled, not when the extractor is made: extractors of one
/// handler are polled in the order of its parameters and stop at the first refusal, so a
/// request shed by [`Admitted`] spends none of its key's rate.
pub(crate) struct Deferred<T>(Option<HttpRequest>, fn(&HttpRequest) -> Result<T, Problem>);

impl<T> std::future::Future for Deferred<T> {
    type Output = Result<T, Problem>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let f = self.1;
        std::task::Poll::Ready(match self.0.take() {
            Some(req) => f(&req),
            None => Err(Problem::internal(
                "an extractor was polled after it finished",
            )),
        })
    }
}

fn app_state(req: &HttpRequest) -> Result<&Data, Problem> {
    req.app_data::<Data>()
        .ok_or_else(|| Problem::internal("the service's state is not configured"))
}

impl actix_web::FromRequest for Admitted {
    type Error = Problem;
    type Future = Deferred<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Deferred(Some(req.clone()), |req| {
            let app = app_state(req)?;
            let n = app.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = Admitted(app.clone());
            if n >= app.limits.max_in_flight {
                app.engine.metrics.refused(true);
                return Err(Problem::unavailable(
                    "the service is at capacity; retry after the delay given",
                ));
            }
            Ok(guard)
        })
    }
}

impl<R: Needs> actix_web::FromRequest for Authorized<R> {
    type Error = Problem;
    type Future = Deferred<Self>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Deferred(Some(req.clone()), |req| {
            let caller = app_state(req)?.authorize(req, R::ROLES)?;
            Ok(Authorized {
                caller,
                role: std::marker::PhantomData,
            })
        })
    }
}

/// The API's routes, as metrics name them (`/metrics`' `route` label); the probes
/// (`/healthz`, `/readyz`) are not counted.
const ROUTES: [&str; 14] = [
    "/v1/score",
    "/v1/score/batch",
    "/v1/labels",
    "/v1/decisions/{id}",
    "/v1/models",
    "/v1/models/shadow",
    "/v1/entities/erase",
    "/v1/entities/{kind}/{id}",
    "/metrics",
    "/openapi.json",
    "/v1/policy",
    "/v1/policy/versions",
    "/v1/policy/drafts",
    "/v1/policy/drafts/{id}",
];

/// Records every answer of the API's routes in the metrics: route, status, time taken
/// (handlers do not).
pub async fn observe(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req
        .match_pattern()
        .and_then(|p| ROUTES.iter().copied().find(|r| *r == p));
    let app = req.app_data::<Data>().cloned();
    let resp = next.call(req).await?;
    if let (Some(route), Some(app)) = (route, app) {
        app.engine.metrics.request(
            route,
            resp.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(resp)
}

/// A request body, overwritten with zeros when dropped (it may hold a card number).
pub(crate) struct Body(web::BytesMut);

impl std::ops::Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        // The whole allocation, not only the bytes in use (growth copies left earlier
        // prefixes in freed buffers: `wipe_chunk` and the capacity below avoid most).
        self.0.as_mut().zeroize();
    }
}

/// Overwrites a received chunk once copied, when nothing else shares it.
fn wipe_chunk(chunk: web::Bytes) {
    use zeroize::Zeroize;
    if let Ok(mut m) = chunk.try_into_mut() {
        m.as_mut().zeroize();
    }
}

/// 400 naming the first member given twice in one object of `bytes` (a checkout system and
/// the service could read different values from it).
fn refuse_duplicate_names(bytes: &[u8]) -> Result<(), Problem> {
    match fraud_core::json::duplicate_name(bytes) {
        Some(path) => Err(Problem::bad_field(
            &path,
            fraud_core::json::DUPLICATE_REASON,
        )),
        None => Ok(()),
    }
}

/// Reads the body up to `limit` bytes (413 beyond).
async fn body(mut payload: web::Payload, limit: usize) -> Result<Body, Problem> {
    let mut buf = Body(web::BytesMut::with_capacity(limit.min(64 * 1024)));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_field("body", format!("cannot be read: {e}")))?;
        if buf.0.len() + chunk.len() > limit {
            wipe_chunk(chunk);
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                format!("the body exceeds {limit} bytes"),
            ));
        }
        if buf.0.len() + chunk.len() > buf.0.capacity() {
            // Grow into a fresh buffer and wipe the old one (BytesMut would free it as is).
            let mut bigger = web::BytesMut::with_capacity(
                (buf.0.len() + chunk.len())
                    .max(buf.0.capacity() * 2)
                    .min(limit),
            );
            bigger.extend_from_slice(&buf.0);
            let old = std::mem::replace(&mut buf.0, bigger);
            drop(Body(old));
        }
        buf.0.extend_from_slice(&chunk);
        wipe_chunk(chunk);
    }
    Ok(buf)
}

fn json_content(req: &HttpRequest) -> Result<(), Problem> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type",
            "send the body as `Content-Type: application/json`",
        ))
    }
}

/// 200 with `v` as JSON.
fn typed_ok(v: &impl serde::Serialize) -> Result<HttpResponse, Problem> {
    serde_json::to_string(v)
        .map(ok_body)
        .map_err(|e| Problem::internal(format!("answer: {e}")))
}

/// 200 with `body`, JSON already.
fn ok_body(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    web::block(f)
        .await
        .map_err(|_| Problem::unavailable("the service is shutting down"))?
}

#[utoipa::path(post, path = "/v1/score", tag = "scoring",
    summary = "Score one transaction (role score)",
    request_body = RawTransaction,
    responses(
        (status = 200, description = "the verdict", body = ScoreAnswer),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 409, response = ProblemAnswer),
        (status = 413, response = ProblemAnswer),
        (status = 415, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn score(
    app: Data,
    _slot: Admitted,
    auth: Authorized<ScoreRole>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    json_content(&req)?;
    let bytes = body(payload, app.limits.max_body_bytes).await?;
    let engine = app.engine.clone();
    let (answer, seq) = if engine.claims_elsewhere() {
        // A store shared by replicas: parsed here, the claim awaited without a thread, the
        // rest on this worker when nothing of it waits (memory state), else on the
        // blocking pool. A task of its own: a client that goes away does not stop a scoring
        // begun (its claim granted, its state recorded), as a retry then finds its decision.
        let inline = app.inline;
        actix_web::rt::spawn(async move {
            let scoring = Engine::start(engine.clone(), &bytes)?;
            let begun = engine.begin_async(scoring.transaction_id()).await;
            if inline {
                engine.finish(scoring, begun, &bytes, &caller.name)
            } else {
                blocking(move || engine.finish(scoring, begun, &bytes, &caller.name)).await
            }
        })
        .await
        .map_err(|_| Problem::unavailable("the service is shutting down"))??
    } else if app.inline {
        engine.score(&bytes, &caller.name)?
    } else {
        blocking(move || engine.score(&bytes, &caller.name)).await?
    };
    // Answered only once its record is durable (sync durability: a shared fsync).
    app.engine.durable(seq).await?;
    Ok(ok_body(answer))
}

#[utoipa::path(post, path = "/v1/score/batch", tag = "scoring",
    summary = "Score up to limits.max_batch transactions, one result each, in order (role score)",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "one result per transaction", body = BatchAnswer),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 413, response = ProblemAnswer),
        (status = 415, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn score_batch(
    app: Data,
    _slot: Admitted,
    auth: Authorized<ScoreRole>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    json_content(&req)?;
    let limit = app
        .limits
        .max_body_bytes
        .saturating_mul(app.limits.max_batch.max(1));
    let bytes = body(payload, limit).await?;
    let batch: BatchRequest = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_field(
            "body",
            format!(
                "must be {{\"transactions\": [...]}}: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    if batch.transactions.len() > app.limits.max_batch {
        return Err(Problem {
            field: Some("transactions".into()),
            ..Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch too large",
                format!(
                    "{} transactions; at most {} in one batch",
                    batch.transactions.len(),
                    app.limits.max_batch
                ),
            )
        });
    }
    let engine = app.engine.clone();
    let (results, last) = blocking(move || {
        let mut last = 0;
        let results = batch
            .transactions
            .iter()
            .map(
                |raw| match engine.score(raw.get().as_bytes(), &caller.name) {
                    Ok((answer, seq)) => {
                        last = last.max(seq);
                        answer
                    }
                    Err(p) => serde_json::to_string(&p.batch_entry())
                        .unwrap_or_else(|_| r#"{"error":{}}"#.to_string()),
                },
            )
            .collect::<Vec<String>>();
        Ok((results, last))
    })
    .await?;
    // One commit covers the whole batch.
    app.engine.durable(last).await?;
    // Each result is JSON already: joined, not parsed again.
    let mut body = String::from("{\"results\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r);
    }
    body.push_str("]}");
    Ok(ok_body(body))
}

#[utoipa::path(post, path = "/v1/labels", tag = "feedback",
    summary = "Fraud / not-fraud feedback (role analyst)",
    request_body = LabelsRequest,
    responses(
        (status = 200, description = "what became of each label", body = LabelsAnswer),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 413, response = ProblemAnswer),
        (status = 415, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn labels(
    app: Data,
    _slot: Admitted,
    auth: Authorized<AnalystRole>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    json_content(&req)?;
    let bytes = body(payload, app.limits.max_body_bytes.saturating_mul(16)).await?;
    refuse_duplicate_names(&bytes)?;
    let list: LabelsRequest = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_field(
            "labels",
            format!(
                "must be {{\"labels\": [{{\"transaction_id\", \"is_fraud\": true|false, \"reported_at\"?}}]}}: {}",
                e.to_string().split('"').step_by(2).collect::<Vec<_>>().join("")
            ),
        )
    })?;
    let mut parsed = Vec::with_capacity(list.labels.len());
    for (i, l) in list.labels.into_iter().enumerate() {
        let field = format!("labels[{i}].transaction_id");
        fraud_core::transaction::refuse_card_data(&field, &l.transaction_id)
            .map_err(Problem::invalid)?;
        let at = match &l.reported_at {
            None => None,
            Some(t) => Some(
                (time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        Problem::bad_field(
                            &format!("labels[{i}].reported_at"),
                            "is not an RFC 3339 time",
                        )
                    })?
                    .unix_timestamp_nanos()
                    / 1000) as i64,
            ),
        };
        parsed.push((l.transaction_id, l.is_fraud, at));
    }
    let engine = app.engine.clone();
    let (accepted, unknown, erased) = blocking(move || {
        let mut accepted = 0usize;
        let (mut unknown, mut erased) = (Vec::new(), Vec::new());
        for (id, fraud, at) in parsed {
            match engine.label(&id, fraud, at, &caller.name)? {
                super::engine::Labelled::Applied => accepted += 1,
                super::engine::Labelled::Unknown => unknown.push(id),
                super::engine::Labelled::Erased => erased.push(id),
            }
        }
        Ok((accepted, unknown, erased))
    })
    .await?;
    typed_ok(&LabelsAnswer {
        accepted,
        unknown,
        erased,
    })
}

#[utoipa::path(get, path = "/v1/decisions/{transaction_id}", tag = "feedback",
    summary = "The recorded decision, masked (role analyst); each read is recorded",
    params(("transaction_id" = String, Path, description = "the transaction's id")),
    responses(
        (status = 200, description = "the record", body = DecisionRecordAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 404, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn decision(
    app: Data,
    auth: Authorized<AnalystRole>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    let engine = app.engine.clone();
    let id = id.into_inner();
    let (id, read) = blocking(move || {
        let reader = Reader::Api { key: &caller.name };
        let read = engine.read_decision(reader, &id, |_| true)?;
        Ok((id, read))
    })
    .await?;
    match read {
        DecisionRead::Throttled {
            retry_after,
            reads,
            ..
        } => Err(Problem {
            retry_after: Some(retry_after),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many decision reads",
                format!(
                    "this key read {reads} decision records in this window, far above its usual rate; reads are paused for {retry_after} s and the security team is alerted"
                ),
            )
        }),
        DecisionRead::Missing => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not found",
            format!("no decision is recorded for transaction `{id}`"),
        )),
        DecisionRead::Found(rec) => {
            let erased_fields = rec
                .data
                .get("erased_fields")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            typed_ok(&DecisionRecordAnswer {
                seq: rec.seq,
                recorded_at: rec.at.clone(),
                key: rec.key.clone(),
                response: rec.data["response"].clone(),
                transaction: rec.data["transaction"].clone(),
                features: rec.data["features"].clone(),
                shadow: rec.data["shadow"].clone(),
                erased_fields,
                rules_shadow: super::record::strings(&rec.data["rules_shadow"]),
                policy_version: rec.data["policy_version"].as_u64(),
                arm: rec.data["arm"].as_str().map(str::to_string),
            })
        }
    }
}

/// An uploaded model being received: a private file under the models directory, removed
/// unless installed.
struct Staged {
    path: std::path::PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Streams an upload to a staged file (never whole in memory), up to `limit` bytes (413
/// beyond), and fsyncs it.
async fn stage_upload(
    mut payload: web::Payload,
    dir: &std::path::Path,
    limit: u64,
) -> Result<Staged, Problem> {
    use std::io::Write as _;
    let store = |e: std::io::Error| Problem::unavailable(format!("cannot store the upload: {e}"));
    std::fs::create_dir_all(dir).map_err(store)?;
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|_| Problem::internal("no randomness from the OS"))?;
    let staged = Staged {
        path: dir.join(format!(".upload-{}.tmp", fraud_core::hex::encode(&id))),
    };
    let mut file = fraud_core::files::create_private(&staged.path).map_err(store)?;
    let mut received = 0u64;
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_field("body", format!("cannot be read: {e}")))?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                format!("the model exceeds limits.max_model_bytes ({limit} bytes)"),
            ));
        }
        file.write_all(&chunk).map_err(store)?;
    }
    file.sync_all().map_err(store)?;
    Ok(staged)
}

#[utoipa::path(post, path = "/v1/models", tag = "models",
    summary = "Load a model artifact as the active model or the shadow (role admin)",
    params(ModelQuery),
    request_body(content = ModelArtifact, content_type = "application/octet-stream", description = "a model artifact (`fraud train` / `fraud import`)"),
    responses(
        (status = 200, description = "installed", body = ModelInstalled),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 413, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn models(
    app: Data,
    _slot: Admitted,
    auth: Authorized<AdminRole>,
    payload: web::Payload,
    q: web::Query<ModelQuery>,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    let shadow = match q.role.as_deref() {
        None | Some("active") => false,
        Some("shadow") => true,
        Some(other) => {
            return Err(Problem::bad_field(
                "role",
                format!("{} is not active or shadow", fraud_core::pii::quoted(other)),
            ))
        }
    };
    let dir = app
        .engine
        .models_dir
        .clone()
        .ok_or_else(|| Problem::internal("no models directory"))?;
    let staged = stage_upload(payload, &dir, app.limits.max_model_bytes).await?;
    let engine = app.engine.clone();
    let limits = app.limits.model();
    let version = blocking(move || {
        let invalid = |detail: String| {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid model", detail)
        };
        // A file that does not start as an artifact is refused before it is read.
        let unreadable =
            |e: std::io::Error| Problem::unavailable(format!("cannot read the upload: {e}"));
        let mut head = Vec::with_capacity(8);
        {
            use std::io::Read as _;
            std::fs::File::open(&staged.path)
                .map_err(unreadable)?
                .take(8)
                .read_to_end(&mut head)
                .map_err(unreadable)?;
        }
        if head[..] != fraud_core::model::ARTIFACT_MAGIC[..] {
            let e = fraud_core::model::Artifact::from_bytes(&head)
                .err()
                .map_or_else(|| "not a model artifact".to_string(), |e| e.to_string());
            return Err(invalid(format!("not a valid model artifact: {e}")));
        }
        let artifact = {
            let bytes = std::fs::read(&staged.path).map_err(unreadable)?;
            fraud_core::model::Artifact::from_bytes(&bytes)
                .map_err(|e| invalid(format!("not a valid model artifact: {e}")))?
        };
        // The model's cost is checked first, before anything is compiled: a chain-shaped
        // tree 100,000 deep is refused in milliseconds.
        let loaded =
            LoadedModel::new(&artifact, &engine.extractor, "uploaded", &limits).map_err(invalid)?;
        drop(artifact);
        let version = loaded.version.clone();
        engine.install(Some(loaded), Some(&staged.path), shadow, &caller.name)?;
        Ok(version)
    })
    .await?;
    typed_ok(&ModelInstalled {
        model_version: version,
        role: if shadow {
            ModelRole::Shadow
        } else {
            ModelRole::Active
        },
    })
}

#[utoipa::path(delete, path = "/v1/models/shadow", tag = "models",
    summary = "Stop the shadow model (role admin)",
    responses(
        (status = 204, description = "removed"),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn remove_shadow(
    app: Data,
    auth: Authorized<AdminRole>,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    let engine = app.engine.clone();
    blocking(move || engine.install(None, None, true, &caller.name)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(delete, path = "/v1/entities/{kind}/{id}", tag = "privacy",
    summary = "Erase one entity from state (role admin); a card by its token only; the erasure is recorded by a hash of the id",
    params(
        ("kind" = fraud_core::features::Entity, Path, description = "the kind of entity"),
        ("id" = String, Path, description = "its id (a card's token)")
    ),
    responses(
        (status = 200, description = "erased, or nothing was held", body = Erased),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn erase(
    app: Data,
    auth: Authorized<AdminRole>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    let (kind, id) = path.into_inner();
    if kind == "card" && !fraud_core::pii::is_token(&id) {
        return Err(Problem {
            field: Some("id".into()),
            ..Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid erasure",
                "a card is named here by its token (tok_ and 32 hex digits); to erase a card holder by card number, send it in the body of POST /v1/entities/erase",
            )
        });
    }
    let engine = app.engine.clone();
    let held = blocking(move || engine.erase(&kind, &id, &caller.name)).await?;
    typed_ok(&Erased {
        erased: held,
        card_mask: None,
    })
}

/// Erasure with the entity named in the body: the only way to erase a card holder by card
/// number (tokenized on arrival under the current and every earlier tokenization key).
#[utoipa::path(post, path = "/v1/entities/erase", tag = "privacy",
    summary = "Erase one entity named in the body (role admin): a card holder by card number (tokenized on arrival under the current and earlier tokenization keys), any entity by id. A card number is never accepted in a URL.",
    request_body = ErasureRequest,
    responses(
        (status = 200, description = "erased, or nothing was held", body = Erased),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 413, response = ProblemAnswer),
        (status = 415, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn erase_by_body(
    app: Data,
    _slot: Admitted,
    auth: Authorized<AdminRole>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let caller = auth.caller;
    json_content(&req)?;
    let bytes = body(payload, app.limits.max_body_bytes).await?;
    refuse_duplicate_names(&bytes)?;
    let e: ErasureRequest = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_field(
            "body",
            format!("must be {{\"kind\": \"card\", \"card_number\"}} or {{\"kind\", \"id\"}}: {e}"),
        )
    })?;
    let invalid = |field: &str, detail: &str| Problem {
        field: Some(field.to_string()),
        ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid erasure", detail)
    };
    let engine = app.engine.clone();
    let (ids, mask) = match (e.kind.as_str(), e.card_number, e.id) {
        (_, Some(_), Some(_)) => {
            return Err(invalid("card_number", "send card_number or id, not both"))
        }
        ("card", Some(number), None) => {
            let card = fraud_core::pii::CardNumber::parse(&number)
                .map_err(|err| invalid("card_number", &err.to_string()))?;
            let mut ids = vec![engine.tokenizer.token(&card)];
            ids.extend(engine.previous_keys.iter().map(|k| k.token(&card)));
            (ids, Some(card.mask()))
        }
        ("card", None, Some(id)) if fraud_core::pii::is_token(&id) => (vec![id], None),
        ("card", None, _) => {
            return Err(invalid(
                "card_number",
                "a card is erased by its card_number (or its token as id)",
            ))
        }
        (_, Some(_), None) => {
            return Err(invalid("card_number", "is accepted only with kind `card`"))
        }
        (_, None, None) => return Err(invalid("id", "is required")),
        (_, None, Some(id)) => {
            fraud_core::transaction::refuse_card_data("id", &id).map_err(Problem::invalid)?;
            (vec![id], None)
        }
    };
    let kind = e.kind;
    let held = blocking(move || {
        let mut held = false;
        for id in &ids {
            held |= engine.erase(&kind, id, &caller.name)?;
        }
        Ok(held)
    })
    .await?;
    typed_ok(&Erased {
        erased: held,
        card_mask: Some(mask),
    })
}

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    summary = "Liveness (no key)",
    responses((status = 200, description = "alive", body = Status)))]
pub(crate) async fn healthz() -> HttpResponse {
    status_ok("ok")
}

fn status_ok(status: &'static str) -> HttpResponse {
    typed_ok(&Status {
        status,
        detail: None,
    })
    .unwrap_or_else(|p| actix_web::ResponseError::error_response(&p))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    summary = "Readiness: entity state reachable, or the service degrading without it (no key)",
    responses(
        (status = 200, description = "`ready`, or `degraded`: entity state is unreachable and the service scores with the stateless features (`on_unavailable = \"degrade\"`)", body = Status),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn readyz(app: Data) -> HttpResponse {
    let engine = app.engine.clone();
    let probe = web::block(move || {
        engine
            .state
            .store()
            .get(fraud_core::features::Entity::Card, "readiness-probe")
            .map(|_| ())
    })
    .await;
    match probe {
        Ok(Ok(())) => status_ok("ready"),
        // Serving, degraded: a load balancer keeps sending traffic, a monitor sees why.
        Ok(Err(e)) if app.engine.degrade => typed_ok(&Status {
            status: "degraded",
            detail: Some(format!(
                "entity state is not reachable ({e}); scoring with the stateless features"
            )),
        })
        .unwrap_or_else(|p| actix_web::ResponseError::error_response(&p)),
        Ok(Err(e)) => actix_web::ResponseError::error_response(&Problem::unavailable(format!(
            "entity state is not reachable: {e}"
        ))),
        Err(_) => actix_web::ResponseError::error_response(&Problem::unavailable("shutting down")),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics (role analyst)",
    responses(
        (status = 200, description = "OpenMetrics text exposition", body = String, content_type = "application/openmetrics-text"),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer)
    ))]
pub(crate) async fn metrics(app: Data, _auth: Authorized<AnalystRole>) -> HttpResponse {
    let entities: Option<Vec<(&'static str, u64)>> = app.engine.state.memory().map(|m| {
        let st = m.stats();
        fraud_core::features::Entity::ALL
            .iter()
            .map(|e| (e.name(), st.entities[e.index()] as u64))
            .collect()
    });
    if app.engine.shadow_traffic > 0.0 {
        app.engine
            .metrics
            .arm_comparison(&app.engine.comparison.now());
    }
    HttpResponse::Ok()
        .content_type(super::metrics::CONTENT_TYPE)
        .body(app.engine.metrics.render(entities.as_deref()))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    summary = "This document (any key)",
    responses(
        (status = 200, description = "OpenAPI 3.1", body = Object),
        (status = 401, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer)
    ))]
pub(crate) async fn openapi(_auth: Authorized<AnyRole>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(
        serde_json::to_string(&super::openapi::document()).unwrap_or_else(|_| "{}".to_string()),
    )
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&Problem::new(
        StatusCode::NOT_FOUND,
        "not found",
        format!(
            "no endpoint {} {}",
            req.method(),
            req.path().chars().take(100).collect::<String>()
        ),
    ))
}

/// Whether a URL part, raw or percent-decoded (`+` as a space), holds card data. Card
/// tokens (`tok_` and 32 hex digits, which name a card in `DELETE /v1/entities/card/{token}`)
/// are not card data, though their digits can happen to read as a card number.
fn url_holds_card_data(part: &str) -> bool {
    if part.is_empty() {
        return false;
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&part.replace('+', " ")).collect();
    fraud_core::pii::holds_card_data(&without_tokens(part))
        || fraud_core::pii::holds_card_data(&without_tokens(&String::from_utf8_lossy(&decoded)))
}

/// `text` with every card token replaced by `~`.
fn without_tokens(text: &str) -> String {
    const LEN: usize = 36;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("tok_") {
        out.push_str(&rest[..at]);
        let candidate = rest[at..].get(..LEN);
        match candidate.filter(|c| fraud_core::pii::is_token(c)) {
            Some(_) => {
                out.push('~');
                rest = &rest[at + LEN..];
            }
            None => {
                out.push_str("tok_");
                rest = &rest[at + 4..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Refuses, before routing, requests whose headers exceed `limits.max_header_bytes` (431) and
/// requests with a card number anywhere in their URL (400, without echo).
pub async fn header_guard(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let limit = req
        .app_data::<Data>()
        .map_or(16 * 1024, |a| a.limits.max_header_bytes);
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > limit {
        let p = Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large",
            format!("the headers take {size} bytes; at most {limit}"),
        );
        let resp = actix_web::ResponseError::error_response(&p);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    if url_holds_card_data(req.uri().path()) || url_holds_card_data(req.query_string()) {
        let p = Problem::new(
            StatusCode::BAD_REQUEST,
            "card number in URL",
            "the URL holds what looks like a card number; card numbers are never accepted in a URL (URLs are logged by proxies and browsers): send it in the request body",
        );
        let resp = actix_web::ResponseError::error_response(&p);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}

#[utoipa::path(get, path = "/v1/policy", tag = "policy",
    summary = "The live policy: its version, who drafted and approved it, thresholds, rules and lists (role analyst or admin)",
    responses(
        (status = 200, description = "the live version", body = super::policies::Version),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer)
    ))]
pub(crate) async fn policy(
    app: Data,
    _auth: Authorized<ReaderRole>,
) -> Result<HttpResponse, Problem> {
    typed_ok(&app.engine.policies.live().version)
}

#[utoipa::path(get, path = "/v1/policy/versions", tag = "policy",
    summary = "Every published policy version, oldest first (role analyst or admin)",
    responses(
        (status = 200, description = "the versions", body = PolicyVersions),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer)
    ))]
pub(crate) async fn policy_versions(
    app: Data,
    _auth: Authorized<ReaderRole>,
) -> Result<HttpResponse, Problem> {
    typed_ok(&PolicyVersions {
        live: app.engine.policies.live().version.version,
        versions: app.engine.policies.versions(),
    })
}

/// A draft with its backtest on the recent log.
fn with_backtest(engine: &Engine, d: super::policies::Draft) -> Result<DraftAnswer, Problem> {
    let backtest = engine.policies.backtest(&d.policy)?;
    Ok(DraftAnswer {
        draft: d,
        backtest: serde_json::to_value(&backtest)
            .map_err(|e| Problem::internal(format!("backtest: {e}")))?,
    })
}

#[utoipa::path(get, path = "/v1/policy/drafts", tag = "policy",
    summary = "The drafts waiting for approval, each with its backtest on the recent decisions against the live policy (role admin)",
    responses(
        (status = 200, description = "the drafts", body = DraftList),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn policy_drafts(
    app: Data,
    _auth: Authorized<AdminRole>,
) -> Result<HttpResponse, Problem> {
    let engine = app.engine.clone();
    let list = blocking(move || {
        engine
            .policies
            .drafts()
            .into_iter()
            .map(|d| with_backtest(&engine, d))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    typed_ok(&DraftList { drafts: list })
}

#[utoipa::path(post, path = "/v1/policy/drafts", tag = "policy",
    summary = "Draft a policy (thresholds, rules, lists), or a rollback to an earlier version, for another admin to approve (role admin); answered with its backtest on the recent decisions",
    request_body = DraftRequest,
    responses(
        (status = 201, description = "drafted", body = DraftAnswer),
        (status = 400, response = ProblemAnswer),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 413, response = ProblemAnswer),
        (status = 415, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn policy_draft(
    app: Data,
    _slot: Admitted,
    auth: Authorized<AdminRole>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    json_content(&req)?;
    let bytes = body(payload, app.limits.max_body_bytes.saturating_mul(64)).await?;
    refuse_duplicate_names(&bytes)?;
    let draft: DraftRequest = serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message may quote the value (a card number pasted into a list): only
        // its words are kept.
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid policy",
            format!(
                "the body must be {{\"policy\": {{\"thresholds\", \"rules\", \"lists\"}}, \"comment\"?}} or {{\"from_version\": N}}: {}",
                e.to_string().split('"').step_by(2).collect::<Vec<_>>().join("")
            ),
        )
    })?;
    let engine = app.engine.clone();
    let by = auth.caller.name;
    let answer = blocking(move || {
        let d = engine.policies.propose(
            &*engine.log,
            &by,
            draft.policy,
            draft.from_version,
            draft.comment,
        )?;
        with_backtest(&engine, d)
    })
    .await?;
    let text =
        serde_json::to_string(&answer).map_err(|e| Problem::internal(format!("answer: {e}")))?;
    Ok(HttpResponse::Created()
        .content_type("application/json")
        .body(text))
}

#[utoipa::path(post, path = "/v1/policy/drafts/{id}/approve", tag = "policy",
    summary = "Approve a draft: it is published as the next version and decides from now on; the approver must not be its author (role admin)",
    params(("id" = String, Path, description = "the draft's id")),
    responses(
        (status = 200, description = "published", body = super::policies::Version),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 404, response = ProblemAnswer),
        (status = 422, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn policy_approve(
    app: Data,
    auth: Authorized<AdminRole>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let engine = app.engine.clone();
    let by = auth.caller.name;
    let v = blocking(move || engine.approve_policy(&by, &id)).await?;
    typed_ok(&v)
}

#[utoipa::path(delete, path = "/v1/policy/drafts/{id}", tag = "policy",
    summary = "Withdraw or reject a draft (role admin)",
    params(("id" = String, Path, description = "the draft's id")),
    responses(
        (status = 204, description = "discarded"),
        (status = 401, response = ProblemAnswer),
        (status = 403, response = ProblemAnswer),
        (status = 404, response = ProblemAnswer),
        (status = 429, response = ProblemAnswer),
        (status = 503, response = ProblemAnswer)
    ))]
pub(crate) async fn policy_discard(
    app: Data,
    auth: Authorized<AdminRole>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let engine = app.engine.clone();
    let by = auth.caller.name;
    blocking(move || engine.policies.discard(&*engine.log, &by, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/score", web::post().to(score))
        .route("/v1/score/batch", web::post().to(score_batch))
        .route("/v1/labels", web::post().to(labels))
        .route("/v1/decisions/{id}", web::get().to(decision))
        .route("/v1/models", web::post().to(models))
        .route("/v1/models/shadow", web::delete().to(remove_shadow))
        .route("/v1/entities/erase", web::post().to(erase_by_body))
        .route("/v1/entities/{kind}/{id}", web::delete().to(erase))
        .route("/v1/policy", web::get().to(policy))
        .route("/v1/policy/versions", web::get().to(policy_versions))
        .route("/v1/policy/drafts", web::get().to(policy_drafts))
        .route("/v1/policy/drafts", web::post().to(policy_draft))
        .route(
            "/v1/policy/drafts/{id}/approve",
            web::post().to(policy_approve),
        )
        .route("/v1/policy/drafts/{id}", web::delete().to(policy_discard))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi))
        .default_service(web::to(not_found));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_a_url_is_not_card_data_but_a_card_number_still_is() {
        // A token whose digits read as a Luhn-valid card number (4111111111111111).
        let token = "tok_4111111111111111abcdef0123456789";
        assert!(fraud_core::pii::is_token(token));
        assert!(!url_holds_card_data(&format!("/v1/entities/card/{token}")));
        assert!(url_holds_card_data("/v1/entities/card/4111111111111111"));
        assert!(url_holds_card_data(&format!(
            "/v1/entities/card/{token}?x=4111111111111111"
        )));
        assert!(url_holds_card_data("/x/tok_4111111111111111"));
    }
}
