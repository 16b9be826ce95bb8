//! Bad input through the router (no browser): each gets a clear message
//! with the right status, and the database is left as it was.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use developers_page::once::Makes;
use developers_page::{AppState, Config, ORG};
use keyhook::{EndpointOptions, KeySettings, KeyState};
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_ORG: &str = "org_other";

struct Page {
    state: AppState,
    router: Router,
    _dir: tempfile::TempDir,
}

async fn page() -> Page {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        database: dir.path().join("page.sqlite3"),
        // Nothing is delivered: these tests look at what is stored.
        workers: 0,
    };
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let state = tokio::task::spawn_blocking(move || AppState::open(&config, addr))
        .await
        .unwrap()
        .unwrap();
    Page {
        router: developers_page::router(state.clone()),
        state,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    body: String,
}

impl Page {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A form POST with the browser's cookie and the form's token.
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        token: Option<&str>,
        fields: &[(&str, &str)],
    ) -> Answer {
        let mut form = form_urlencoded::Serializer::new(String::new());
        if let Some(t) = token {
            form.append_pair("csrf", t);
        }
        for (k, v) in fields {
            form.append_pair(k, v);
        }
        let mut request =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            request = request.header(header::COOKIE, format!("dp_csrf={c}"));
        }
        self.send(request.body(Body::from(form.finish())).unwrap())
            .await
    }

    /// A form POST as the page's own forms send it: with the browser's
    /// token and, on the forms that show a secret once, a fresh single-use
    /// nonce (unless `fields` has one).
    async fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let once = show_once(path)
            .filter(|_| !fields.iter().any(|(k, _)| *k == "once"))
            .map(|makes| self.state.once.issue(TOKEN, makes));
        let mut fields = fields.to_vec();
        if let Some(n) = &once {
            fields.push(("once", n));
        }
        self.post(path, Some(TOKEN), Some(TOKEN), &fields).await
    }

    async fn get(&self, path: &str) -> Answer {
        let request = Request::get(path)
            .header(header::COOKIE, format!("dp_csrf={TOKEN}"))
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    async fn api(&self, path: &str, key: &str) -> Answer {
        let request = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }
}

/// What the form at `path` makes, if it shows a secret once.
fn show_once(path: &str) -> Option<Makes> {
    if path == "/keys" || (path.starts_with("/keys/") && path.ends_with("/roll")) {
        Some(Makes::ApiKey)
    } else if path == "/webhooks" || (path.starts_with("/webhooks/") && path.ends_with("/rotate")) {
        Some(Makes::SigningSecret)
    } else {
        None
    }
}

/// The single-use nonce of the form posting to `action` in a rendered page.
fn nonce_in(page: &str, action: &str) -> String {
    let form = page
        .find(&format!(r#"action="{action}""#))
        .unwrap_or_else(|| panic!("no form for {action}"));
    let field = r#"name="once" value=""#;
    let start = form + page[form..].find(field).expect("the form's nonce") + field.len();
    page[start..start + page[start..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn an_empty_key_name_is_refused_and_nothing_is_created() {
    let p = page().await;
    let answer = p
        .submit("/keys", &[("name", "   "), ("expires", "never")])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.body.contains("Could not create the API key"),
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains("Invalid name: must not be empty"),
        "{}",
        answer.body
    );
    assert!(p.state.keys.list(ORG).unwrap().is_empty());
}

#[tokio::test]
async fn a_created_key_is_shown_once_and_listed_by_its_hint_only() {
    let p = page().await;
    let answer = p
        .submit(
            "/keys",
            &[
                ("name", "Zapier <Integration>"),
                ("scopes", "conversions:read"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let keys = p.state.keys.list(ORG).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].scopes, ["conversions:read"]);
    // Escaped, never interpreted.
    assert!(answer.body.contains("Zapier &lt;Integration&gt;"));
    assert!(answer.body.contains("it will only be shown once"));
    let start = answer
        .body
        .find(r#"value="vr_live_"#)
        .expect("the plaintext")
        + 7;
    let plaintext = &answer.body[start..start + answer.body[start..].find('"').unwrap()];
    let listing = p.get("/").await;
    assert!(
        !listing.body.contains(plaintext),
        "the list shows the plaintext"
    );
    assert!(listing.body.contains(&keys[0].hint.replace('…', "")[..12]));
    // The key works on the API, with its scope only.
    assert_eq!(
        p.api("/v1/conversions", plaintext).await.status,
        StatusCode::OK
    );
    let refused = p.api("/v1/payouts", plaintext).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("insufficient_scope"));
}

#[tokio::test]
async fn an_invalid_url_is_refused_and_nothing_is_created() {
    let p = page().await;
    for url in [
        "not a url",
        "ftp://example.com/hook",
        "http://10.1.2.3/hook",
    ] {
        let answer = p
            .submit(
                "/webhooks",
                &[("url", url), ("event_types", "conversion.created")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{url}");
        assert!(
            answer.body.contains("Could not create the webhook"),
            "{url}"
        );
        assert!(
            answer.body.contains("Invalid url") || answer.body.contains("Destination refused"),
            "{url}: {}",
            answer.body
        );
    }
    assert!(p.state.registry.list(ORG).unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_event_type_is_refused_and_nothing_changes() {
    let p = page().await;
    let answer = p
        .submit(
            "/webhooks",
            &[
                ("url", "https://example.com/hook"),
                ("event_types", "conversion.deleted"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer
            .body
            .contains("Unknown event type &quot;conversion.deleted&quot;"),
        "{}",
        answer.body
    );
    assert!(p.state.registry.list(ORG).unwrap().is_empty());

    // Editing an existing endpoint with one leaves it as it was.
    let ep = p
        .state
        .registry
        .create(
            ORG,
            "https://example.com/hook",
            &["conversion.created"],
            EndpointOptions::default(),
        )
        .unwrap()
        .endpoint;
    let answer = p
        .submit(
            &format!("/webhooks/{}", ep.id),
            &[
                ("url", "https://example.com/other"),
                ("event_types", "conversion.created"),
                ("event_types", "nope.nothing"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.contains("Could not save the webhook"));
    let after = p.state.registry.get(ORG, &ep.id).unwrap();
    assert_eq!(after.url, "https://example.com/hook");
    assert_eq!(after.event_types, ["conversion.created"]);
}

#[tokio::test]
async fn a_forged_or_missing_form_token_is_refused_and_nothing_changes() {
    let p = page().await;
    let other = "f".repeat(64);
    let cases: [(Option<&str>, Option<&str>, &str); 4] = [
        (Some(TOKEN), Some(&other), "does not match"),
        (Some(TOKEN), None, "is missing"),
        (None, Some(TOKEN), "does not match"),
        (Some(TOKEN), Some(&TOKEN[..63]), "does not match"),
    ];
    for (cookie, token, why) in cases {
        let answer = p.post("/keys", cookie, token, &[("name", "Forged")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{cookie:?} {token:?}");
        assert!(answer.body.contains(why), "{why}: {}", answer.body);
        assert!(answer.body.contains("Nothing was changed"));
        let answer = p.post("/plan", cookie, token, &[("plan", "free")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
    assert!(p.state.keys.list(ORG).unwrap().is_empty());
    assert!(p.state.keys.api_keys_enabled(ORG).unwrap());
}

#[tokio::test]
async fn another_organizations_ids_are_not_found_and_left_alone() {
    let p = page().await;
    let keys = &p.state.keys;
    keys.set_api_keys_enabled(OTHER_ORG, true).unwrap();
    let key = keys
        .create(OTHER_ORG, "Theirs", KeySettings::default())
        .unwrap();
    let ep = p
        .state
        .registry
        .create(
            OTHER_ORG,
            "https://example.com/theirs",
            &["conversion.created"],
            EndpointOptions::default(),
        )
        .unwrap()
        .endpoint;
    let event = p
        .state
        .dispatcher
        .emit(OTHER_ORG, "conversion.created", &serde_json::json!({}))
        .unwrap();
    let delivery = p
        .state
        .dispatcher
        .event_deliveries(OTHER_ORG, &event)
        .unwrap()[0]
        .id
        .clone();

    let recent = developers_page::html::datetime_local(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    let key_id = key.key.id.as_str();
    let ep_id = ep.id.as_str();
    let posts = [
        (format!("/keys/{key_id}/revoke"), vec![]),
        (format!("/keys/{key_id}/edit"), vec![("name", "Mine now")]),
        (format!("/keys/{key_id}/roll"), vec![("grace", "0")]),
        (
            format!("/webhooks/{ep_id}"),
            vec![
                ("url", "https://example.com/mine"),
                ("event_types", "conversion.created"),
            ],
        ),
        (
            format!("/webhooks/{ep_id}/enabled"),
            vec![("enabled", "false")],
        ),
        (format!("/webhooks/{ep_id}/rotate"), vec![("grace", "0")]),
        (
            format!("/webhooks/{ep_id}/test"),
            vec![("event_type", "conversion.created")],
        ),
        (
            format!("/webhooks/{ep_id}/replay"),
            vec![("since", recent.as_str())],
        ),
        (format!("/webhooks/{ep_id}/delete"), vec![]),
        (format!("/deliveries/{delivery}/redeliver"), vec![]),
    ];
    for (path, fields) in &posts {
        let answer = p.submit(path, fields).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "POST {path}: {}",
            answer.body
        );
        assert!(answer.body.contains("not found"), "{path}: {}", answer.body);
    }
    for path in [
        format!("/keys/{key_id}/edit"),
        format!("/keys/{key_id}/revoke"),
        format!("/webhooks/{ep_id}"),
        format!("/webhooks/{ep_id}/delete"),
    ] {
        assert_eq!(
            p.get(&path).await.status,
            StatusCode::NOT_FOUND,
            "GET {path}"
        );
    }

    // Theirs, untouched.
    let key_after = keys.get(OTHER_ORG, key_id).unwrap();
    assert_eq!(key_after.name, "Theirs");
    assert_eq!(key_after.state, KeyState::Active);
    assert!(key_after.revoked_at.is_none());
    assert_eq!(keys.list(OTHER_ORG).unwrap().len(), 1);
    let ep_after = p.state.registry.get(OTHER_ORG, ep_id).unwrap();
    assert_eq!(ep_after, ep);
    assert_eq!(
        p.state
            .registry
            .signing_secrets(OTHER_ORG, ep_id)
            .unwrap()
            .len(),
        1
    );
    let d = p.state.dispatcher.delivery(OTHER_ORG, &delivery).unwrap();
    assert!(d.attempts.is_empty());
    assert_eq!(
        p.state
            .dispatcher
            .event_deliveries(OTHER_ORG, &event)
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_free_plan_locks_keys_and_the_api_says_why() {
    let p = page().await;
    let key = p
        .state
        .keys
        .create(
            ORG,
            "Dashboard",
            KeySettings {
                scopes: vec!["conversions:read".into()],
                ..KeySettings::default()
            },
        )
        .unwrap();
    let answer = p.submit("/plan", &[("plan", "free")]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let listing = p.get("/").await;
    assert!(
        listing
            .body
            .contains("API keys are available on paid plans")
    );
    assert!(!listing.body.contains(r#"id="create-key""#));
    let api = p.api("/v1/conversions", key.secret.expose()).await;
    assert_eq!(api.status, StatusCode::FORBIDDEN);
    assert!(api.body.contains("plan_inactive"));
    let create = p.submit("/keys", &[("name", "Another")]).await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    assert!(create.body.contains("API keys are not enabled"));
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 1);

    p.submit("/plan", &[("plan", "paid")]).await;
    assert_eq!(
        p.api("/v1/conversions", key.secret.expose()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn other_bad_fields_get_a_message_and_change_nothing() {
    let p = page().await;
    let ep = p
        .state
        .registry
        .create(
            ORG,
            "https://example.com/hook",
            &["conversion.created"],
            EndpointOptions::default(),
        )
        .unwrap()
        .endpoint;
    let cases = [
        (
            "/keys".to_owned(),
            vec![("name", "K"), ("expires", "tomorrow")],
            "Unknown expiry",
        ),
        (
            "/keys".to_owned(),
            vec![("name", "K"), ("scopes", "has space")],
            "Invalid scope",
        ),
        ("/plan".to_owned(), vec![("plan", "gold")], "Unknown plan"),
        (
            format!("/webhooks/{}/replay", ep.id),
            vec![("since", "yesterday")],
            "date and time",
        ),
        (
            format!("/webhooks/{}/rotate", ep.id),
            vec![("grace", "forever")],
            "grace period",
        ),
        (
            format!("/webhooks/{}/test", ep.id),
            vec![("event_type", "nope.x")],
            "Unknown event type",
        ),
        (
            "/simulate".to_owned(),
            vec![("kind", "refund")],
            "Unknown kind",
        ),
    ];
    for (path, fields, message) in cases {
        let answer = p.submit(&path, &fields).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path} {fields:?}: {}",
            answer.body
        );
        assert!(answer.body.contains(message), "{path}: {}", answer.body);
    }
    assert!(p.state.keys.list(ORG).unwrap().is_empty());
    assert_eq!(
        p.state.registry.signing_secrets(ORG, &ep.id).unwrap().len(),
        1
    );
    assert!(
        p.state
            .dispatcher
            .deliveries(ORG, &ep.id, 10)
            .unwrap()
            .is_empty()
    );
    // A bad filter is a 400 too, not a crash.
    assert_eq!(
        p.get(&format!("/webhooks/{}?state=lost", ep.id))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_api_refuses_missing_and_garbled_keys() {
    let p = page().await;
    let request = Request::get("/v1/me").body(Body::empty()).unwrap();
    let answer = p.send(request).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("missing Authorization header"));
    let answer = p.api("/v1/me", "vr_live_not-a-key").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("malformed"));
}

#[tokio::test]
async fn disabling_and_enabling_offers_a_replay_from_when_it_stopped() {
    let p = page().await;
    let ep = p
        .state
        .registry
        .create(
            ORG,
            "https://example.com/hook",
            &["conversion.created"],
            EndpointOptions::default(),
        )
        .unwrap()
        .endpoint;
    let path = format!("/webhooks/{}/enabled", ep.id);
    let off = p.submit(&path, &[("enabled", "false")]).await;
    assert_eq!(off.status, StatusCode::SEE_OTHER);
    assert!(!p.state.registry.get(ORG, &ep.id).unwrap().enabled);
    // Missed while disabled: not queued for it.
    p.state
        .dispatcher
        .emit(ORG, "conversion.created", &serde_json::json!({"n": 1}))
        .unwrap();
    let request = Request::post(&path)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, format!("dp_csrf={TOKEN}"))
        .body(Body::from(format!("csrf={TOKEN}&enabled=true")))
        .unwrap();
    let response = p.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[header::LOCATION].to_str().unwrap();
    assert!(location.contains("notice=enabled&since="), "{location}");
    let page_after = p.get(location.split('#').next().unwrap()).await;
    assert!(page_after.body.contains("replay them below"));

    let since = developers_page::html::datetime_local(
        std::time::SystemTime::now() - std::time::Duration::from_secs(600),
    );
    let replay = p
        .submit(
            &format!("/webhooks/{}/replay", ep.id),
            &[("since", since.as_str())],
        )
        .await;
    assert_eq!(replay.status, StatusCode::SEE_OTHER);
    assert_eq!(
        p.state
            .dispatcher
            .deliveries(ORG, &ep.id, 10)
            .unwrap()
            .len(),
        1
    );
}

/// The messages of a second submission.
fn assert_already_submitted(answer: &Answer, secret: &str, what: &str) {
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert!(
        answer.body.contains("This form was already submitted"),
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains(&format!(
            "the {what} was shown once and cannot be shown again"
        )),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("Nothing was changed"));
    assert!(
        !answer.body.contains(secret),
        "a secret in the second answer"
    );
}

#[tokio::test]
async fn submitting_the_create_key_form_twice_creates_one_key() {
    let p = page().await;
    let once = nonce_in(&p.get("/").await.body, "/keys");
    let fields = [
        ("once", once.as_str()),
        ("name", "Zapier"),
        ("expires", "never"),
    ];
    let first = p.submit("/keys", &fields).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(first.body.contains(r#"value="vr_live_"#));
    // The reload: the browser sends the same form again.
    let second = p.submit("/keys", &fields).await;
    assert_already_submitted(&second, "vr_live_", "key");
    assert!(second.body.contains("Create a new one if you lost it"));
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 1);
    // Again and again: still one.
    assert_eq!(
        p.submit("/keys", &fields).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 1);

    // A form that failed can be fixed and sent again: its nonce was not used up.
    let once = nonce_in(&p.get("/").await.body, "/keys");
    let empty = p.submit("/keys", &[("once", &once), ("name", " ")]).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let fixed = p
        .submit("/keys", &[("once", &once), ("name", "Fixed")])
        .await;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.body);
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 2);

    // Another browser cannot use this one's nonce, nor a made-up one.
    let other = "e".repeat(64);
    let once = nonce_in(&p.get("/").await.body, "/keys");
    for nonce in [once.as_str(), "0123.1.abcd"] {
        let answer = p
            .post(
                "/keys",
                Some(&other),
                Some(&other),
                &[("once", nonce), ("name", "Theirs")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(answer.body.contains("single-use token"), "{}", answer.body);
    }
    let missing = p
        .post("/keys", Some(TOKEN), Some(TOKEN), &[("name", "No nonce")])
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 2);
    // The nonce refused for another browser is still good for its own.
    let mine = p
        .submit("/keys", &[("once", &once), ("name", "Mine")])
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 3);
}

#[tokio::test]
async fn submitting_the_roll_form_twice_rolls_once() {
    let p = page().await;
    let key = p
        .state
        .keys
        .create(ORG, "Dashboard", KeySettings::default())
        .unwrap();
    let path = format!("/keys/{}/roll", key.key.id);
    let once = nonce_in(&p.get(&path).await.body, &path);
    let fields = [("once", once.as_str()), ("grace", "3600")];
    let first = p.submit(&path, &fields).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(first.body.contains("API key rolled"));
    let second = p.submit(&path, &fields).await;
    assert_already_submitted(&second, "vr_live_", "key");
    // The old key and one new key.
    assert_eq!(p.state.keys.list(ORG).unwrap().len(), 2);
}

#[tokio::test]
async fn submitting_the_create_webhook_form_twice_creates_one_endpoint() {
    let p = page().await;
    let once = nonce_in(&p.get("/").await.body, "/webhooks");
    let fields = [
        ("once", once.as_str()),
        ("url", "https://example.com/hook"),
        ("event_types", "conversion.created"),
    ];
    let first = p.submit("/webhooks", &fields).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(first.body.contains(r#"value="whsec_"#));
    let second = p.submit("/webhooks", &fields).await;
    assert_already_submitted(&second, "whsec_", "signing secret");
    assert_eq!(p.state.registry.list(ORG).unwrap().len(), 1);
    // A key form's nonce does not work here.
    let key_once = nonce_in(&p.get("/").await.body, "/keys");
    let answer = p
        .submit(
            "/webhooks",
            &[
                ("once", &key_once),
                ("url", "https://example.com/other"),
                ("event_types", "conversion.created"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(p.state.registry.list(ORG).unwrap().len(), 1);
}

#[tokio::test]
async fn submitting_the_rotate_form_twice_rotates_once() {
    let p = page().await;
    let ep = p
        .state
        .registry
        .create(
            ORG,
            "https://example.com/hook",
            &["conversion.created"],
            EndpointOptions::default(),
        )
        .unwrap()
        .endpoint;
    let path = format!("/webhooks/{}/rotate", ep.id);
    let once = nonce_in(&p.get(&format!("/webhooks/{}", ep.id)).await.body, &path);
    let fields = [("once", once.as_str()), ("grace", "3600")];
    let first = p.submit(&path, &fields).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(first.body.contains("Signing secret rotated"));
    let second = p.submit(&path, &fields).await;
    assert_already_submitted(&second, "whsec_", "signing secret");
    // The first secret (in its grace period) and one new one.
    assert_eq!(
        p.state.registry.signing_secrets(ORG, &ep.id).unwrap().len(),
        2
    );
}
