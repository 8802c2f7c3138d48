//! Errors as RFC 9457 problem details (`application/problem+json`): a status, a title, a
//! detail, and for invalid input the field and the reason. Never a card number, never a
//! stack trace.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

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
    pub fn batch_entry(&self) -> serde_json::Value {
        json!({
            "error": {
                "status": self.status.as_u16(),
                "title": self.title,
                "detail": self.public_detail(),
                "field": self.public_field(),
            }
        })
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let detail = self.public_detail();
        let mut body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": detail,
        });
        if let Some(f) = self.public_field() {
            body["errors"] = json!([{ "field": f, "reason": detail }]);
        }
        let mut r = HttpResponse::build(self.status);
        r.content_type("application/problem+json");
        if let Some(s) = self.retry_after {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.body(body.to_string())
    }
}
