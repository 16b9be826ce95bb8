//! `GET /`: the Developers page itself: plan, API keys, webhooks, and the
//! app's side (simulated events, the API, the local receiver).

use std::fmt::Write;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use keyhook::{Endpoint, EventType, KeyPage, KeyQuery};

use crate::csrf::{Csrf, Form};
use crate::errors::{PageError, blocking, failed};
use crate::html::{csrf_field, esc, notice, respond, time};
use crate::once::Makes;
use crate::{AppState, keys, receiver, webhooks};

/// What the page reads from keyhook, in one blocking call.
struct Data {
    plan_paid: bool,
    keys: KeyPage,
    catalogue: Vec<EventType>,
    endpoints: Vec<Endpoint>,
}

/// Messages for `?notice=`: fixed texts, so nothing from the URL reaches
/// the page.
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "plan_paid" => "Switched to the Pro plan: API keys work again.",
        "plan_free" => "Switched to the Free plan: API keys are locked; webhooks keep working.",
        "key_updated" => "API key saved.",
        "key_revoked" => "API key revoked. It can never be used again.",
        "webhook_deleted" => "Webhook deleted. It will receive no more events.",
        "simulated_conversion" => "A conversion was created: conversion.created was emitted.",
        "simulated_affiliate" => "An affiliate was added: affiliate.created was emitted.",
        "simulated_payout" => "A payout batch was created: payout.created was emitted.",
        _ => return None,
    })
}

/// `GET /`.
pub async fn page(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let query = Form::parse(query.unwrap_or_default().as_bytes());
    let cursor = query.get("keys_cursor").map(str::to_owned);
    let s = state.clone();
    let data = blocking(move || {
        Ok(Data {
            plan_paid: s.keys.api_keys_enabled(&s.org)?,
            keys: s.keys.list_page(
                &s.org,
                &KeyQuery {
                    limit: 20,
                    cursor,
                    ..KeyQuery::default()
                },
            )?,
            catalogue: s.registry.event_types()?,
            endpoints: s.registry.list(&s.org)?,
        })
    })
    .await
    .map_err(failed("Could not load the Developers page"))?;

    let mut body = String::new();
    body.push_str(
        r#"<h1>Developers</h1>
<p class="lead">Access your referral data programmatically and receive real-time notifications with API keys and webhooks.
API keys are available on paid plans. Webhooks are available on all plans.</p>"#,
    );
    if let Some(text) = query.get("notice").and_then(notice_text) {
        body.push_str(&notice("info", text));
    }
    body.push_str(&plan_section(&token, data.plan_paid));
    body.push_str(&keys::section(
        &token,
        &state.once.issue(&token, Makes::ApiKey),
        data.plan_paid,
        &data.keys,
    ));
    body.push_str(&webhooks::section(
        &token,
        &state.once.issue(&token, Makes::SigningSecret),
        &state.receiver_url,
        &data.catalogue,
        &data.endpoints,
    ));
    body.push_str(&app_section(&state, &token));
    Ok(respond(StatusCode::OK, "Developers", &body))
}

fn plan_section(token: &str, paid: bool) -> String {
    let (current, other, other_value, effect) = if paid {
        (
            "Pro (paid)",
            "Switch to the Free plan",
            "free",
            "API keys are included.",
        )
    } else {
        (
            "Free",
            "Upgrade to the Pro plan",
            "paid",
            "API keys are not included: existing keys are kept but refused.",
        )
    };
    format!(
        r#"<section class="card" id="plan"><h2>Plan</h2>
<p>This organization is on the <strong>{current}</strong> plan. {effect}</p>
<form method="post" action="/plan">{csrf}<input type="hidden" name="plan" value="{other_value}">
<button type="submit" class="secondary" id="switch-plan">{other}</button>
<span class="muted">(a demo switch: a real host calls <code>set_api_keys_enabled</code> from its billing code)</span></form>
</section>"#,
        csrf = csrf_field(token),
    )
}

fn app_section(state: &AppState, token: &str) -> String {
    let csrf = csrf_field(token);
    let mut received = String::new();
    let recent = receiver::recent(state);
    if recent.is_empty() {
        received.push_str(r#"<p class="muted">Nothing received yet.</p>"#);
    } else {
        received.push_str(
            "<table><thead><tr><th>Received</th><th>Event type</th><th>webhook-id</th><th>Signature</th><th>Answered</th></tr></thead><tbody>",
        );
        for r in recent {
            let _ = write!(
                received,
                r#"<tr><td>{}</td><td><code>{}</code></td><td class="mono">{}</td><td>{}</td><td>{}</td></tr>"#,
                time(r.at),
                esc(&r.event_type),
                esc(&r.webhook_id),
                if r.verified {
                    r#"<span class="badge ok">verified</span>"#
                } else {
                    r#"<span class="badge bad">invalid</span>"#
                },
                r.answered,
            );
        }
        received.push_str("</tbody></table>");
    }
    format!(
        r#"<section class="card" id="app"><h2>Your app's side (demo)</h2>
<p>Things happen in your app; subscribed webhooks hear about them.</p>
<form method="post" action="/simulate" class="inline">{csrf}<input type="hidden" name="kind" value="conversion"><button type="submit" id="simulate-conversion">Simulate a conversion</button></form>
<form method="post" action="/simulate" class="inline">{csrf}<input type="hidden" name="kind" value="affiliate"><button type="submit" id="simulate-affiliate">Simulate a new affiliate</button></form>
<form method="post" action="/simulate" class="inline">{csrf}<input type="hidden" name="kind" value="payout"><button type="submit" id="simulate-payout">Simulate a payout</button></form>
<h3>Custom Analytics: the API</h3>
<p>Use the API to pull conversion and revenue data into your own analytics tools or dashboards.
Each route needs a key with its scope:</p>
<pre>curl -H "Authorization: Bearer $VIRALREF_API_KEY" {base}/v1/conversions   # conversions:read
curl -H "Authorization: Bearer $VIRALREF_API_KEY" {base}/v1/affiliates    # affiliates:read
curl -H "Authorization: Bearer $VIRALREF_API_KEY" {base}/v1/payouts       # payouts:read
curl -H "Authorization: Bearer $VIRALREF_API_KEY" {base}/v1/me            # any key</pre>
<h3>Local receiver</h3>
<p>This demo receives its own webhooks at <code>{receiver}</code> and checks each signature.
Add <code>?status=500</code> to an endpoint's URL to watch failures and retries.</p>
{received}
</section>"#,
        base = esc(state.receiver_url.trim_end_matches("/receiver")),
        receiver = esc(&state.receiver_url),
    )
}
