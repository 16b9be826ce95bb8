//! The local receiver: what a customer's server does with a webhook, on
//! this same server so the demo's deliveries succeed without internet. It
//! checks the Standard Webhooks signature with the endpoint's current
//! secrets and remembers the last requests for the page to show.
//!
//! `?status=500` (any 200–599) makes it answer with that status, to watch
//! retries, failures and redelivery.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::AppState;
use crate::auth::json;
use crate::csrf::Form;
use crate::errors::blocking;

/// How many received requests the page shows.
const KEEP: usize = 10;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: SystemTime,
    pub webhook_id: String,
    pub event_type: String,
    pub verified: bool,
    pub answered: u16,
}

/// `POST /receiver`.
pub async fn receive(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = Form::parse(query.unwrap_or_default().as_bytes())
        .get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let s = state.clone();
    let signed_body = body.clone();
    // The receiver is a customer's server and knows its endpoints' secrets;
    // here it asks keyhook for them, once per request.
    let verified = blocking(move || {
        for endpoint in s.registry.list(&s.org)? {
            if !endpoint.url.starts_with(&s.receiver_url) {
                continue;
            }
            let secrets = s.registry.signing_secrets(&s.org, &endpoint.id)?;
            let ok = keyhook::signing::verify(
                id.as_deref(),
                timestamp.as_deref(),
                signature.as_deref(),
                &signed_body,
                &secrets,
                SystemTime::now(),
                keyhook::signing::DEFAULT_TOLERANCE,
            )
            .is_ok();
            if ok {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .unwrap_or(false);
    let event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let status = match (verified, asked) {
        (false, _) => StatusCode::UNAUTHORIZED,
        (true, Some(s)) => StatusCode::from_u16(s).unwrap_or(StatusCode::OK),
        (true, None) => StatusCode::OK,
    };
    {
        let mut received = state.received.lock().expect("receiver lock");
        received.push_front(Received {
            at: SystemTime::now(),
            webhook_id: header("webhook-id").unwrap_or_default(),
            event_type,
            verified,
            answered: status.as_u16(),
        });
        received.truncate(KEEP);
    }
    let body = if verified {
        json!({"received": true, "signature": "verified"})
    } else {
        json!({"received": false, "error": "signature did not verify with any endpoint secret"})
    };
    json(status, &body)
}

/// The last requests received, newest first.
pub fn recent(state: &AppState) -> Vec<Received> {
    state
        .received
        .lock()
        .expect("receiver lock")
        .iter()
        .cloned()
        .collect()
}
