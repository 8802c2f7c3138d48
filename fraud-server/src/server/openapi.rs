//! The API's request and answer types, and the OpenAPI 3.1 document served at
//! `/openapi.json`, generated from them (utoipa) and from the handlers' annotations in
//! [`super::http`]. A test validates real answers against the served document.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use fraud_core::decision::Verdict;

/// A policy draft: a policy, or a rollback to an earlier version's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftRequest {
    /// The proposed policy: `thresholds` {`review`, `decline`}, `rules` [{`name`, `when`,
    /// `action`, `mode`?}], `lists` {`allow`, `block`} as in the configuration file.
    #[schema(value_type = Option<Object>)]
    pub policy: Option<fraud_core::decision::PolicyConfig>,
    /// Instead of `policy`: the version whose policy is drafted again (a rollback).
    pub from_version: Option<u64>,
    /// Why (shown to the approver, recorded).
    pub comment: Option<String>,
}

/// A draft with its backtest on the recent decisions.
#[derive(Debug, Serialize, ToSchema)]
pub struct DraftAnswer {
    /// The draft.
    pub draft: super::policies::Draft,
    /// What it would have decided on the recent decisions, the live policy as the baseline
    /// (`fraud backtest`'s summary: `decisions`, `rules`, `baseline.changes`, and `labels`
    /// where labels arrived).
    #[schema(value_type = Object)]
    pub backtest: Value,
}

/// The drafts waiting for approval.
#[derive(Debug, Serialize, ToSchema)]
pub struct DraftList {
    /// Oldest id first.
    pub drafts: Vec<DraftAnswer>,
}

/// The published policy versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyVersions {
    /// The live version's number.
    pub live: u64,
    /// Every version, oldest first.
    pub versions: Vec<super::policies::Version>,
}

/// The answer to one scored transaction.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScoreAnswer {
    /// The verdict (the decision library's answer).
    #[serde(flatten)]
    pub verdict: Verdict,
    /// True when the same API key sent the same transaction again: the recorded answer (the
    /// same id with another body or from another key is refused with 409).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// A batch of transactions to score, one result each, in order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The transactions (at most `limits.max_batch`), each as `POST /v1/score` takes it
    /// (`RawTransaction`); one that is not valid gets an error entry in the results, and the
    /// others are scored.
    #[schema(value_type = Vec<Object>)]
    pub transactions: Vec<Box<serde_json::value::RawValue>>,
}

/// One result of a batch: the transaction's answer or its error. (The handler joins the
/// entries already serialized, without building this type: it describes them.)
#[allow(dead_code)]
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchEntry {
    /// Scored.
    Answer(ScoreAnswer),
    /// Refused (the rest of the batch is scored).
    Error(super::problem::BatchError),
}

/// The results of a batch, in the order of its transactions.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    /// One per transaction sent.
    pub results: Vec<BatchEntry>,
}

/// Fraud / not-fraud feedback on decided transactions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsRequest {
    /// The labels.
    pub labels: Vec<Label>,
}

/// One label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// The decided transaction.
    pub transaction_id: String,
    /// Whether it was fraud.
    pub is_fraud: bool,
    /// When the outcome became known (RFC 3339; default: now). Label-aware features count
    /// it from then on.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub reported_at: Option<String>,
}

/// What became of the labels sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelsAnswer {
    /// Labels applied.
    pub accepted: usize,
    /// Transaction ids with no recorded decision.
    pub unknown: Vec<String>,
    /// Transaction ids whose card holder was erased (the label is not kept).
    pub erased: Vec<String>,
}

/// A recorded decision, as an analyst reads it (masked; entity fields opened only where
/// their keys remain).
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionRecordAnswer {
    /// Its sequence number in the decision log.
    pub seq: u64,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// The API key (name) that sent the transaction.
    pub key: String,
    /// The answer that was sent (without `elapsed_us`).
    #[schema(value_type = ScoreAnswer)]
    pub response: Value,
    /// The transaction as recorded (minimised; card as token and mask).
    #[schema(value_type = Object)]
    pub transaction: Value,
    /// The feature row, by name (`null` for a missing value).
    #[schema(value_type = Object)]
    pub features: Value,
    /// The shadow model's score and decision, when one ran.
    #[schema(value_type = Option<Object>)]
    pub shadow: Value,
    /// Fields of the record erased since (an erased entity's id or the IP, e-mail).
    pub erased_fields: Vec<String>,
    /// The shadow rules (`mode = "shadow"`) whose condition held; they did not act.
    pub rules_shadow: Vec<String>,
    /// The version of the policy that decided (absent in records older than policy
    /// versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// With a traffic share for the shadow model: `champion` (the active model decided) or
    /// `challenger` (the shadow did; `shadow` then holds the active model's verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

/// A model artifact's bytes (written by `fraud train` or `fraud import`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ModelArtifact(#[allow(dead_code)] Vec<u8>);

/// An installed model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInstalled {
    /// Its version, as answers name it.
    pub model_version: String,
    /// The role it took.
    pub role: ModelRole,
}

/// Which model an upload replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    /// The model that decides.
    Active,
    /// A model scored beside it and recorded, never deciding.
    Shadow,
}

/// The query of `POST /v1/models`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelQuery {
    /// The role to install the upload as (default: active). Any other value is refused
    /// with 400.
    #[param(value_type = Option<ModelRole>)]
    #[serde(default)]
    pub role: Option<String>,
}

/// The body of `POST /v1/entities/erase`: a card holder by card number (or token as `id`),
/// any other entity by id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// The kind of entity.
    #[schema(value_type = fraud_core::features::Entity)]
    pub kind: String,
    /// The entity's id (a card's token for `card`).
    #[serde(default)]
    pub id: Option<String>,
    /// A card holder's card number (with `kind: card` only; tokenized on arrival).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub card_number: Option<zeroize::Zeroizing<String>>,
}

/// Whether an erasure found state to erase.
#[derive(Debug, Serialize, ToSchema)]
pub struct Erased {
    /// True when the entity was held.
    pub erased: bool,
    /// The erased card's mask (erasure by card number only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub card_mask: Option<Option<String>>,
}

/// A liveness or readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` (alive), `ready`, or `degraded` (ready, but scoring with the stateless features
    /// only: entity state is unreachable and `on_unavailable = "degrade"`).
    pub status: &'static str,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Adds the bearer scheme.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API description (see [`document`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fraudscore scoring service",
        description = "Real-time transaction fraud scoring. Authenticate with `Authorization: Bearer KEY`; roles: score, analyst, admin. Errors are RFC 9457 problems (`application/problem+json`)."
    ),
    paths(
        super::http::score,
        super::http::score_batch,
        super::http::labels,
        super::http::decision,
        super::http::models,
        super::http::remove_shadow,
        super::http::erase_by_body,
        super::http::erase,
        super::http::policy,
        super::http::policy_versions,
        super::http::policy_drafts,
        super::http::policy_draft,
        super::http::policy_approve,
        super::http::policy_discard,
        super::http::healthz,
        super::http::readyz,
        super::http::metrics,
        super::http::openapi,
    ),
    components(
        schemas(super::problem::ProblemBody),
        responses(super::problem::ProblemAnswer)
    ),
    modifiers(&Security),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// The API description, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
