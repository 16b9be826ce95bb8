//! The host app's side: its own data (conversions, affiliates, payouts), a
//! button that makes some and emits the matching events, and the `/v1` API
//! that customers call with their keys ("Custom Analytics").

use axum::http::StatusCode;
use axum::response::{Redirect, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{ApiCaller, ApiError, json as json_response};
use crate::csrf::CsrfForm;
use crate::errors::{PageError, blocking, failed};

/// The host's own records (a real app keeps them in its database).
pub struct HostData {
    conversions: Vec<Value>,
    affiliates: Vec<Value>,
    payouts: Vec<Value>,
    next: u32,
}

impl HostData {
    pub fn seeded() -> HostData {
        HostData {
            conversions: vec![
                json!({"id": "cv_1001", "affiliate_id": "af_ana", "amount_cents": 4900, "currency": "USD", "status": "approved"}),
                json!({"id": "cv_1002", "affiliate_id": "af_ben", "amount_cents": 12900, "currency": "USD", "status": "pending"}),
            ],
            affiliates: vec![
                json!({"id": "af_ana", "email": "ana@example.com", "status": "active"}),
                json!({"id": "af_ben", "email": "ben@example.com", "status": "active"}),
            ],
            payouts: vec![],
            next: 2000,
        }
    }

    /// Records a new object of `kind` and returns its event type and data.
    fn make(&mut self, kind: &str) -> Option<(&'static str, Value)> {
        self.next += 1;
        let n = self.next;
        let (event_type, record, list) = match kind {
            "conversion" => (
                "conversion.created",
                json!({"id": format!("cv_{n}"), "affiliate_id": "af_ana",
                       "amount_cents": 1000 + (n % 7) * 1300, "currency": "USD", "status": "pending"}),
                &mut self.conversions,
            ),
            "affiliate" => (
                "affiliate.created",
                json!({"id": format!("af_{n}"), "email": format!("referrer{n}@example.com"), "status": "active"}),
                &mut self.affiliates,
            ),
            "payout" => {
                let total: i64 = self
                    .conversions
                    .iter()
                    .filter_map(|c| c["amount_cents"].as_i64())
                    .sum();
                (
                    "payout.created",
                    json!({"id": format!("po_{n}"), "amount_cents": total / 10, "currency": "USD",
                           "affiliates": self.affiliates.len()}),
                    &mut self.payouts,
                )
            }
            _ => return None,
        };
        list.push(record.clone());
        Some((event_type, record))
    }
}

/// `POST /simulate`: the host's own event (a conversion, an affiliate, a
/// payout), emitted as a webhook event.
pub async fn simulate(
    axum::extract::State(state): axum::extract::State<AppState>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    const WHAT: &str = "Could not simulate the event";
    let kind = form.text("kind");
    let made = state.host.lock().expect("host data lock").make(kind);
    let Some((event_type, data)) = made else {
        return Err(PageError::bad_input(
            WHAT,
            format!("Unknown kind {kind:?}: choose conversion, affiliate or payout."),
        ));
    };
    let s = state.clone();
    blocking(move || s.dispatcher.emit(&s.org, event_type, &data))
        .await
        .map_err(failed(WHAT))?;
    Ok(Redirect::to(&format!("/?notice=simulated_{kind}#app")))
}

/// `GET /v1/me`: any valid key; who is calling.
pub async fn api_me(caller: ApiCaller) -> Response {
    let k = &caller.0;
    json_response(
        StatusCode::OK,
        &json!({"org": k.org, "key": {"id": k.id, "name": k.name, "scopes": k.scopes, "environment": k.environment}}),
    )
}

fn list(state: &AppState, caller: &ApiCaller, scope: &'static str) -> Result<Response, ApiError> {
    let key = caller.require(scope)?;
    // The key decides the tenant: this demo has one organization's data.
    let data = if key.org == state.org {
        let host = state.host.lock().expect("host data lock");
        match scope {
            "conversions:read" => host.conversions.clone(),
            "affiliates:read" => host.affiliates.clone(),
            _ => host.payouts.clone(),
        }
    } else {
        Vec::new()
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"org": key.org, "data": data}),
    ))
}

/// `GET /v1/conversions` (scope `conversions:read`).
pub async fn api_conversions(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: ApiCaller,
) -> Result<Response, ApiError> {
    list(&state, &caller, "conversions:read")
}

/// `GET /v1/affiliates` (scope `affiliates:read`).
pub async fn api_affiliates(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: ApiCaller,
) -> Result<Response, ApiError> {
    list(&state, &caller, "affiliates:read")
}

/// `GET /v1/payouts` (scope `payouts:read`).
pub async fn api_payouts(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: ApiCaller,
) -> Result<Response, ApiError> {
    list(&state, &caller, "payouts:read")
}
