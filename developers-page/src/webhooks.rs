//! Webhooks: the section of the Developers page, create (secret shown
//! once), the endpoint page (edit, disable/enable, rotate, test event,
//! replay, delete) and delivery history, per endpoint and for the
//! organization.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Redirect, Response};
use keyhook::{
    Delivery, DeliveryState, Endpoint, EndpointOptions, EndpointStats, EndpointUpdate, EventType,
    HistoryPage, HistoryQuery,
};

use crate::AppState;
use crate::csrf::{Csrf, CsrfForm, Form};
use crate::errors::{PageError, blocking, failed};
use crate::html::{
    csrf_field, datetime_local, duration, esc, notice, once_field, options, parse_datetime_local,
    respond, secret_field, time, url_value,
};
use crate::once::Makes;

const PAGE_SIZE: usize = 20;

const ROTATION_CHOICES: &[(&str, &str)] = &[
    ("0", "No grace: the old secret stops signing now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
];

/// The webhooks section of the Developers page; `once` is the create form's
/// single-use nonce.
pub fn section(
    token: &str,
    once: &str,
    receiver_url: &str,
    catalogue: &[EventType],
    endpoints: &[Endpoint],
) -> String {
    let mut out = format!(
        r#"<section class="card" id="webhooks"><h2>Webhooks</h2>
<p>Webhooks send real-time HTTP notifications to your server when events happen in your organization.</p>
<details class="create" id="create-webhook-details"{open}><summary id="create-webhook-open">Create Webhook</summary>
<form method="post" action="/webhooks" id="create-webhook-form">{csrf}{once}
<div class="field"><label for="webhook-url">Endpoint URL (the URL on your server that will receive events)</label>
<input type="url" id="webhook-url" name="url" required value="{receiver}" placeholder="https://example.com/webhooks"></div>
<p class="muted">For this demo, <code>{receiver}</code> is a local receiver that checks signatures.</p>
{types}
<div class="field"><label for="webhook-description">Description (optional)</label>
<input type="text" id="webhook-description" name="description" maxlength="1000"></div>
<button type="submit" id="create-webhook">Create</button></form></details>"#,
        open = if endpoints.is_empty() { " open" } else { "" },
        csrf = csrf_field(token),
        once = once_field(once),
        receiver = esc(receiver_url),
        types = type_boxes(catalogue, &[], "new"),
    );
    if endpoints.is_empty() {
        out.push_str(r#"<p class="muted">No webhooks yet.</p>"#);
    } else {
        out.push_str(r#"<table id="webhooks-table"><thead><tr><th>Endpoint URL</th><th>Event types</th><th>Status</th><th>Created</th><th></th></tr></thead><tbody>"#);
        for e in endpoints {
            let _ = write!(
                out,
                r#"<tr data-endpoint-id="{id}"><td class="mono">{url}</td><td>{types}</td><td>{status}</td><td>{created}</td><td><a href="/webhooks/{id}" aria-label="Manage {url}">Manage</a></td></tr>"#,
                id = esc(&e.id),
                url = esc(&e.url),
                types = subscribed(e),
                status = endpoint_status(e),
                created = time(e.created_at),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str(
        r#"<details><summary>Webhook delivery</summary><ul>
<li>Webhooks are sent as HTTP POST requests with a JSON body, signed (Standard Webhooks: <code>webhook-id</code>, <code>webhook-timestamp</code>, <code>webhook-signature</code>)</li>
<li>We expect a 2xx response within 10 seconds</li>
<li>Failed deliveries are retried with exponential backoff</li>
<li>You can view delivery history in the webhook settings</li></ul></details>
<p><a href="/deliveries" id="org-log">Delivery log for the whole organization</a></p></section>"#,
    );
    out
}

fn subscribed(e: &Endpoint) -> String {
    if e.all_event_types {
        return "all event types".into();
    }
    e.event_types
        .iter()
        .map(|t| format!("<code>{}</code>", esc(t)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn endpoint_status(e: &Endpoint) -> String {
    if e.enabled {
        r#"<span class="badge ok">enabled</span>"#.into()
    } else {
        let why = e
            .disabled_reason
            .as_deref()
            .map(|r| format!(": {}", esc(r)))
            .unwrap_or_default();
        format!(r#"<span class="badge bad">disabled{why}</span>"#)
    }
}

/// Event-type checkboxes with the catalogue's descriptions. Archived types
/// are offered only where already subscribed.
fn type_boxes(catalogue: &[EventType], checked: &[String], prefix: &str) -> String {
    let mut out = String::from("<fieldset><legend>Event types</legend>");
    for (i, t) in catalogue.iter().enumerate() {
        let on = checked.contains(&t.name);
        if t.archived && !on {
            continue;
        }
        let note = match (t.deprecated, t.archived) {
            (_, true) => r#" <span class="badge bad">archived</span>"#,
            (true, _) => r#" <span class="badge warn">deprecated</span>"#,
            _ => "",
        };
        let _ = write!(
            out,
            r#"<div class="check"><input type="checkbox" id="{prefix}-type-{i}" name="event_types" value="{name}"{on}> <label for="{prefix}-type-{i}"><code>{name}</code> — {description}{note}</label></div>"#,
            name = esc(&t.name),
            on = if on { " checked" } else { "" },
            description = esc(&t.description),
        );
    }
    out.push_str("</fieldset>");
    out
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// `POST /webhooks`: creates an endpoint and shows its secret, once. A
/// second submission of the same form creates nothing and answers 409.
pub async fn create(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    CsrfForm(form): CsrfForm,
) -> Result<Response, PageError> {
    let claim = state.once.claim(&token, &form, Makes::SigningSecret)?;
    let url = form.text("url").to_owned();
    let types = form.all("event_types");
    let options = EndpointOptions {
        description: optional(form.text("description")),
        ..EndpointOptions::default()
    };
    let s = state.clone();
    let created = blocking(move || claim.settle(s.registry.create(&s.org, &url, &types, options)))
        .await
        .map_err(failed("Could not create the webhook"))?;
    Ok(show_secret_once(
        "Webhook created",
        &created.endpoint,
        &created.secret.expose(),
    ))
}

/// The one page that ever shows a signing secret.
fn show_secret_once(title: &str, endpoint: &Endpoint, secret: &str) -> Response {
    let body = format!(
        r#"<h1>{title}</h1>
<p>Endpoint <code>{url}</code> receives {types}.</p>
{warning}
{field}
<p>Each webhook request includes a signature header that you should verify to confirm the request came from us
and wasn't tampered with: check <code>webhook-signature</code> against <code>webhook-id</code>,
<code>webhook-timestamp</code> and the raw body with this secret (any Standard Webhooks library does it).</p>
<p><a href="/webhooks/{id}" id="open-webhook">Continue to the webhook's settings</a></p>"#,
        title = esc(title),
        url = esc(&endpoint.url),
        types = subscribed(endpoint),
        warning = notice(
            "secret",
            "<strong>Copy the signing secret now — it is shown only once here.</strong> \
             You need it to verify signatures; if you lose it, rotate it."
        ),
        field = secret_field("new-webhook-secret", "Signing secret", secret),
        id = esc(&endpoint.id),
    );
    respond(StatusCode::OK, title, &body)
}

/// History filters from a query string.
struct Filters {
    state: Option<DeliveryState>,
    event_type: Option<String>,
    cursor: Option<String>,
}

impl Filters {
    fn parse(query: &Form) -> Result<Filters, PageError> {
        let state = match query.text("state") {
            "" => None,
            s => Some(s.parse::<DeliveryState>().map_err(|_| {
                PageError::bad_input(
                    "Could not filter the history",
                    format!("Unknown state {s:?}: choose pending, delivered or failed."),
                )
            })?),
        };
        Ok(Filters {
            state,
            event_type: optional(query.text("type")),
            cursor: optional(query.text("cursor")),
        })
    }

    fn query(&self) -> HistoryQuery {
        HistoryQuery {
            state: self.state,
            event_type: self.event_type.clone(),
            limit: PAGE_SIZE,
            cursor: self.cursor.clone(),
            ..HistoryQuery::default()
        }
    }

    /// The filter part of a link, for the next page.
    fn link(&self) -> String {
        let mut q = String::new();
        if let Some(s) = self.state {
            let _ = write!(q, "state={}&", s.as_str());
        }
        if let Some(t) = &self.event_type {
            let _ = write!(q, "type={}&", url_value(t));
        }
        q
    }

    fn form(&self, action: &str, catalogue: &[EventType]) -> String {
        let state = self.state.map_or("", DeliveryState::as_str);
        let types = std::iter::once(("", "All event types"))
            .chain(catalogue.iter().map(|t| (t.name.as_str(), t.name.as_str())));
        format!(
            r#"<form method="get" action="{action}" class="filters">
<label for="filter-state">State</label> <select id="filter-state" name="state">{states}</select>
<label for="filter-type">Event type</label> <select id="filter-type" name="type">{types}</select>
<button type="submit" class="secondary">Filter</button></form>"#,
            states = options(
                std::iter::once(("", "All states")).chain(
                    [
                        (DeliveryState::Pending, "Pending"),
                        (DeliveryState::Delivered, "Delivered"),
                        (DeliveryState::Failed, "Failed"),
                    ]
                    .map(|(s, label)| (s.as_str(), label))
                ),
                state
            ),
            types = options(types, self.event_type.as_deref().unwrap_or("")),
        )
    }
}

/// A history table; `from` says where redelivery returns (`org` or `endpoint`).
fn history_table(
    token: &str,
    page: &HistoryPage,
    from: &str,
    base: &str,
    filters: &Filters,
) -> String {
    if page.deliveries.is_empty() {
        return r#"<p class="muted" id="history-empty">No deliveries match.</p>"#.into();
    }
    let endpoint_column = from == "org";
    let mut out = format!(
        r#"<table id="history"><thead><tr><th>Event</th>{ep}<th>Created</th><th>Status</th><th>Response</th><th>Duration</th><th>Attempts</th><th></th></tr></thead><tbody>"#,
        ep = if endpoint_column {
            "<th>Endpoint</th>"
        } else {
            ""
        },
    );
    for d in &page.deliveries {
        out.push_str(&delivery_row(token, d, from, endpoint_column));
    }
    out.push_str("</tbody></table>");
    if let Some(cursor) = &page.next_cursor {
        let _ = write!(
            out,
            r#"<nav class="pager"><a href="{base}?{filters}">Newest</a> · <a href="{base}?{filters}cursor={cursor}" id="older">Older →</a></nav>"#,
            filters = filters.link(),
            cursor = url_value(cursor),
        );
    }
    out
}

fn delivery_row(token: &str, d: &Delivery, from: &str, endpoint_column: bool) -> String {
    let (class, next) = match d.state {
        DeliveryState::Delivered => ("ok", String::new()),
        DeliveryState::Failed => ("bad", String::new()),
        DeliveryState::Pending => (
            "warn",
            d.next_attempt_at
                .map(|t| format!(r#"<br><span class="muted">next try {}</span>"#, time(t)))
                .unwrap_or_default(),
        ),
    };
    let status = format!(
        r#"<span class="badge {class}">{}</span>{next}"#,
        d.state.as_str()
    );
    let last = d.attempts.last();
    let response = match last {
        None => "—".to_owned(),
        Some(a) => match (a.status_code, a.error) {
            (Some(code), _) => format!(r#"<span class="code">{code}</span>"#),
            (None, Some(e)) => esc(e.as_str()),
            (None, None) => "—".to_owned(),
        },
    };
    let mut attempts = format!(
        "<details><summary>{} attempt{}</summary><ol>",
        d.attempts.len(),
        if d.attempts.len() == 1 { "" } else { "s" }
    );
    for a in &d.attempts {
        let outcome = match (a.status_code, a.error) {
            (Some(code), None) => format!("HTTP {code}"),
            (Some(code), Some(e)) => format!("HTTP {code} ({})", e.as_str()),
            (None, Some(e)) => e.as_str().to_owned(),
            (None, None) => "no answer".to_owned(),
        };
        let excerpt = String::from_utf8_lossy(&a.response_excerpt);
        let excerpt: String = excerpt.chars().take(500).collect();
        let _ = write!(
            attempts,
            r#"<li>{at}{manual}: {outcome} in {took}{body}</li>"#,
            at = time(a.at),
            manual = if a.manual { " (manual)" } else { "" },
            outcome = esc(&outcome),
            took = duration(a.duration),
            body = if excerpt.is_empty() {
                String::new()
            } else {
                format!("<pre>{}</pre>", esc(&excerpt))
            },
        );
    }
    attempts.push_str("</ol></details>");
    format!(
        r#"<tr data-delivery-id="{id}" data-state="{state}"><td><code>{event_type}</code>{test}<br><span class="mono muted">{event_id}</span></td>{endpoint}<td>{created}</td><td>{status}</td><td>{response}</td><td>{took}</td><td>{attempts}</td>
<td><form method="post" action="/deliveries/{id}/redeliver">{csrf}<input type="hidden" name="from" value="{from}"><button type="submit" class="secondary" aria-label="Redeliver {event_id}">Redeliver</button></form></td></tr>"#,
        id = esc(&d.id),
        state = d.state.as_str(),
        event_type = esc(&d.event_type),
        test = if d.test {
            r#" <span class="badge">test</span>"#
        } else {
            ""
        },
        event_id = esc(&d.event_id),
        endpoint = if endpoint_column {
            format!(
                r#"<td><a href="/webhooks/{0}" class="mono">{0}</a></td>"#,
                esc(&d.endpoint_id)
            )
        } else {
            String::new()
        },
        created = time(d.created_at),
        took = last.map_or_else(|| "—".to_owned(), |a| duration(a.duration)),
        csrf = csrf_field(token),
        from = esc(from),
    )
}

/// Messages for `?notice=` on the endpoint page and the log.
fn notice_text(query: &Form) -> Option<String> {
    let n: u64 = query.text("n").parse().unwrap_or(0);
    Some(match query.text("notice") {
        "saved" => "Webhook saved.".into(),
        "disabled" => "Webhook disabled: new events are not sent to it.".into(),
        "enabled" => {
            "Webhook enabled. Events emitted while it was disabled were not queued: replay them below.".into()
        }
        "test_sent" => "Test event sent. It appears in the history below as it is delivered.".into(),
        "replayed" => format!("{n} missed event(s) queued for delivery."),
        "redelivered" if n == 0 => "Redelivered: the receiver did not answer.".into(),
        "redelivered" => format!("Redelivered: the receiver answered HTTP {n}."),
        _ => return None,
    })
}

/// Where the replay form starts: `?since=` (seconds, set after enabling),
/// within keyhook's 14-day window, or 24 hours ago.
fn replay_from(query: &Form) -> SystemTime {
    let now = SystemTime::now();
    let earliest = now - keyhook::MAX_RECOVERY_WINDOW + Duration::from_secs(60);
    match query.text("since").parse::<u64>() {
        Ok(secs) => (UNIX_EPOCH + Duration::from_secs(secs)).clamp(earliest, now),
        Err(_) => now - Duration::from_secs(86_400),
    }
}

struct EndpointView {
    endpoint: Endpoint,
    catalogue: Vec<EventType>,
    history: HistoryPage,
    stats: EndpointStats,
}

/// `GET /webhooks/{id}`: settings, actions and delivery history.
pub async fn show(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    const WHAT: &str = "Could not open the webhook";
    let query = Form::parse(query.unwrap_or_default().as_bytes());
    let filters = Filters::parse(&query)?;
    let history_query = filters.query();
    let s = state.clone();
    let view = blocking(move || {
        Ok(EndpointView {
            endpoint: s.registry.get(&s.org, &id)?,
            catalogue: s.registry.event_types()?,
            history: s.dispatcher.history(&s.org, &id, &history_query)?,
            stats: s.dispatcher.endpoint_stats(&s.org, &id)?,
        })
    })
    .await
    .map_err(failed(WHAT))?;
    let e = &view.endpoint;
    let id = esc(&e.id);
    let csrf = csrf_field(&token);
    let usable: Vec<(&str, &str)> = view
        .catalogue
        .iter()
        .filter(|t| !t.archived)
        .map(|t| (t.name.as_str(), t.name.as_str()))
        .collect();
    let rate = view.stats.success_rate_24h.map_or_else(
        || "no attempts".to_owned(),
        |r| format!("{:.0}%", r * 100.0),
    );
    let toggle = if e.enabled {
        r#"<input type="hidden" name="enabled" value="false"><button type="submit" class="secondary" id="disable-webhook">Disable</button> <span class="muted">New events are not sent to a disabled webhook.</span>"#
    } else {
        r#"<input type="hidden" name="enabled" value="true"><button type="submit" id="enable-webhook">Enable</button>"#
    };
    let mut body = format!(
        r#"<h1>Webhook <code>{url}</code></h1>
<p>{status} · created {created}{description} · <a href="/#webhooks">Back to Developers</a></p>
{notice}
<p>Last 24 hours: {attempts} attempt(s), success {rate}. Pending {pending}, delivered {delivered}, failed {failed}.</p>
<section class="card" id="test"><h2>Send test event</h2>
<form method="post" action="/webhooks/{id}/test">{csrf}
<label for="test-type">Event type</label> <select id="test-type" name="event_type">{test_types}</select>
<button type="submit" id="send-test">Send test event</button></form>
<p class="muted">Sent to this endpoint only, with the type's example payload, signed like any other event.</p></section>
<section class="card" id="history-card"><h2>Delivery history</h2>
{filters}
{history}</section>
<section class="card" id="settings"><h2>Settings</h2>
<form method="post" action="/webhooks/{id}">{csrf}
<div class="field"><label for="edit-url">Endpoint URL</label><input type="url" id="edit-url" name="url" value="{url}" required></div>
{types}
<div class="field"><label for="edit-description">Description (optional)</label><input type="text" id="edit-description" name="description" value="{description_value}" maxlength="1000"></div>
<button type="submit" id="save-webhook">Save</button></form>
<h3>Status</h3>
<form method="post" action="/webhooks/{id}/enabled">{csrf}{toggle}</form>
<h3>Replay missed events</h3>
<form method="post" action="/webhooks/{id}/replay">{csrf}
<div class="field"><label for="replay-since">Send every event it missed since (UTC)</label>
<input type="datetime-local" id="replay-since" name="since" value="{since}"></div>
<button type="submit" class="secondary" id="replay">Replay missed events</button>
<span class="muted">Events emitted while it was disabled, or before it subscribed to their type; up to 14 days back.</span></form>
<h3>Signing secret</h3>
<form method="post" action="/webhooks/{id}/rotate">{csrf}{once}
<div class="field"><label for="rotate-grace">The old secret keeps signing for</label><select id="rotate-grace" name="grace">{grace}</select></div>
<button type="submit" class="secondary" id="rotate-secret">Rotate secret</button>
<span class="muted">During the grace period each request carries both signatures, so your server can switch without missing one.</span></form>
<h3>Delete</h3>
<p><a href="/webhooks/{id}/delete" id="delete-webhook">Delete this webhook…</a></p>
</section>"#,
        url = esc(&e.url),
        status = endpoint_status(e),
        created = time(e.created_at),
        description = e
            .description
            .as_deref()
            .map(|d| format!(" · {}", esc(d)))
            .unwrap_or_default(),
        notice = notice_text(&query)
            .map(|t| notice("info", &esc(&t)))
            .unwrap_or_default(),
        attempts = view.stats.attempts_24h,
        pending = view.stats.pending,
        delivered = view.stats.delivered,
        failed = view.stats.failed,
        test_types = options(usable, e.event_types.first().map_or("", String::as_str)),
        filters = filters.form(&format!("/webhooks/{}", e.id), &view.catalogue),
        history = history_table(
            &token,
            &view.history,
            "endpoint",
            &format!("/webhooks/{id}"),
            &filters
        ),
        types = type_boxes(&view.catalogue, &e.event_types, "edit"),
        description_value = esc(e.description.as_deref().unwrap_or("")),
        since = datetime_local(replay_from(&query)),
        grace = options(ROTATION_CHOICES.iter().copied(), "86400"),
        once = once_field(&state.once.issue(&token, Makes::SigningSecret)),
    );
    if e.all_event_types {
        body = body.replace(
            "<legend>Event types</legend>",
            "<legend>Event types (this endpoint receives all types; saving with boxes ticked limits it to them)</legend>",
        );
    }
    Ok(respond(StatusCode::OK, "Webhook", &body))
}

/// `POST /webhooks/{id}`: a new URL, event types and description.
pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    let update = EndpointUpdate {
        url: Some(form.text("url").to_owned()),
        event_types: Some(form.all("event_types")),
        all_event_types: Some(false),
        description: Some(optional(form.text("description"))),
        ..EndpointUpdate::default()
    };
    let s = state.clone();
    let endpoint = blocking(move || s.registry.update(&s.org, &id, update))
        .await
        .map_err(failed("Could not save the webhook"))?;
    Ok(Redirect::to(&format!(
        "/webhooks/{}?notice=saved",
        endpoint.id
    )))
}

/// `POST /webhooks/{id}/enabled`: disable or enable.
pub async fn set_enabled(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    const WHAT: &str = "Could not change the webhook's status";
    let enable = match form.text("enabled") {
        "true" => true,
        "false" => false,
        _ => return Err(PageError::bad_input(WHAT, "Choose enable or disable.")),
    };
    let s = state.clone();
    let (endpoint, missed_since) = blocking(move || {
        if enable {
            let enabled = s.registry.enable(&s.org, &id)?;
            Ok((enabled.endpoint, enabled.missed_since))
        } else {
            let update = EndpointUpdate {
                enabled: Some(false),
                ..EndpointUpdate::default()
            };
            Ok((s.registry.update(&s.org, &id, update)?, None))
        }
    })
    .await
    .map_err(failed(WHAT))?;
    let notice = if enable { "enabled" } else { "disabled" };
    // When it was enabled, the replay form starts at the time its trouble began.
    let since = missed_since
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| format!("&since={}", d.as_secs()))
        .unwrap_or_default();
    Ok(Redirect::to(&format!(
        "/webhooks/{}?notice={notice}{since}#settings",
        url_value(&endpoint.id)
    )))
}

/// `POST /webhooks/{id}/rotate`: a new secret, shown once; a second
/// submission of the same form rotates nothing and answers 409.
pub async fn rotate(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Response, PageError> {
    const WHAT: &str = "Could not rotate the signing secret";
    let claim = state.once.claim(&token, &form, Makes::SigningSecret)?;
    let grace = form
        .text("grace")
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| PageError::bad_input(WHAT, "Choose a grace period from the list."))?;
    let s = state.clone();
    let (endpoint, secret) = blocking(move || {
        let secret = claim.settle(s.registry.rotate_secret(&s.org, &id, Some(grace)))?;
        Ok((s.registry.get(&s.org, &id)?, secret))
    })
    .await
    .map_err(failed(WHAT))?;
    Ok(show_secret_once(
        "Signing secret rotated",
        &endpoint,
        &secret.expose(),
    ))
}

/// `POST /webhooks/{id}/test`: "Send test event".
pub async fn send_test(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    let event_type = form.text("event_type").to_owned();
    let s = state.clone();
    let endpoint_id = id.clone();
    blocking(move || {
        s.dispatcher
            .send_test_event(&s.org, &endpoint_id, &event_type, None)
    })
    .await
    .map_err(failed("Could not send the test event"))?;
    Ok(Redirect::to(&format!(
        "/webhooks/{}?notice=test_sent#history-card",
        url_value(&id)
    )))
}

/// `POST /webhooks/{id}/replay`: what it missed since a time.
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    const WHAT: &str = "Could not replay missed events";
    let since = parse_datetime_local(form.text("since")).ok_or_else(|| {
        PageError::bad_input(WHAT, "Give the start time as a date and time (UTC).")
    })?;
    let s = state.clone();
    let endpoint_id = id.clone();
    let queued = blocking(move || s.dispatcher.replay_missing(&s.org, &endpoint_id, since))
        .await
        .map_err(failed(WHAT))?;
    Ok(Redirect::to(&format!(
        "/webhooks/{}?notice=replayed&n={queued}#history-card",
        url_value(&id)
    )))
}

/// `GET /webhooks/{id}/delete`: the confirmation.
pub async fn delete_form(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let s = state.clone();
    let e = blocking(move || s.registry.get(&s.org, &id))
        .await
        .map_err(failed("Could not open the webhook"))?;
    let body = format!(
        r#"<h1>Delete this webhook?</h1>
<p>Endpoint <code>{url}</code> ({types}).</p>
{warning}
<form method="post" action="/webhooks/{id}/delete">{csrf}
<button type="submit" class="danger" id="confirm-delete">Delete webhook</button> <a href="/webhooks/{id}">Cancel</a></form>"#,
        url = esc(&e.url),
        types = subscribed(&e),
        warning = notice(
            "error",
            "Deleting removes the webhook and stops all events to it, including retries that are \
             still pending. Its delivery history and signing secrets are deleted too. This cannot be undone."
        ),
        id = esc(&e.id),
        csrf = csrf_field(&token),
    );
    Ok(respond(StatusCode::OK, "Delete webhook", &body))
}

/// `POST /webhooks/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(_form): CsrfForm,
) -> Result<Redirect, PageError> {
    let s = state.clone();
    blocking(move || s.registry.delete(&s.org, &id))
        .await
        .map_err(failed("Could not delete the webhook"))?;
    Ok(Redirect::to("/?notice=webhook_deleted#webhooks"))
}

/// `GET /deliveries`: the organization's delivery log.
pub async fn org_log(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let query = Form::parse(query.unwrap_or_default().as_bytes());
    let filters = Filters::parse(&query)?;
    let history_query = filters.query();
    let s = state.clone();
    let (history, catalogue) = blocking(move || {
        Ok((
            s.dispatcher.org_history(&s.org, &history_query)?,
            s.registry.event_types()?,
        ))
    })
    .await
    .map_err(failed("Could not load the delivery log"))?;
    let body = format!(
        r#"<h1>Delivery log</h1>
<p>Every webhook delivery of the organization, newest first. <a href="/#webhooks">Back to Developers</a></p>
{notice}
<section class="card">{filters}{table}</section>"#,
        notice = notice_text(&query)
            .map(|t| notice("info", &esc(&t)))
            .unwrap_or_default(),
        filters = filters.form("/deliveries", &catalogue),
        table = history_table(&token, &history, "org", "/deliveries", &filters),
    );
    Ok(respond(StatusCode::OK, "Delivery log", &body))
}

/// `POST /deliveries/{id}/redeliver`: one attempt now, then back.
pub async fn redeliver(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    let to_org_log = form.text("from") == "org";
    let s = state.clone();
    // redeliver makes the HTTP request on the calling thread: a blocking
    // thread here, up to the request timeout.
    let (attempt, delivery) = blocking(move || {
        let attempt = s.dispatcher.redeliver(&s.org, &id)?;
        Ok((attempt, s.dispatcher.delivery(&s.org, &id)?))
    })
    .await
    .map_err(failed("Could not redeliver"))?;
    let n = attempt.status_code.unwrap_or(0);
    Ok(Redirect::to(&if to_org_log {
        format!("/deliveries?notice=redelivered&n={n}")
    } else {
        format!(
            "/webhooks/{}?notice=redelivered&n={n}#history-card",
            url_value(&delivery.endpoint_id)
        )
    }))
}
