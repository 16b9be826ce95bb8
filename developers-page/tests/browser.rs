//! The page as a visitor uses it, in a real headless Chromium driven over
//! WebDriver. Each screen is saved as a PNG under
//! `target/developers-page-screenshots/` for review.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::webdriver::Browser;
use common::{App, api_get};
use developers_page::ORG;
use keyhook::KeySettings;

fn screenshots() -> PathBuf {
    // The workspace's target/, whatever CARGO_TARGET_DIR says, so reviewers
    // find the pictures in one place.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("developers-page-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[test]
fn a_visitor_manages_keys_and_webhooks_in_a_real_browser() {
    let app = App::start(2);
    let browser = Browser::launch(1280, 1400);
    let shots = screenshots();
    let shot = |name: &str| browser.screenshot(&shots.join(format!("{name}.png")));
    let base = app.base.clone();
    let home = format!("{base}/");

    // --- The page
    browser.goto(&home);
    assert!(browser.source().contains("Create API Key"));
    shot("01-developers");

    // --- Create a key and read it once
    assert_eq!(browser.property("#create-key-details", "open"), true);
    browser.fill("#key-name", "Internal Dashboard");
    browser.click(r#"input[name="scopes"][value="conversions:read"]"#);
    browser.click("#create-key");
    let secret = browser
        .property("#new-key-secret", "value")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(secret.starts_with("vr_live_"), "{secret:?}");
    assert!(
        browser
            .text(".notice.secret")
            .contains("Copy the key immediately — it will only be shown once")
    );
    shot("02-key-shown-once");

    // Back on the page (a fresh GET, as after a reload): listed, never shown.
    browser.click("#done");
    let listing = browser.source();
    assert!(!listing.contains(&secret), "the plaintext is shown again");
    assert!(listing.contains("Internal Dashboard"));
    assert!(browser.text("#keys-table").contains("conversions:read"));
    shot("03-key-listed");

    // --- The key works on the API, until it is revoked
    let (status, body) = api_get(&format!("{base}/v1/conversions"), &secret);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["org"], ORG);
    assert!(!body["data"].as_array().unwrap().is_empty());

    browser.click(r#"a[aria-label="Revoke Internal Dashboard"]"#);
    assert!(
        browser
            .text(".notice.error")
            .contains("permanently disables")
    );
    shot("04-revoke-confirm");
    browser.click("#confirm-revoke");
    assert!(browser.text(".notice.info").contains("API key revoked"));
    assert!(browser.text("#keys-table").contains("revoked"));
    shot("05-key-revoked");
    let (status, body) = api_get(&format!("{base}/v1/conversions"), &secret);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "revoked");

    // --- The plan switch: keys locked, and what the API then answers
    let kept = app
        .state
        .keys
        .create(
            ORG,
            "Zapier Integration",
            KeySettings {
                scopes: vec!["conversions:read".into()],
                ..KeySettings::default()
            },
        )
        .unwrap();
    browser.goto(&home);
    browser.click("#switch-plan");
    assert!(
        browser
            .text("#keys-locked")
            .contains("API keys are available on paid plans")
    );
    assert_eq!(browser.count("#create-key"), 0);
    shot("06-plan-locked");
    let (status, body) = api_get(&format!("{base}/v1/conversions"), kept.secret.expose());
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("plan_inactive"))
    );
    browser.click("#switch-plan");
    // The click may return before the server has answered the form: wait
    // for the page to show keys again before calling the API.
    browser.wait_until(&home, Duration::from_secs(10), |b| {
        b.count("#create-key") == 1
    });
    let (status, _) = api_get(&format!("{base}/v1/conversions"), kept.secret.expose());
    assert_eq!(status, 200);

    // --- A webhook to the local receiver ("Create Webhook" opens the form)
    assert_eq!(browser.property("#create-webhook-details", "open"), true);
    browser.fill("#webhook-url", &app.state.receiver_url);
    browser.click(r#"#create-webhook-form input[value="conversion.created"]"#);
    browser.click("#create-webhook");
    let signing = browser
        .property("#new-webhook-secret", "value")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(signing.starts_with("whsec_"), "{signing:?}");
    shot("07-webhook-secret-once");
    browser.click("#open-webhook");
    let endpoint_url = browser.url();
    let endpoint_url = endpoint_url.split('?').next().unwrap().to_owned();
    assert!(
        !browser.source().contains(&signing),
        "the secret is shown again"
    );

    // Send a test event and watch a 2xx attempt arrive in the history.
    browser.click("#send-test");
    assert!(browser.text(".notice.info").contains("Test event sent"));
    browser.wait_until(&endpoint_url, Duration::from_secs(20), |b| {
        b.count(r#"#history tr[data-state="delivered"]"#) > 0
    });
    let code = browser.text(r#"#history tr[data-state="delivered"] .code"#);
    assert!(code.starts_with('2'), "response code {code:?}");
    browser.click("#history details summary");
    assert!(browser.text("#history details").contains("HTTP 200"));
    assert!(
        browser.text("#history details").contains("verified"),
        "the receiver checked the signature"
    );
    shot("08-test-event-delivered");

    // --- Edit the event types
    browser.click(r#"#settings input[value="affiliate.created"]"#);
    browser.click(r#"#settings input[value="conversion.created"]"#);
    browser.click("#save-webhook");
    assert!(browser.text(".notice.info").contains("Webhook saved"));
    assert_eq!(
        browser.property(r#"#settings input[value="affiliate.created"]"#, "checked"),
        true
    );
    assert_eq!(
        browser.property(r#"#settings input[value="conversion.created"]"#, "checked"),
        false
    );
    let endpoints = app.state.registry.list(ORG).unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].event_types, ["affiliate.created"]);
    shot("09-event-types-edited");

    // The app's own event reaches the endpoint; the organization's log shows it.
    browser.goto(&home);
    browser.click("#simulate-affiliate");
    browser.wait_until(
        &format!("{base}/deliveries"),
        Duration::from_secs(20),
        |b| {
            b.source().contains("affiliate.created")
                && b.count(r#"#history tr[data-state="delivered"]"#) >= 2
        },
    );
    shot("10-organization-log");

    // --- Delete the webhook
    browser.goto(&endpoint_url);
    browser.click("#delete-webhook");
    assert!(browser.text(".notice.error").contains("cannot be undone"));
    shot("11-delete-confirm");
    browser.click("#confirm-delete");
    assert!(browser.text(".notice.info").contains("Webhook deleted"));
    assert!(app.state.registry.list(ORG).unwrap().is_empty());
    assert!(!browser.source().contains(&endpoints[0].id));
    shot("12-webhook-deleted");
}
