//! [`ApiError`]: every refusal of the management API, answered with the
//! crate's error body (`{"success": false, "error": {"code", "message",
//! "details"}}`) and its stable [`ErrorCode`].

use std::borrow::Cow;

use apikey::{Error, ErrorCode};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// A refusal of the management API: a stable [`ErrorCode`] (which fixes the
/// HTTP status), a key-free message and, for a bad request, the field it
/// names.
///
/// ```
/// use apikey_axum::ApiError;
/// let e = ApiError::field("name", "name must not contain markup");
/// assert_eq!(e.code().as_str(), "INVALID_REQUEST");
/// assert_eq!(e.status(), 400);
/// assert_eq!(e.field_name(), Some("name"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
    field: Option<String>,
    /// `INSUFFICIENT_SCOPE`: the scope lacking.
    required: Option<String>,
    /// Headers of the refusal beyond the body's (`Retry-After`,
    /// `X-RateLimit-*`), from the gate that refused the caller's key.
    headers: Vec<(&'static str, String)>,
    /// The `details` of a gate refusal's body (`expired_at`, `reason`,
    /// `retry_after`, ...), answered as they are.
    details: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    /// An error with `code` and the code's fixed public message.
    pub fn code_only(code: ErrorCode) -> Self {
        Self {
            code,
            message: Cow::Borrowed(code.message()),
            field: None,
            required: None,
            headers: Vec::new(),
            details: None,
        }
    }

    /// Adds the `Retry-After` and `X-RateLimit-*` headers of `response` (a
    /// [`Gate`](apikey::web::Gate) refusal) to this error's answer, and the
    /// `details` of its body (`expired_at`, `reason`, `retry_after`, ...:
    /// docs/errors.md), so a refusal reads the same here as at the web edge.
    pub fn with_headers_of(mut self, response: &apikey::web::ErrorResponse) -> Self {
        self.headers = response
            .headers
            .iter()
            .filter(|(n, _)| *n == "retry-after" || n.starts_with("x-ratelimit-"))
            .cloned()
            .collect();
        self.details = serde_json::from_str::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|mut body| match body["error"]["details"].take() {
                serde_json::Value::Object(details) => Some(Box::new(details)),
                _ => None,
            });
        self
    }

    /// 400 `INVALID_REQUEST` naming `field` (a JSON field, a query
    /// parameter, `body` for the body as a whole).
    pub fn field(field: impl Into<String>, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
            field: Some(field.into()),
            required: None,
            headers: Vec::new(),
            details: None,
        }
    }

    /// 400 `INVALID_SCOPE` naming the `permissions` field.
    pub fn invalid_scope(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: ErrorCode::InvalidScope,
            message: message.into(),
            field: Some("permissions".into()),
            required: None,
            headers: Vec::new(),
            details: None,
        }
    }

    /// 403 `INSUFFICIENT_SCOPE`: the caller asked for more than it holds
    /// (`field` names what: `permissions`, `environment`, `expires_at`,
    /// `ip_allowlist`, `owner`, `plan`), or lacks `required` to call the
    /// management API at all.
    pub fn escalation(field: &str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: ErrorCode::InsufficientScope,
            message: message.into(),
            field: Some(field.to_owned()),
            required: None,
            headers: Vec::new(),
            details: None,
        }
    }

    /// 404 `KEY_NOT_FOUND`: no such key, or a key of an owner the caller
    /// may not manage (never 403, so existence does not leak).
    pub fn not_found() -> Self {
        Self::code_only(ErrorCode::KeyNotFound)
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> u16 {
        self.code.http_status()
    }

    /// The field named, for a bad request.
    pub fn field_name(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The public message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for ApiError {
    /// Library errors keep their code; only `INVALID_REQUEST` and
    /// `INVALID_STATE` carry the library's own key-free explanation, every
    /// other code its fixed public message (no store error text).
    fn from(err: Error) -> Self {
        let code = err.code();
        let (message, field, required) = match &err {
            Error::InvalidInput(m) => (Cow::Owned(m.clone()), None, None),
            Error::InvalidState(m) => (Cow::Borrowed(*m), None, None),
            Error::KeyLimitReached { limit } => (
                Cow::Owned(format!(
                    "the owner already has the maximum of {limit} keys (disabled keys count; revoke or delete one)"
                )),
                None,
                None,
            ),
            Error::InvalidScope { .. } => (
                Cow::Borrowed("a permission is not a valid scope"),
                Some("permissions".to_owned()),
                None,
            ),
            Error::InsufficientScope { required } => {
                (Cow::Borrowed(code.message()), None, Some(required.clone()))
            }
            _ => (Cow::Borrowed(code.message()), None, None),
        };
        Self {
            code,
            message,
            field,
            required,
            headers: Vec::new(),
            details: None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    success: bool,
    error: Obj<'a>,
}

#[derive(Serialize)]
struct Obj<'a> {
    code: ErrorCode,
    message: &'a str,
    details: Details<'a>,
}

#[derive(Serialize)]
struct Details<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required: Option<&'a str>,
    /// A gate refusal's own details (they name `required` themselves).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    gate: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            success: false,
            error: Obj {
                code: self.code,
                message: &self.message,
                details: match &self.details {
                    Some(gate) => Details {
                        field: self.field.as_deref(),
                        required: None,
                        gate: Some(gate),
                    },
                    None => Details {
                        field: self.field.as_deref(),
                        required: self.required.as_deref(),
                        gate: None,
                    },
                },
            },
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, text).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.code.http_status() == 401 {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="api""#),
            );
        }
        if self.code == ErrorCode::StoreUnavailable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(*name, value);
            }
        }
        response
    }
}
