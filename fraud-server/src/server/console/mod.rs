//! The review console (`/console/`): server-rendered pages (minijinja, every value escaped)
//! for the people who work the review queue. Login with a password and a one-time code
//! ([`super::users`]); the session is a random token in an HTTP-only, Secure, SameSite=Strict
//! cookie (only its SHA-256 is kept), ended by logout, idleness or age; every form that changes
//! something carries the session's CSRF token. Pages: the queue of open cases (filters by score
//! band, date and merchant category), a case (decision, masked transaction with the fields the
//! role may see, reasons as a bar chart, the entity aggregates at decision time, actions that
//! post a label and are recorded with the user's name), and an overview (decisions by outcome
//! per hour, score distribution, queue size, model, drift). No script at all, a strict
//! Content-Security-Policy, no third-party request: charts are inline SVG.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cases::Filter;
use super::config::ConsoleConfig;
use super::decisions::Event;
use super::engine::{DecisionRead, Engine, Labelled, Reader};
use super::keys::Role;
use super::problem::Problem;
use super::users::{LoggedIn, LoginRefusal, StoredSession, Users};

const SESSION_COOKIE: &str = "fraud_session";
const LOGIN_COOKIE: &str = "fraud_login";
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Session {
    user: String,
    role: Role,
    csrf: String,
    created: Instant,
    last_seen: Instant,
    flash: Option<String>,
}

/// The console's state, shared by the workers.
pub struct Console {
    engine: Arc<Engine>,
    users: Users,
    sessions: Mutex<HashMap<String, Session>>,
    cfg: ConsoleConfig,
    env: minijinja::Environment<'static>,
}

/// What a page handler ends with when it cannot show its page.
enum Stop {
    /// Not logged in (or the session ended): to the login page.
    Login,
    /// A page with a message and a status.
    Message(StatusCode, &'static str, String),
}

impl From<Problem> for Stop {
    fn from(p: Problem) -> Self {
        Stop::Message(p.status, "Something went wrong", p.detail)
    }
}

fn random_token() -> Result<String, Stop> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| {
        Stop::Message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "no randomness from the operating system".into(),
        )
    })?;
    Ok(fraud_core::hex::encode(&b))
}

/// The page for a shared store that did not answer.
fn unavailable(e: &super::decisions::LogError) -> Stop {
    Stop::Message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        format!("the console's shared store does not answer: {e}"),
    )
}

fn digest(token: &str) -> String {
    fraud_core::hex::encode(&Sha256::digest(token.as_bytes()))
}

fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.cookie(name).map(|c| c.value().to_string())
}

/// A console cookie: this path only, never to scripts, over TLS only, never sent with
/// requests from other sites; removed at once with `max_age` 0.
fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let mut c = actix_web::cookie::Cookie::build(name, value)
        .path("/console")
        .http_only(true)
        .secure(true)
        .same_site(actix_web::cookie::SameSite::Strict);
    if let Some(a) = max_age {
        c = c.max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(a).unwrap_or(i64::MAX),
        ));
    }
    c.finish().to_string()
}

/// Security headers of every console answer.
fn secured(mut b: HttpResponseBuilder) -> HttpResponseBuilder {
    b.insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"));
    b
}

fn redirect(to: &str) -> HttpResponse {
    secured(HttpResponse::SeeOther())
        .insert_header(("Location", to))
        .finish()
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

fn utc(ts_us: i64, with_seconds: bool) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_us) * 1000) else {
        return "?".into();
    };
    let d = t.date();
    let base = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        d.year(),
        u8::from(d.month()),
        d.day(),
        t.hour(),
        t.minute()
    );
    if with_seconds {
        format!("{base}:{:02}", t.second())
    } else {
        base
    }
}

fn amount(tx: &Value) -> String {
    let minor = tx["amount"]["minor"].as_i64().unwrap_or(0);
    let exp = tx["amount"]["exponent"].as_u64().unwrap_or(2) as u32;
    let cur = tx["currency"].as_str().unwrap_or("");
    if exp == 0 {
        return format!("{minor} {cur}");
    }
    let scale = 10i64.pow(exp);
    format!(
        "{}.{:0width$} {cur}",
        minor / scale,
        (minor % scale).abs(),
        width = exp as usize
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn card(tx: &Value) -> String {
    match (tx["card"]["mask"].as_str(), tx["card"]["token"].is_null()) {
        (Some(m), _) => m.to_string(),
        (None, true) => "(erased)".into(),
        (None, false) => "(token only)".into(),
    }
}

#[derive(Serialize)]
struct Bar {
    feature: String,
    /// The name cut to fit beside its bar.
    short: String,
    value: String,
    sign: &'static str,
    abs: String,
    up: bool,
    x: String,
    w: String,
}

/// Reasons as bars: x and width in percent of the chart; names take its left 55%, the bars
/// the rest, centred on an axis at 77.5%.
fn bars(reasons: &Value) -> Vec<Bar> {
    let list = reasons.as_array().cloned().unwrap_or_default();
    let max = list
        .iter()
        .filter_map(|r| r["contribution"].as_f64())
        .map(f64::abs)
        .fold(0.0f64, f64::max);
    list.iter()
        .map(|r| {
            let c = r["contribution"].as_f64().unwrap_or(0.0);
            let w = if max > 0.0 { c.abs() / max * 21.5 } else { 0.0 };
            let feature = r["feature"].as_str().unwrap_or("?").to_string();
            let short = if feature.chars().count() > 30 {
                format!("{}…", feature.chars().take(29).collect::<String>())
            } else {
                feature.clone()
            };
            Bar {
                feature,
                short,
                value: match r["value"].as_f64() {
                    Some(v) => format!("{v:.4}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string(),
                    None => "missing".into(),
                },
                sign: if c >= 0.0 { "+" } else { "−" },
                abs: format!("{:.3}", c.abs()),
                up: c >= 0.0,
                x: format!("{:.2}%", if c >= 0.0 { 77.5 } else { 77.5 - w }),
                w: format!("{w:.2}%"),
            }
        })
        .collect()
}

#[derive(Serialize)]
struct Row {
    id: String,
    href: String,
    time: String,
    card: String,
    amount: String,
    merchant: String,
    mcc: String,
    countries: String,
    score: String,
    reasons: Vec<Bar>,
    rules: Vec<String>,
    escalated: bool,
}

#[derive(Serialize)]
struct Field {
    label: String,
    value: String,
}

impl Console {
    /// The console over `engine`, with its users.
    pub fn new(engine: Arc<Engine>, users: Users, cfg: ConsoleConfig) -> Result<Self, String> {
        let mut env = minijinja::Environment::new();
        for (name, src) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("reasons.html", include_str!("templates/reasons.html")),
            ("queue.html", include_str!("templates/queue.html")),
            ("case.html", include_str!("templates/case.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("message.html", include_str!("templates/message.html")),
            ("rules.html", include_str!("templates/rules.html")),
        ] {
            env.add_template(name, src)
                .map_err(|e| format!("console template {name}: {e}"))?;
        }
        Ok(Console {
            engine,
            users,
            sessions: Mutex::new(HashMap::new()),
            cfg,
            env,
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sees(&self, role: Role, field: &str) -> bool {
        role == Role::Admin || self.cfg.analyst_fields.iter().any(|f| f == field)
    }

    fn page(&self, status: StatusCode, name: &str, ctx: minijinja::Value) -> HttpResponse {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => secured(HttpResponse::build(status))
                .content_type("text/html; charset=utf-8")
                .body(html),
            Err(e) => {
                eprintln!("console: template {name}: {e}");
                secured(HttpResponse::InternalServerError())
                    .content_type("text/plain; charset=utf-8")
                    .body("the page could not be rendered")
            }
        }
    }

    /// The session of a request: (token digest, user, role, csrf, flash taken).
    fn session(
        &self,
        req: &HttpRequest,
    ) -> Result<(String, String, Role, String, Option<String>), Stop> {
        let token = cookie(req, SESSION_COOKIE).ok_or(Stop::Login)?;
        let key = digest(&token);
        let (idle_s, absolute_s) = (self.cfg.idle_timeout_s, self.cfg.absolute_timeout_s);
        if let Some(store) = self.engine.log.console_store() {
            let s = store
                .session(&key, idle_s, absolute_s)
                .map_err(|e| unavailable(&e))?
                .ok_or(Stop::Login)?;
            // A user disabled meanwhile is logged out.
            if !self.users.active(&s.user) {
                let _ = store.session_end(&key);
                return Err(Stop::Login);
            }
            return Ok((key, s.user, s.role, s.csrf, s.flash));
        }
        let now = Instant::now();
        let mut g = self.sessions();
        let Some(s) = g.get_mut(&key) else {
            return Err(Stop::Login);
        };
        let idle = Duration::from_secs(idle_s);
        let absolute = Duration::from_secs(absolute_s);
        if now.duration_since(s.last_seen) > idle || now.duration_since(s.created) > absolute {
            g.remove(&key);
            return Err(Stop::Login);
        }
        let user = s.user.clone();
        drop(g);
        // A user disabled meanwhile is logged out.
        if !self.users.active(&user) {
            self.sessions().remove(&key);
            return Err(Stop::Login);
        }
        let mut g = self.sessions();
        let Some(s) = g.get_mut(&key) else {
            return Err(Stop::Login);
        };
        s.last_seen = now;
        Ok((key, s.user.clone(), s.role, s.csrf.clone(), s.flash.take()))
    }

    /// Starts a session for `user` under the digest `key` of its token.
    fn start_session(&self, key: String, user: &LoggedIn, csrf: String) -> Result<(), Stop> {
        if let Some(store) = self.engine.log.console_store() {
            let s = StoredSession {
                user: user.name.clone(),
                role: user.role,
                csrf,
                flash: None,
            };
            return store
                .session_start(
                    &key,
                    &s,
                    self.cfg.idle_timeout_s,
                    self.cfg.absolute_timeout_s,
                )
                .map_err(|e| unavailable(&e));
        }
        let now = Instant::now();
        self.sessions().insert(
            key,
            Session {
                user: user.name.clone(),
                role: user.role,
                csrf,
                created: now,
                last_seen: now,
                flash: None,
            },
        );
        Ok(())
    }

    /// Ends the session of `key`.
    fn end_session(&self, key: &str) {
        match self.engine.log.console_store() {
            Some(store) => {
                if let Err(e) = store.session_end(key) {
                    eprintln!("warning: console logout: the shared store: {e}");
                }
            }
            None => {
                self.sessions().remove(key);
            }
        }
    }

    fn flash(&self, key: &str, msg: String) {
        if let Some(store) = self.engine.log.console_store() {
            if let Err(e) = store.session_flash(key, &msg) {
                eprintln!("warning: console: the shared store: {e}");
            }
            return;
        }
        if let Some(s) = self.sessions().get_mut(key) {
            s.flash = Some(msg);
        }
    }

    fn stop(&self, s: Stop) -> HttpResponse {
        match s {
            Stop::Login => redirect("/console/login"),
            Stop::Message(status, heading, message) => self.page(
                status,
                "message.html",
                minijinja::context! { title => heading, heading => heading, message => message },
            ),
        }
    }

    fn row(&self, rec: &Value, role: Role, escalated: bool) -> Row {
        let tx = &rec["transaction"];
        let resp = &rec["response"];
        let id = rec["transaction_id"].as_str().unwrap_or("").to_string();
        let shown = |field: &str| {
            if self.sees(role, field) {
                tx[field].as_str().unwrap_or("?").to_string()
            } else {
                "·".to_string()
            }
        };
        let mut countries = format!("{} → {}", shown("card_country"), shown("merchant_country"));
        if self.sees(role, "ip_country") {
            if let Some(c) = tx["ip_country"].as_str() {
                countries.push_str(&format!(", IP {c}"));
            }
        }
        Row {
            href: format!("/console/cases/{}", encode(&id)),
            id,
            time: utc(tx["timestamp_us"].as_i64().unwrap_or(0), false),
            card: card(tx),
            amount: amount(tx),
            merchant: if self.sees(role, "merchant_id") {
                text(&tx["merchant_id"])
            } else {
                "(hidden)".into()
            },
            mcc: if self.sees(role, "mcc") {
                text(&tx["mcc"])
            } else {
                "(hidden)".into()
            },
            countries,
            score: format!("{:.3}", resp["score"].as_f64().unwrap_or(0.0)),
            reasons: bars(&resp["reasons"]).into_iter().take(3).collect(),
            rules: resp["rules_fired"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            escalated,
        }
    }

    /// Records `event` for console user `user` (key name `console:<user>`).
    fn record(&self, user: &str, event: &Event<'_>) -> Result<u64, Problem> {
        self.engine
            .log
            .append(&format!("console:{user}"), event)
            .map_err(Problem::from_log)
    }
}

type Data = web::Data<Console>;

async fn login_page(c: Data, req: HttpRequest) -> HttpResponse {
    if c.session(&req).is_ok() {
        return redirect("/console/");
    }
    login_form(&c, StatusCode::OK, None)
}

fn login_form(c: &Console, status: StatusCode, error: Option<String>) -> HttpResponse {
    let token = match random_token() {
        Ok(t) => t,
        Err(s) => return c.stop(s),
    };
    let mut resp = c.page(
        status,
        "login.html",
        minijinja::context! { title => "Log in", login_csrf => &token, error => error },
    );
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&set_cookie(
        LOGIN_COOKIE,
        &token,
        Some(1800),
    )) {
        resp.headers_mut()
            .append(actix_web::http::header::SET_COOKIE, v);
    }
    resp
}

async fn login(c: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let f = form(&body);
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    let expected = cookie(&req, LOGIN_COOKIE).unwrap_or_default();
    if !same(&field("csrf"), &expected) {
        return login_form(
            &c,
            StatusCode::FORBIDDEN,
            Some("The login form expired or did not come from this console; try again.".into()),
        );
    }
    let (name, password, code) = (field("name"), field("password"), field("code"));
    let c2 = c.clone();
    let checked = web::block(move || {
        let outcome = c2
            .users
            .login_with(&name, &password, &code, c2.engine.log.console_store());
        (name, outcome)
    })
    .await;
    let Ok((name, outcome)) = checked else {
        return c.stop(Stop::Message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "the service is shutting down".into(),
        ));
    };
    match outcome {
        Ok(user) => {
            let (token, csrf) = match (random_token(), random_token()) {
                (Ok(t), Ok(c)) => (t, c),
                (Err(s), _) | (_, Err(s)) => return c.stop(s),
            };
            if let Err(s) = c.start_session(digest(&token), &user, csrf) {
                return c.stop(s);
            }
            let (c2, who) = (c.clone(), user.name.clone());
            let _ = web::block(move || {
                c2.record(
                    &who,
                    &Event::Login {
                        outcome: "ok",
                        reason: None,
                    },
                )
            })
            .await;
            let mut resp = redirect("/console/");
            for cookie in [
                set_cookie(SESSION_COOKIE, &token, None),
                set_cookie(LOGIN_COOKIE, "", Some(0)),
            ] {
                if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&cookie) {
                    resp.headers_mut()
                        .append(actix_web::http::header::SET_COOKIE, v);
                }
            }
            resp
        }
        Err(why) => {
            // Failures are recorded under the user's name only when it is a user (a name
            // typed wrong could be anything, a card number included).
            if c.users.exists(&name) {
                let (c2, reason) = (c.clone(), format!("{why:?}"));
                let _ = web::block(move || {
                    c2.record(
                        &name,
                        &Event::Login {
                            outcome: "refused",
                            reason: Some(&reason),
                        },
                    )
                })
                .await;
            }
            let msg = match why {
                LoginRefusal::Wrong => "Wrong user name, password or one-time code.".to_string(),
                LoginRefusal::Replayed => {
                    "This one-time code was used already; wait for the next code.".to_string()
                }
                LoginRefusal::Locked(s) => format!(
                    "Too many failed attempts: logins for this user are locked for {} more minute(s).",
                    s.div_ceil(60)
                ),
                LoginRefusal::Disabled => "This user is disabled.".to_string(),
                LoginRefusal::Unavailable => {
                    "Logins cannot be checked right now (the shared store does not answer); try again shortly.".to_string()
                }
            };
            login_form(&c, StatusCode::UNAUTHORIZED, Some(msg))
        }
    }
}

async fn logout(c: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (key, user, _, csrf, _) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    if !same(form(&body).get("csrf").map_or("", String::as_str), &csrf) {
        return csrf_refused(&c);
    }
    c.end_session(&key);
    let c2 = c.clone();
    let _ = web::block(move || c2.record(&user, &Event::Logout {})).await;
    let mut resp = redirect("/console/login");
    if let Ok(v) =
        actix_web::http::header::HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", Some(0)))
    {
        resp.headers_mut()
            .append(actix_web::http::header::SET_COOKIE, v);
    }
    resp
}

fn csrf_refused(c: &Console) -> HttpResponse {
    c.stop(Stop::Message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form did not come from your console session (missing or wrong CSRF token). Reload the page and try again.".into(),
    ))
}

#[derive(Serialize)]
struct Band {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

const BANDS: &[(&str, &str, Option<f64>, Option<f64>)] = &[
    ("", "any", None, None),
    ("low", "under 0.5", None, Some(0.5)),
    ("mid", "0.5 to 0.7", Some(0.5), Some(0.7)),
    ("high", "0.7 and over", Some(0.7), None),
];

fn day_start(s: &str) -> Option<i64> {
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp())
}

async fn queue(c: Data, req: HttpRequest, q: web::Query<HashMap<String, String>>) -> HttpResponse {
    let (_, user, role, csrf, flash) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let band = get("band");
    let (from, to, mcc) = (get("from"), get("to"), get("mcc"));
    let (score_min, score_max) = BANDS
        .iter()
        .find(|b| b.0 == band)
        .map_or((None, None), |b| (b.2, b.3));
    let filter = Filter {
        score_min,
        score_max: score_max.map(|m| m - 1e-12),
        from: day_start(&from),
        until: day_start(&to).map(|t| t + 86_400),
        mcc: mcc.parse().ok(),
    };
    let page: usize = get("page").parse().unwrap_or(0);
    let size = c.cfg.page_size;
    let (cases, total) = c.engine.cases.list(&filter, page * size, size);
    let c2 = c.clone();
    let rows = web::block(move || {
        cases
            .iter()
            .filter_map(|case| {
                let rec = c2.engine.log.decision(&case.transaction_id).ok()??;
                Some(c2.row(&rec.data, role, case.escalated))
            })
            .collect::<Vec<Row>>()
    })
    .await
    .unwrap_or_default();
    let link = |p: usize| {
        serde_urlencoded::to_string([
            ("band", band.as_str()),
            ("from", from.as_str()),
            ("to", to.as_str()),
            ("mcc", mcc.as_str()),
            ("page", &p.to_string()),
        ])
        .unwrap_or_default()
    };
    let bands: Vec<Band> = BANDS
        .iter()
        .map(|b| Band {
            value: b.0,
            label: b.1,
            selected: b.0 == band,
        })
        .collect();
    let shown_from = if total == 0 { 0 } else { page * size + 1 };
    c.page(
        StatusCode::OK,
        "queue.html",
        minijinja::context! {
            title => "Review queue", page => "queue", user => user, role => role.name(),
            csrf => csrf, flash => flash, cases => rows, total => total,
            bands => bands, filtered => filter.score_min.is_some() || filter.score_max.is_some()
                || filter.from.is_some() || filter.until.is_some() || filter.mcc.is_some(),
            filter => minijinja::context! { from => from, to => to, mcc => mcc },
            shown_from => shown_from, shown_to => (page * size + size).min(total),
            prev => (page > 0).then(|| link(page - 1)),
            next => ((page + 1) * size < total).then(|| link(page + 1)),
        },
    )
}

#[derive(Serialize)]
struct Aggregates {
    entity: String,
    rows: Vec<Field>,
}

async fn case_page(c: Data, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    let (_, user, role, csrf, flash) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    let id = id.into_inner();
    // Each case view is an access to card data: watched per user, like API reads.
    let (c2, who, tid) = (c.clone(), user.clone(), id.clone());
    let read = web::block(move || {
        let reader = Reader::Console { user: &who };
        c2.engine.read_decision(reader, &tid, |rec| {
            rec.data["response"]["decision"] == "review"
        })
    })
    .await;
    let rec = match read {
        Ok(Ok(DecisionRead::Found(rec))) => rec,
        Ok(Ok(DecisionRead::Throttled {
            retry_after,
            reads,
            limit,
        })) => {
            return c.stop(Stop::Message(
                StatusCode::TOO_MANY_REQUESTS,
                "Paused",
                format!(
                    "You opened {reads} cases in a short time, far more than usual for you (limit now {limit}). Opening cases is paused for {retry_after} seconds, and the security team has been alerted."
                ),
            ))
        }
        Ok(Ok(DecisionRead::Missing)) => {
            return c.stop(Stop::Message(
                StatusCode::NOT_FOUND,
                "Not found",
                format!("No review case for transaction `{id}`."),
            ))
        }
        Ok(Err(p)) => return c.stop(p.into()),
        Err(_) => return c.stop(Stop::Login),
    };
    let (recorded_at, rec) = (rec.at, rec.data);
    let case = c.engine.cases.get(&id);
    let tx = &rec["transaction"];
    let resp = &rec["response"];
    let mut fields = Vec::new();
    let mut hidden = Vec::new();
    for (name, label) in super::config::CONSOLE_FIELDS {
        if c.sees(role, name) {
            fields.push(Field {
                label: (*label).to_string(),
                value: text(&tx[*name]),
            });
        } else {
            hidden.push(*label);
        }
    }
    if role == Role::Admin {
        fields.push(Field {
            label: "Card token".into(),
            value: text(&tx["card"]["token"]),
        });
    }
    // Aggregates: the recorded windowed features, grouped by entity.
    let mut groups: Vec<Aggregates> = Vec::new();
    if let Some(features) = rec["features"].as_object() {
        for entity in fraud_core::features::Entity::ALL.map(|e| e.name()) {
            let prefix = format!("{entity}_");
            let rows: Vec<Field> = features
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| Field {
                    label: k[prefix.len()..].replace('_', " "),
                    value: match v.as_f64() {
                        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
                        Some(x) => format!("{x:.2}"),
                        None => "—".into(),
                    },
                })
                .collect();
            if !rows.is_empty() {
                groups.push(Aggregates {
                    entity: entity.to_string(),
                    rows,
                });
            }
        }
    }
    let status = match &case {
        Some(k) if k.escalated => "open, escalated",
        Some(_) => "open",
        None => "closed",
    };
    c.page(
        StatusCode::OK,
        "case.html",
        minijinja::context! {
            title => format!("Case {id}"), page => "case", user => user, role => role.name(),
            csrf => csrf, flash => flash, id => &id, href => format!("/console/cases/{}", encode(&id)),
            decision => text(&resp["decision"]), status => status,
            score => format!("{:.3}", resp["score"].as_f64().unwrap_or(0.0)),
            risk => text(&resp["risk_score"]), model_version => text(&resp["model_version"]),
            rules => resp["rules_fired"].as_array().map(|a| a.iter().filter_map(|r| r.as_str().map(String::from)).collect::<Vec<_>>()).unwrap_or_default(),
            recorded_at => recorded_at,
            time => utc(tx["timestamp_us"].as_i64().unwrap_or(0), true),
            card => card(tx), amount => amount(tx), fields => fields, hidden => hidden,
            reasons => bars(&resp["reasons"]), aggregates => groups,
            open => case.is_some(), escalated => case.as_ref().is_some_and(|k| k.escalated),
        },
    )
}

async fn case_action(
    c: Data,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let (key, user, _, csrf, _) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    let f = form(&body);
    if !same(f.get("csrf").map_or("", String::as_str), &csrf) {
        return csrf_refused(&c);
    }
    let id = id.into_inner();
    let action = f.get("action").cloned().unwrap_or_default();
    if !["fraud", "legit", "escalate"].contains(&action.as_str()) {
        return c.stop(Stop::Message(
            StatusCode::BAD_REQUEST,
            "Refused",
            "The action must be fraud, legit or escalate.".into(),
        ));
    }
    if c.engine.cases.get(&id).is_none() {
        c.flash(&key, format!("Case {id} is closed already."));
        return redirect("/console/");
    }
    let (c2, who, tid, what) = (c.clone(), user.clone(), id.clone(), action.clone());
    let done = web::block(move || -> Result<String, Problem> {
        let caller = format!("console:{who}");
        match what.as_str() {
            "escalate" => {}
            _ => match c2.engine.label(&tid, what == "fraud", None, &caller)? {
                Labelled::Applied => {}
                Labelled::Unknown => {
                    return Ok(format!("Case {tid}: its decision is no longer recorded."))
                }
                Labelled::Erased => {
                    return Ok(format!(
                        "Case {tid}: its card was erased; it cannot be labelled."
                    ))
                }
            },
        }
        c2.engine.record_case(&caller, &tid, &what)?;
        Ok(match what.as_str() {
            "fraud" => format!("Case {tid} confirmed as fraud."),
            "legit" => format!("Case {tid} marked legitimate."),
            _ => format!("Case {tid} escalated."),
        })
    })
    .await;
    match done {
        Ok(Ok(msg)) => {
            c.flash(&key, msg);
            redirect("/console/")
        }
        Ok(Err(p)) => c.stop(p.into()),
        Err(_) => c.stop(Stop::Login),
    }
}

async fn overview(c: Data, req: HttpRequest) -> HttpResponse {
    let (_, user, role, csrf, flash) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    let hours = c.engine.cases.by_hour(48);
    let bar_w = 14.0;
    let hours_w = (hours.len() as f64 * (bar_w + 4.0)).max(200.0);
    let top = hours
        .iter()
        .map(|(_, n)| n.iter().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let hours: Vec<minijinja::Value> = hours
        .iter()
        .enumerate()
        .map(|(i, (h, n))| {
            let hh = |v: u64| v as f64 / top * 150.0;
            let (a, r, d) = (hh(n[0]), hh(n[1]), hh(n[2]));
            let label = utc(h * 3600 * 1_000_000, false);
            minijinja::context! {
                label => label, x => i as f64 * (bar_w + 4.0),
                approve => n[0], review => n[1], decline => n[2],
                y_approve => 160.0 - a, h_approve => a,
                y_review => 160.0 - a - r, h_review => r,
                y_decline => 160.0 - a - r - d, h_decline => d,
            }
        })
        .collect();
    let scores = c.engine.cases.scores();
    let max = scores.iter().copied().max().unwrap_or(1).max(1) as f64;
    let n = super::cases::SCORE_BINS as f64;
    let scores: Vec<minijinja::Value> = scores
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let h = k as f64 / max * 150.0;
            minijinja::context! {
                label => format!("{:.2}–{:.2}", i as f64 / n, (i + 1) as f64 / n),
                count => k, x => i as f64 * 21.0, y => 160.0 - h, h => h,
            }
        })
        .collect();
    let psi = c.engine.metrics.drift_psi();
    let level = |p: f64| {
        if p > 0.25 {
            "shifted"
        } else if p >= 0.1 {
            "watch"
        } else {
            "stable"
        }
    };
    let worst = psi.iter().map(|(_, p)| *p).fold(0.0f64, f64::max);
    let mut features: Vec<(String, f64)> = psi.into_iter().filter(|(_, p)| *p >= 0.1).collect();
    features.sort_by(|a, b| b.1.total_cmp(&a.1));
    features.truncate(10);
    let drift = minijinja::context! {
        level => level(worst),
        label => if c.engine.model.load().drift.is_some() { format!("{worst:.3} ({})", level(worst)) } else { "no reference".into() },
        features => features.iter().map(|(f, p)| minijinja::context!{ name => f, psi => format!("{p:.3}"), level => level(*p) }).collect::<Vec<_>>(),
    };
    c.page(
        StatusCode::OK,
        "overview.html",
        minijinja::context! {
            title => "Overview", page => "overview", user => user, role => role.name(),
            csrf => csrf, flash => flash, queue => c.engine.cases.open_count(),
            closed => c.engine.cases.closed(), model_version => c.engine.model.load().version.clone(),
            hours => hours, hours_w => hours_w, bar_w => bar_w, scores => scores, drift => drift,
        },
    )
}

/// Three decimals, or a dash when there is nothing to show.
fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |x| format!("{x:.3}"))
}

/// The Rules page: the live policy and its versions for every user; shadow-rule and
/// champion / challenger figures; for admins the drafts with their backtests, approve,
/// discard and a new draft.
async fn rules_page(c: Data, req: HttpRequest) -> HttpResponse {
    let (_, user, role, csrf, flash) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    let engine = c.engine.clone();
    let admin = role == Role::Admin;
    let me = format!("console:{user}");
    let built = web::block(move || -> Result<minijinja::Value, Problem> {
        let live = engine.policies.live();
        let shadow: Vec<minijinja::Value> = live
            .version
            .policy
            .rules
            .iter()
            .filter(|r| r.mode == fraud_core::decision::RuleMode::Shadow)
            .map(|r| {
                let (fired, fraud, legit) = engine.metrics.shadow_stats(&r.name);
                minijinja::context! {
                    name => r.name, fired => fired, fraud => fraud, legit => legit,
                    precision => ratio((fraud + legit > 0).then(|| fraud as f64 / (fraud + legit) as f64)),
                }
            })
            .collect();
        let arms = (engine.shadow_traffic > 0.0).then(|| {
            let n = engine.comparison.now();
            let shadow_version = engine
                .shadow
                .load()
                .as_ref()
                .map(|m| m.version.clone())
                .unwrap_or_else(|| "none".into());
            minijinja::context! {
                share => format!("{:.0}%", engine.shadow_traffic * 100.0),
                labelled => n.labelled, fraud => n.fraud,
                champion => engine.model.load().version.clone(), challenger => shadow_version,
                auc_champion => ratio(n.auc.map(|x| x.0)), auc_challenger => ratio(n.auc.map(|x| x.1)),
                ap_champion => ratio(n.average_precision.map(|x| x.0)),
                ap_challenger => ratio(n.average_precision.map(|x| x.1)),
                d_champion => n.decisions[0], d_challenger => n.decisions[1],
            }
        });
        let mut drafts = Vec::new();
        if admin {
            for d in engine.policies.drafts() {
                let b = engine.policies.backtest(&d.policy)?;
                let base = b.baseline.clone().unwrap_or_default();
                let changes: Vec<minijinja::Value> = base
                    .changes
                    .iter()
                    .map(|(what, count)| minijinja::context! { what => what, count => count })
                    .collect();
                let rules: Vec<minijinja::Value> = b
                    .rules
                    .iter()
                    .map(|(name, r)| {
                        minijinja::context! {
                            name => name, fired => r.fired, labelled => r.fraud + r.legit > 0,
                            precision => ratio(r.precision),
                        }
                    })
                    .collect();
                drafts.push(minijinja::context! {
                    id => d.id, drafted_by => d.drafted_by, comment => d.comment,
                    policy => minijinja::Value::from_serialize(&d.policy),
                    backtest => minijinja::context! { transactions => b.transactions },
                    live => minijinja::Value::from_serialize(base.decisions),
                    draft => minijinja::Value::from_serialize(b.decisions),
                    changes => changes, rules => rules, mine => d.drafted_by == me,
                });
            }
        }
        let live_toml = toml::to_string(&live.version.policy).unwrap_or_default();
        Ok(minijinja::context! {
            live => minijinja::Value::from_serialize(&live.version),
            versions => minijinja::Value::from_serialize(engine.policies.versions()),
            shadow => shadow, arms => arms, drafts => drafts, live_toml => live_toml,
        })
    })
    .await;
    let ctx = match built {
        Ok(Ok(ctx)) => ctx,
        Ok(Err(p)) => return c.stop(p.into()),
        Err(_) => return c.stop(Stop::Login),
    };
    c.page(
        StatusCode::OK,
        "rules.html",
        minijinja::context! {
            title => "Rules", page => "rules", user => user, role => role.name(),
            csrf => csrf, flash => flash, admin => admin, ..ctx
        },
    )
}

/// Drafts, approves or discards a policy (admins only; a draft is approved by another
/// admin than its author).
async fn rules_action(c: Data, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (key, user, role, csrf, _) = match c.session(&req) {
        Ok(s) => s,
        Err(s) => return c.stop(s),
    };
    let f = form(&body);
    if !same(f.get("csrf").map_or("", String::as_str), &csrf) {
        return csrf_refused(&c);
    }
    if role != Role::Admin {
        return c.stop(Stop::Message(
            StatusCode::FORBIDDEN,
            "Refused",
            "Only admins change the policy; analysts see it.".into(),
        ));
    }
    let (engine, by) = (c.engine.clone(), format!("console:{user}"));
    let done = web::block(move || -> Result<String, Problem> {
        let draft = f.get("draft").cloned().unwrap_or_default();
        match f.get("action").map(String::as_str) {
            Some("draft") => {
                let text = f.get("policy").cloned().unwrap_or_default();
                let policy = fraud_core::decision::PolicyConfig::from_toml(&text).map_err(|e| {
                    Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid policy",
                        e.to_string(),
                    )
                })?;
                let comment = f.get("comment").filter(|c| !c.trim().is_empty()).cloned();
                let d = engine
                    .policies
                    .propose(&*engine.log, &by, Some(policy), None, comment)?;
                Ok(format!("Draft {} posted: another admin approves it.", d.id))
            }
            Some("approve") => {
                let v = engine.approve_policy(&by, &draft)?;
                Ok(format!("Version {} is live.", v.version))
            }
            Some("discard") => {
                engine.policies.discard(&*engine.log, &by, &draft)?;
                Ok(format!("Draft {draft} discarded."))
            }
            _ => Err(Problem::bad_field(
                "action",
                "must be draft, approve or discard",
            )),
        }
    })
    .await;
    match done {
        Ok(Ok(msg)) => {
            c.flash(&key, msg);
            redirect("/console/rules")
        }
        Ok(Err(p)) => c.stop(Stop::Message(p.status, "Refused", p.detail)),
        Err(_) => c.stop(Stop::Login),
    }
}

async fn stylesheet() -> HttpResponse {
    secured(HttpResponse::Ok())
        .content_type("text/css; charset=utf-8")
        .body(include_str!("static/console.css"))
}

async fn to_queue() -> HttpResponse {
    redirect("/console/")
}

/// The console's routes (served when `console.enabled`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(to_queue))
        .route("/console/", web::get().to(queue))
        .route("/console/login", web::get().to(login_page))
        .route("/console/login", web::post().to(login))
        .route("/console/logout", web::post().to(logout))
        .route("/console/overview", web::get().to(overview))
        .route("/console/rules", web::get().to(rules_page))
        .route("/console/rules", web::post().to(rules_action))
        .route("/console/cases/{id}", web::get().to(case_page))
        .route("/console/cases/{id}", web::post().to(case_action))
        .route("/console/static/console.css", web::get().to(stylesheet));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_bars_and_encoding() {
        let tx = json!({"amount": {"minor": 1250, "exponent": 2}, "currency": "EUR"});
        assert_eq!(amount(&tx), "12.50 EUR");
        let tx = json!({"amount": {"minor": 5, "exponent": 3}, "currency": "KWD"});
        assert_eq!(amount(&tx), "0.005 KWD");
        let tx = json!({"amount": {"minor": 700, "exponent": 0}, "currency": "JPY"});
        assert_eq!(amount(&tx), "700 JPY");
        let b = bars(&json!([
            {"feature": "a", "value": 1.0, "contribution": 0.5},
            {"feature": "b", "value": null, "contribution": -0.25}
        ]));
        assert_eq!((b[0].x.as_str(), b[0].w.as_str()), ("77.50%", "21.50%"));
        assert_eq!((b[1].x.as_str(), b[1].w.as_str()), ("66.75%", "10.75%"));
        assert_eq!(b[1].value, "missing");
        assert_eq!(encode("a b/<c>"), "a%20b%2F%3Cc%3E");
    }
}
