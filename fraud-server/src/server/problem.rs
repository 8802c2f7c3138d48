//! Errors as RFC 9457 problem details (`application/problem+json`): a status, a title, a
//! detail, and for invalid input the field and the reason. Never a card number, never a
//! stack trace.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::{ToResponse, ToSchema};

/// Every error answer, as the OpenAPI document names it: an RFC 9457 problem.
#[derive(ToResponse)]
#[response(
    description = "RFC 9457 problem: the status, a fixed title, what happened, and for invalid input the field at fault (429 and 503 carry Retry-After)",
    content_type = "application/problem+json"
)]
pub struct ProblemAnswer(#[allow(dead_code)] ProblemBody);

/// An error answer's body (`application/problem+json`, RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short, fixed title.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened (never a card number).
    pub detail: String,
    /// For invalid input: the field at fault and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// One invalid field of a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// The field (JSON name, with its path: `labels[2].reported_at`).
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

/// One failed entry of a batch answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchError {
    /// What went wrong with this transaction.
    pub error: BatchErrorDetail,
}

/// What went wrong with one transaction of a batch (the fields of a problem answer).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchErrorDetail {
    /// The status this transaction alone would have been answered with.
    pub status: u16,
    /// Short, fixed title.
    pub title: &'static str,
    /// What happened (never a card number).
    pub detail: String,
    /// The field at fault, for invalid input.
    pub field: Option<String>,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Short, fixed title.
    pub title: &'static str,
    /// What happened.
    pub detail: String,
    /// The field at fault (JSON name), for invalid input.
    pub field: Option<String>,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

impl Problem {
    /// A problem with `status`.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400 for a body that is not valid input, naming the field.
    pub fn invalid(e: fraud_core::transaction::TransactionError) -> Self {
        let status = if e.malformed {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Problem {
            field: Some(e.field.clone()),
            ..Problem::new(status, "invalid transaction", e.to_string())
        }
    }

    /// 400 with a field.
    pub fn bad_field(field: &str, detail: impl Into<String>) -> Self {
        Problem {
            field: Some(field.to_string()),
            ..Problem::new(StatusCode::BAD_REQUEST, "invalid request", detail)
        }
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 503 with Retry-After.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem {
            retry_after: Some(1),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable",
                detail,
            )
        }
    }

    /// 500: a fault of the service, not of the request.
    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error", detail)
    }

    /// The decision log failed: nothing can be acknowledged.
    pub fn from_log(e: super::decisions::LogError) -> Self {
        Problem::unavailable(format!("the decision log cannot be written: {e}"))
    }
}

impl Problem {
    /// The detail as sent: every card number removed (the one sanitizer at the edge: serde's
    /// messages, ids and paths quoted in a detail pass through it).
    pub fn public_detail(&self) -> String {
        fraud_core::pii::redact(&self.detail).into_owned()
    }

    /// The field as sent (a field name can be a card number sent as an unknown field).
    pub fn public_field(&self) -> Option<String> {
        self.field
            .as_deref()
            .map(|f| fraud_core::pii::redact(f).into_owned())
    }

    /// The error as one entry of a batch answer: `{"error": {status, title, detail, field}}`,
    /// sanitized as a whole answer is.
    pub fn batch_entry(&self) -> BatchError {
        BatchError {
            error: BatchErrorDetail {
                status: self.status.as_u16(),
                title: self.title,
                detail: self.public_detail(),
                field: self.public_field(),
            },
        }
    }

    /// The body of the answer (sanitized).
    pub fn body(&self) -> ProblemBody {
        let detail = self.public_detail();
        let errors = self.public_field().map(|field| {
            vec![FieldError {
                field,
                reason: detail.clone(),
            }]
        });
        ProblemBody {
            kind: "about:blank",
            title: self.title,
            status: self.status.as_u16(),
            detail,
            errors,
        }
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        r.content_type("application/problem+json");
        if let Some(s) = self.retry_after {
            r.insert_header(("Retry-After", s.to_string()));
        }
        match serde_json::to_string(&self.body()) {
            Ok(body) => r.body(body),
            // Unreachable (plain fields), but never a panic at the edge.
            Err(_) => r.body(r#"{"type":"about:blank","title":"internal error","status":500}"#),
        }
    }
}
