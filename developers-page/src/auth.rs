//! The API-key check for `/v1`: one extractor and one scope check. Copy
//! this file into an axum app; it needs only an [`ApiKeyStore`] reachable
//! from the state (here through [`AppState`]).
//!
//! | request                                       | answer |
//! |-----------------------------------------------|--------|
//! | valid key (with the route's scope)            | the handler runs with [`ApiCaller`] |
//! | no or garbled `Authorization`, malformed, unknown, revoked, expired key | `401` `{"error":"invalid_api_key",...}` and `WWW-Authenticate: Bearer` |
//! | the organization's plan has no API keys       | `403` `{"error":"plan_inactive",...}` |
//! | key without the route's scope                 | `403` `{"error":"insufficient_scope","required":...}` |
//! | database trouble                              | `503` or `500`, details in the server log only |

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyhook::{ApiKeyStore, Rejection, VerifiedKey};
use serde_json::json;

use crate::AppState;
use crate::errors::{blocking, log_error, status_of};

/// The caller of an API route, authenticated by `Authorization: Bearer <key>`.
/// The key decides the organization: handlers act for `caller.org` only,
/// never for an id taken from the request.
#[derive(Debug)]
pub struct ApiCaller(pub VerifiedKey);

impl ApiCaller {
    /// Refuses the request unless the key has `scope`.
    ///
    /// # Errors
    ///
    /// `403 insufficient_scope`.
    pub fn require(&self, scope: &'static str) -> Result<&VerifiedKey, ApiError> {
        if self.0.has_scope(scope) {
            Ok(&self.0)
        } else {
            Err(ApiError {
                status: StatusCode::FORBIDDEN,
                body: json!({
                    "error": "insufficient_scope",
                    "message": format!("this API key lacks the {scope} scope"),
                    "required": scope,
                }),
                www_authenticate: Some(format!(
                    r#"Bearer error="insufficient_scope", scope="{scope}""#
                )),
            })
        }
    }
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = bearer_token(parts.headers.get(header::AUTHORIZATION))?;
        let keys: ApiKeyStore = state.keys.clone();
        // verify reads SQLite (and writes last_used_at once a minute): off
        // the async threads.
        match blocking(move || keys.verify(&key)).await {
            Ok(caller) => Ok(ApiCaller(caller)),
            Err(e) => Err(match e.rejection() {
                Some(Rejection::PlanInactive) => ApiError {
                    status: StatusCode::FORBIDDEN,
                    body: json!({
                        "error": "plan_inactive",
                        "message": Rejection::PlanInactive.to_string(),
                    }),
                    www_authenticate: None,
                },
                // Each reason gets its own message, so the caller knows what to fix.
                Some(rejection) => unauthorized(&rejection.to_string(), rejection.as_str()),
                None => {
                    log_error(&e);
                    let status = status_of(&e);
                    let status = if status == StatusCode::SERVICE_UNAVAILABLE {
                        status
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    ApiError {
                        status,
                        body: json!({"error": "internal_error"}),
                        www_authenticate: None,
                    }
                }
            }),
        }
    }
}

/// The key in `Authorization: Bearer <key>` (the scheme is case-insensitive).
fn bearer_token(value: Option<&HeaderValue>) -> Result<String, ApiError> {
    let Some(value) = value else {
        return Err(unauthorized(
            "missing Authorization header; send Authorization: Bearer <API key>",
            "missing",
        ));
    };
    let value = value.to_str().unwrap_or("");
    match value.trim().split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(key.trim().to_owned())
        }
        _ => Err(unauthorized(
            "the Authorization header must be: Bearer <API key>",
            "malformed_header",
        )),
    }
}

fn unauthorized(message: &str, reason: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        body: json!({"error": "invalid_api_key", "reason": reason, "message": message}),
        www_authenticate: Some("Bearer".to_owned()),
    }
}

/// A JSON error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    www_authenticate: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &self.body);
        if let Some(v) = self
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
