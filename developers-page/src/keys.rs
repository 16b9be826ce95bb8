//! API keys: the section of the Developers page, create (shown once), edit,
//! revoke, roll, and the plan switch.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Redirect, Response};
use keyhook::{ApiKey, CreatedKey, KeyPage, KeySettings, KeyState, KeyUpdate, Rejection};

use crate::csrf::{Csrf, CsrfForm, Form};
use crate::errors::{PageError, blocking, failed};
use crate::html::{
    csrf_field, esc, notice, once_field, options, respond, secret_field, time, url_value,
};
use crate::once::Makes;
use crate::{AppState, SCOPES};

const EXPIRY_CHOICES: &[(&str, &str)] = &[
    ("never", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In 1 year"),
];

const GRACE_CHOICES: &[(&str, &str)] = &[
    ("0", "No grace: the old key stops now"),
    ("3600", "1 hour"),
    ("86400", "24 hours"),
    ("604800", "7 days"),
];

const BEST_PRACTICES: &str = r#"<details><summary>Security best practices</summary><ul>
<li>Never share API keys in public repositories or client-side code</li>
<li>Use separate keys for different integrations so you can revoke one without affecting others</li>
<li>Rotate keys periodically — revoke old ones and create new ones</li>
<li>Store keys in environment variables, not in code</li></ul></details>"#;

/// The API keys section of the Developers page; `once` is the create
/// form's single-use nonce.
pub fn section(token: &str, once: &str, plan_paid: bool, page: &KeyPage) -> String {
    let csrf = csrf_field(token);
    let mut out = String::from(
        r#"<section class="card" id="keys"><h2>API Keys</h2>
<p>API keys let you access your data from external tools, scripts, or applications.</p>"#,
    );
    if plan_paid {
        let _ = write!(
            out,
            r#"<details class="create" id="create-key-details"{open}><summary id="create-key-open">Create API Key</summary>
<form method="post" action="/keys" id="create-key-form">{csrf}{once}
<div class="field"><label for="key-name">Name</label>
<input type="text" id="key-name" name="name" maxlength="100" required placeholder="e.g. Zapier Integration or Internal Dashboard"></div>
<div class="field"><label for="key-description">Description (optional)</label>
<input type="text" id="key-description" name="description" maxlength="1000"></div>
{scopes}
<div class="field"><label for="key-expires">Expires</label><select id="key-expires" name="expires">{expiry}</select></div>
<div class="field"><label for="key-environment">Environment</label><select id="key-environment" name="environment">{envs}</select></div>
<button type="submit" id="create-key">Create</button></form></details>"#,
            // Open at first, when there is nothing else to see.
            open = if page.keys.is_empty() { " open" } else { "" },
            once = once_field(once),
            scopes = scope_boxes(&[]),
            expiry = options(EXPIRY_CHOICES.iter().copied(), "never"),
            envs = options([("live", "live"), ("test", "test")], "live"),
        );
    } else {
        let _ = write!(
            out,
            r#"<div class="locked" id="keys-locked"><p><strong>Locked: API keys are available on paid plans.</strong>
Upgrade to create keys.</p>
<p>Existing keys are kept, but while this organization is on the Free plan every API call with them is refused:
<code>verify</code> answers <code>Rejection::PlanInactive</code> (“{why}”), and the API answers
<code>403 {{"error":"plan_inactive"}}</code>. They work again after an upgrade.</p></div>"#,
            why = esc(&Rejection::PlanInactive.to_string()),
        );
    }
    if page.keys.is_empty() {
        out.push_str(r#"<p class="muted">No API keys yet.</p>"#);
    } else {
        out.push_str(
            r#"<table id="keys-table"><thead><tr><th>Name</th><th>Key</th><th>Scopes</th><th>Created</th><th>Last used</th><th>Expires</th><th>Status</th><th>Actions</th></tr></thead><tbody>"#,
        );
        for key in &page.keys {
            out.push_str(&key_row(key, plan_paid));
        }
        out.push_str("</tbody></table>");
    }
    if let Some(cursor) = &page.next_cursor {
        let _ = write!(
            out,
            r##"<nav class="pager"><a href="/">Newest keys</a> · <a href="/?keys_cursor={}#keys">Older keys →</a></nav>"##,
            url_value(cursor)
        );
    }
    out.push_str(BEST_PRACTICES);
    out.push_str("</section>");
    out
}

fn key_row(key: &ApiKey, plan_paid: bool) -> String {
    let scopes = if key.scopes.is_empty() {
        r#"<span class="muted">none</span>"#.to_owned()
    } else {
        key.scopes
            .iter()
            .map(|s| format!("<code>{}</code>", esc(s)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let status = match key.state {
        KeyState::Active if key.revoked_at.is_some() => format!(
            r#"<span class="badge warn">rolled: works until {}</span>"#,
            time(key.revoked_at.unwrap_or(key.created_at))
        ),
        KeyState::Active if !plan_paid => r#"<span class="badge warn">locked (plan)</span>"#.into(),
        KeyState::Active => format!(r#"<span class="badge ok">{}</span>"#, key.state.as_str()),
        KeyState::Expired | KeyState::Revoked => {
            format!(r#"<span class="badge bad">{}</span>"#, key.state.as_str())
        }
    };
    let id = esc(&key.id);
    let name = esc(&key.name);
    let actions = if key.state == KeyState::Revoked {
        String::new()
    } else {
        let roll = if key.state == KeyState::Active && key.revoked_at.is_none() {
            format!(r#" · <a href="/keys/{id}/roll" aria-label="Roll {name}">Roll</a>"#)
        } else {
            String::new()
        };
        format!(
            r#"<a href="/keys/{id}/edit" aria-label="Edit {name}">Edit</a>{roll} · <a href="/keys/{id}/revoke" class="revoke" aria-label="Revoke {name}">Revoke</a>"#
        )
    };
    let description = key
        .description
        .as_deref()
        .map(|d| format!(r#"<br><span class="muted">{}</span>"#, esc(d)))
        .unwrap_or_default();
    format!(
        r#"<tr data-key-id="{id}"><td>{name}{description}</td><td class="mono">{hint}</td><td>{scopes}</td><td>{created}</td><td>{used}</td><td>{expires}</td><td>{status}</td><td>{actions}</td></tr>"#,
        hint = esc(&key.hint),
        created = time(key.created_at),
        used = key.last_used_at.map_or_else(|| "Never".to_owned(), time),
        expires = key.expires_at.map_or_else(|| "Never".to_owned(), time),
    )
}

/// Checkboxes for the API's scopes, `checked` ticked.
fn scope_boxes(checked: &[String]) -> String {
    let mut out = String::from("<fieldset><legend>Scopes</legend>");
    for (i, (scope, what)) in SCOPES.iter().enumerate() {
        let on = if checked.iter().any(|c| c == scope) {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<div class="check"><input type="checkbox" id="scope-{i}" name="scopes" value="{scope}"{on}> <label for="scope-{i}"><code>{scope}</code> — {what}</label></div>"#,
            what = esc(what),
        );
    }
    out.push_str("</fieldset>");
    out
}

/// The expiry a form asks for: `None` for "keep" (edit only).
fn expiry(form: &Form, what: &str) -> Result<Option<Option<SystemTime>>, PageError> {
    match form.text("expires") {
        "" | "keep" => Ok(None),
        "never" => Ok(Some(None)),
        days => match days.parse::<u64>() {
            Ok(d) if (1..=3650).contains(&d) => Ok(Some(Some(
                SystemTime::now() + Duration::from_secs(d * 86_400),
            ))),
            _ => Err(PageError::bad_input(
                what,
                format!("Unknown expiry {days:?}: choose one of the listed options."),
            )),
        },
    }
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// `POST /plan`: the demo's billing switch.
pub async fn switch_plan(
    State(state): State<AppState>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    const WHAT: &str = "Could not change the plan";
    let paid = match form.text("plan") {
        "paid" => true,
        "free" => false,
        other => {
            return Err(PageError::bad_input(
                WHAT,
                format!("Unknown plan {other:?}: choose paid or free."),
            ));
        }
    };
    let s = state.clone();
    blocking(move || s.keys.set_api_keys_enabled(&s.org, paid))
        .await
        .map_err(failed(WHAT))?;
    Ok(Redirect::to(if paid {
        "/?notice=plan_paid#plan"
    } else {
        "/?notice=plan_free#plan"
    }))
}

/// `POST /keys`: creates a key and shows its plaintext, once, in this
/// answer. A second submission of the same form (a reload) creates nothing
/// and answers 409 (see `once.rs`).
pub async fn create(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    CsrfForm(form): CsrfForm,
) -> Result<Response, PageError> {
    const WHAT: &str = "Could not create the API key";
    let claim = state.once.claim(&token, &form, Makes::ApiKey)?;
    let name = form.text("name").to_owned();
    let environment = optional(form.text("environment"));
    let settings = KeySettings {
        expires_at: expiry(&form, WHAT)?.flatten(),
        scopes: form.all("scopes"),
        description: optional(form.text("description")),
        environment,
        ..KeySettings::default()
    };
    let s = state.clone();
    // The claim moves into the blocking call: settled there, whether or not
    // this request is abandoned meanwhile.
    let created = blocking(move || claim.settle(s.keys.create(&s.org, &name, settings)))
        .await
        .map_err(failed(WHAT))?;
    Ok(show_key_once("API key created", &created, None))
}

/// The one page that ever shows a key's plaintext.
fn show_key_once(title: &str, created: &CreatedKey, old_until: Option<SystemTime>) -> Response {
    let rolled = old_until
        .map(|t| {
            format!(
                "<p>The key it replaces keeps working until {}; then it is revoked.</p>",
                time(t)
            )
        })
        .unwrap_or_default();
    let body = format!(
        r#"<h1>{title}</h1>
{warning}
{field}
<p>Name: <strong>{name}</strong> · shown in lists as <code>{hint}</code></p>
{rolled}
<p>Store it in an environment variable, not in code, e.g. <code>export VIRALREF_API_KEY=…</code></p>
<p><a href="/#keys" id="done">Done: back to Developers</a></p>"#,
        title = esc(title),
        warning = notice(
            "secret",
            "<strong>Copy the key immediately — it will only be shown once.</strong> \
             We keep only a hash of it: if you lose it, revoke it and create a new one."
        ),
        field = secret_field(
            "new-key-secret",
            "Your new API key",
            created.secret.expose()
        ),
        name = esc(&created.key.name),
        hint = esc(&created.key.hint),
    );
    respond(StatusCode::OK, title, &body)
}

async fn load(state: &AppState, id: String, what: &'static str) -> Result<ApiKey, PageError> {
    let s = state.clone();
    blocking(move || s.keys.get(&s.org, &id))
        .await
        .map_err(failed(what))
}

/// `GET /keys/{id}/edit`.
pub async fn edit_form(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let key = load(&state, id, "Could not open the API key").await?;
    let body = format!(
        r#"<h1>Edit API key</h1>
<p>Key <code>{hint}</code>, created {created}. The key string itself never changes; roll it for a new one.</p>
<form method="post" action="/keys/{id}/edit">{csrf}
<div class="field"><label for="key-name">Name</label><input type="text" id="key-name" name="name" value="{name}" maxlength="100" required></div>
<div class="field"><label for="key-description">Description (optional)</label><input type="text" id="key-description" name="description" value="{description}" maxlength="1000"></div>
{scopes}
<div class="field"><label for="key-expires">Expires (now: {expires})</label><select id="key-expires" name="expires">{expiry}</select></div>
<button type="submit" id="save-key">Save</button> <a href="/#keys">Cancel</a></form>"#,
        id = esc(&key.id),
        hint = esc(&key.hint),
        created = time(key.created_at),
        csrf = csrf_field(&token),
        name = esc(&key.name),
        description = esc(key.description.as_deref().unwrap_or("")),
        scopes = scope_boxes(&key.scopes),
        expires = key.expires_at.map_or_else(|| "never".to_owned(), time),
        expiry = options(
            [("keep", "Keep as it is")]
                .into_iter()
                .chain(EXPIRY_CHOICES.iter().copied()),
            "keep"
        ),
    );
    Ok(respond(StatusCode::OK, "Edit API key", &body))
}

/// `POST /keys/{id}/edit`: rename and change settings.
pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Redirect, PageError> {
    const WHAT: &str = "Could not save the API key";
    let changes = KeyUpdate {
        name: Some(form.text("name").to_owned()),
        expires_at: expiry(&form, WHAT)?,
        scopes: Some(form.all("scopes")),
        description: Some(optional(form.text("description"))),
        ..KeyUpdate::default()
    };
    let s = state.clone();
    blocking(move || s.keys.update(&s.org, &id, changes))
        .await
        .map_err(failed(WHAT))?;
    Ok(Redirect::to("/?notice=key_updated#keys"))
}

/// `GET /keys/{id}/revoke`: the confirmation.
pub async fn revoke_form(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let key = load(&state, id, "Could not open the API key").await?;
    let body = format!(
        r#"<h1>Revoke “{name}”?</h1>
{warning}
<p>Key <code>{hint}</code>, last used {used}.</p>
<form method="post" action="/keys/{id}/revoke">{csrf}
<button type="submit" class="danger" id="confirm-revoke">Revoke permanently</button> <a href="/#keys">Cancel</a></form>"#,
        name = esc(&key.name),
        warning = notice(
            "error",
            "Revoking permanently disables this key. Revoked keys cannot be re-enabled: \
             every integration using it stops working at once."
        ),
        hint = esc(&key.hint),
        used = key.last_used_at.map_or_else(|| "never".to_owned(), time),
        id = esc(&key.id),
        csrf = csrf_field(&token),
    );
    Ok(respond(StatusCode::OK, "Revoke API key", &body))
}

/// `POST /keys/{id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    CsrfForm(_form): CsrfForm,
) -> Result<Redirect, PageError> {
    let s = state.clone();
    blocking(move || s.keys.revoke(&s.org, &id))
        .await
        .map_err(failed("Could not revoke the API key"))?;
    Ok(Redirect::to("/?notice=key_revoked#keys"))
}

/// `GET /keys/{id}/roll`: the confirmation, with the grace period.
pub async fn roll_form(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let key = load(&state, id, "Could not open the API key").await?;
    let body = format!(
        r#"<h1>Roll “{name}”</h1>
<p>Rolling makes a new key with the same name, scopes and settings. The old key (<code>{hint}</code>)
keeps working for the grace period you choose, so you can deploy the new one first; then it is revoked.</p>
<form method="post" action="/keys/{id}/roll">{csrf}{once}
<div class="field"><label for="roll-grace">Old key keeps working for</label><select id="roll-grace" name="grace">{grace}</select></div>
<button type="submit" id="confirm-roll">Roll key</button> <a href="/#keys">Cancel</a></form>"#,
        name = esc(&key.name),
        hint = esc(&key.hint),
        id = esc(&key.id),
        csrf = csrf_field(&token),
        once = once_field(&state.once.issue(&token, Makes::ApiKey)),
        grace = options(GRACE_CHOICES.iter().copied(), "86400"),
    );
    Ok(respond(StatusCode::OK, "Roll API key", &body))
}

/// `POST /keys/{id}/roll`: shows the new key once; a second submission of
/// the same form rolls nothing and answers 409.
pub async fn roll(
    State(state): State<AppState>,
    Csrf(token): Csrf,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm,
) -> Result<Response, PageError> {
    const WHAT: &str = "Could not roll the API key";
    let claim = state.once.claim(&token, &form, Makes::ApiKey)?;
    let grace = form
        .text("grace")
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| PageError::bad_input(WHAT, "Choose a grace period from the list."))?;
    let s = state.clone();
    let (created, old) = blocking(move || {
        let created = claim.settle(s.keys.roll(&s.org, &id, grace))?;
        // The new key exists: show it even if the old one cannot be read.
        let old = s.keys.get(&s.org, &id).ok();
        Ok((created, old))
    })
    .await
    .map_err(failed(WHAT))?;
    Ok(show_key_once(
        "API key rolled",
        &created,
        old.and_then(|k| k.revoked_at),
    ))
}
