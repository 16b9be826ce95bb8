//! The "Custom Analytics" pattern: a small HTTP API that customers call with
//! their keyhook API keys to pull conversion data into their own dashboards.
//!
//! On start it creates a temporary database, turns API keys on for one
//! organization's plan, creates two keys (one with the `conversions:read`
//! scope, one without), prints them with a `curl` line to try, and serves
//! `GET /v1/conversions` on 127.0.0.1. Every request is authenticated from
//! `Authorization: Bearer <key>` with [`ApiKeyStore::verify`], then the scope
//! is checked:
//!
//! | outcome                                  | answer                                          |
//! |------------------------------------------|-------------------------------------------------|
//! | key with the scope                       | `200` `{"data": [...]}` (that key's org only)   |
//! | no/garbled header, malformed, unknown, revoked or expired key | `401` `{"error":"invalid_api_key","message":...}` and `WWW-Authenticate: Bearer` |
//! | the org's plan has no API keys           | `403` `{"error":"plan_inactive",...}`           |
//! | key without `conversions:read`           | `403` `{"error":"insufficient_scope","required":"conversions:read"}` |
//! | another path                             | `404`                                           |
//! | database failure                         | `500` `{"error":"internal_error"}` (details go to stderr only) |
//!
//! Run:
//!
//! * `cargo run --example api_server`: serves on `PORT` (default 8080) until
//!   stopped, or until `MAX_REQUESTS=n` requests were answered.
//! * `cargo run --example api_server -- --self-test`: serves on a free port
//!   in a thread, calls it with `ureq` for every case above, and exits with
//!   status 0 only if every answer is the expected one.

use std::process::ExitCode;
use std::time::Duration;

use keyhook::{ApiKeyStore, CreatedKey, Database, Error, KeySettings, Rejection, VerifiedKey};

const ORG: &str = "org_acme";
const SCOPE: &str = "conversions:read";

fn main() -> ExitCode {
    let self_test = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--self-test") => true,
        Some(other) => {
            eprintln!("api_server: unknown argument {other:?}; the only one is --self-test");
            return ExitCode::from(2);
        }
    };
    match run(self_test) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("api_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(self_test: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // The temporary directory and its database go away when `dir` drops.
    let dir = tempfile::tempdir()?;
    let db = Database::open(dir.path().join("api.sqlite3"))?;
    let keys = ApiKeyStore::builder(&db).prefix("vr").build()?;

    // API keys are a paid-plan feature: the host's billing code turns them on.
    keys.set_api_keys_enabled(ORG, true)?;
    let reader = keys.create(
        ORG,
        "Internal Dashboard",
        KeySettings {
            scopes: vec![SCOPE.into()],
            // The host's own data about the key, returned by `verify`.
            metadata: Some(serde_json::json!({"created_by": "usr_ana"})),
            ..KeySettings::default()
        },
    )?;
    let unscoped = keys.create(ORG, "Zapier Integration", KeySettings::default())?;

    if self_test {
        return self_test_run(&keys, &reader, &unscoped);
    }

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT must be a number from 0 to 65535, not {p:?}"))?,
        Err(_) => 8080,
    };
    let max_requests: Option<usize> = match std::env::var("MAX_REQUESTS") {
        Ok(n) => Some(
            n.parse()
                .map_err(|_| format!("MAX_REQUESTS must be a whole number, not {n:?}"))?,
        ),
        Err(_) => None,
    };
    let server = tiny_http::Server::http(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = server.server_addr();

    // Printed for the demo only: a real product shows a key once, to its creator.
    println!("API keys for {ORG} (shown once):");
    println!("  with {SCOPE}: {}", reader.secret.expose());
    println!("  without scopes:        {}", unscoped.secret.expose());
    println!("\nTry:");
    println!(
        "  curl -i -H 'Authorization: Bearer {}' http://{addr}/v1/conversions",
        reader.secret.expose()
    );
    println!(
        "  curl -i -H 'Authorization: Bearer {}' http://{addr}/v1/conversions",
        unscoped.secret.expose()
    );
    println!("\nlistening on http://{addr}/");
    serve(&server, &keys, max_requests);
    Ok(ExitCode::SUCCESS)
}

/// Answers requests until `max_requests` were answered, or the server is
/// unblocked.
fn serve(server: &tiny_http::Server, keys: &ApiKeyStore, max_requests: Option<usize>) {
    let mut answered = 0;
    while max_requests.is_none_or(|max| answered < max) {
        // `recv` fails when the server is unblocked (the self-test's stop).
        let Ok(request) = server.recv() else { return };
        let reply = handle(
            keys,
            request.method(),
            request.url(),
            &authorization(&request),
        );
        println!("{} {} -> {}", request.method(), request.url(), reply.status);
        let _ = request.respond(reply.into_response());
        answered += 1;
    }
}

/// The `Authorization` header's value, if any (names are case-insensitive).
fn authorization(request: &tiny_http::Request) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_owned())
}

/// An answer: status, JSON body and any extra headers.
struct Reply {
    status: u16,
    body: serde_json::Value,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut response = tiny_http::Response::from_string(self.body.to_string())
            .with_status_code(self.status)
            .with_header(
                tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .expect("a valid header"),
            );
        for (name, value) in self.headers {
            let header = tiny_http::Header::from_bytes(name, value).expect("a valid header");
            response.add_header(header);
        }
        response
    }
}

/// Routes, authenticates and authorizes one request.
fn handle(
    keys: &ApiKeyStore,
    method: &tiny_http::Method,
    url: &str,
    authorization: &Option<String>,
) -> Reply {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    // The route decides which scope is needed, so routing comes first.
    let required_scope = match path {
        "/v1/conversions" => SCOPE,
        _ => {
            return Reply::json(
                404,
                serde_json::json!({"error": "not_found", "message": format!("no route for {path}")}),
            );
        }
    };
    if *method != tiny_http::Method::Get {
        return Reply::json(
            405,
            serde_json::json!({"error": "method_not_allowed", "message": "use GET"}),
        )
        .header("Allow", "GET");
    }
    let caller = match authenticate(keys, authorization.as_deref()) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    if !caller.has_scope(required_scope) {
        return Reply::json(
            403,
            serde_json::json!({"error": "insufficient_scope", "required": required_scope}),
        )
        .header(
            "WWW-Authenticate",
            format!(r#"Bearer error="insufficient_scope", scope="{required_scope}""#),
        );
    }
    // Everything below acts for `caller.org` only: the key decides the tenant,
    // never a parameter of the request. The key's name and the host's
    // metadata came with it: no second lookup.
    let created_by = caller
        .metadata
        .as_ref()
        .and_then(|m| m.get("created_by"))
        .cloned()
        .unwrap_or_default();
    Reply::json(
        200,
        serde_json::json!({
            "org": caller.org,
            "key": {"name": caller.name, "created_by": created_by},
            "data": conversions(&caller.org),
        }),
    )
}

/// The caller behind `Authorization: Bearer <key>`, or the answer to give.
fn authenticate(keys: &ApiKeyStore, authorization: Option<&str>) -> Result<VerifiedKey, Reply> {
    let unauthorized = |message: &str| {
        Reply::json(
            401,
            serde_json::json!({"error": "invalid_api_key", "message": message}),
        )
        .header("WWW-Authenticate", "Bearer")
    };
    let Some(value) = authorization else {
        return Err(unauthorized(
            "missing Authorization header; send Authorization: Bearer <API key>",
        ));
    };
    // The scheme name is case-insensitive (RFC 9110); the key is not.
    let key = match value.trim().split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
        _ => {
            return Err(unauthorized(
                "the Authorization header must be: Bearer <API key>",
            ));
        }
    };
    match keys.verify(key) {
        Ok(caller) => Ok(caller),
        Err(e) => Err(match e.rejection() {
            Some(Rejection::Malformed) => unauthorized("this is not a valid API key"),
            Some(Rejection::Unknown) => unauthorized("no such API key"),
            Some(Rejection::Revoked) => unauthorized("this API key has been revoked"),
            Some(Rejection::Expired) => unauthorized("this API key has expired"),
            Some(Rejection::PlanInactive) => Reply::json(
                403,
                serde_json::json!({
                    "error": "plan_inactive",
                    "message": "API keys are not included in this organization's current plan",
                }),
            ),
            None => internal_error(&e),
        }),
    }
}

/// A 500 that tells the caller nothing; the details go to the server's log.
fn internal_error(e: &Error) -> Reply {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("api_server: internal error: {message}");
    Reply::json(500, serde_json::json!({"error": "internal_error"}))
}

/// Fake data standing in for the host's own tables, filtered by tenant.
fn conversions(org: &str) -> Vec<serde_json::Value> {
    let all = [
        ("cv_1001", ORG, "af_ana", 4900, "approved"),
        ("cv_1002", ORG, "af_ben", 12900, "pending"),
        ("cv_1003", "org_other", "af_zoe", 999, "approved"),
        ("cv_1004", ORG, "af_ana", 2500, "rejected"),
    ];
    all.iter()
        .filter(|c| c.1 == org)
        .map(|&(id, _, affiliate, amount_cents, status)| {
            serde_json::json!({
                "id": id,
                "affiliate_id": affiliate,
                "amount_cents": amount_cents,
                "currency": "USD",
                "status": status,
            })
        })
        .collect()
}

/// Starts the server on a free port in a thread and checks every answer.
fn self_test_run(
    keys: &ApiKeyStore,
    reader: &CreatedKey,
    unscoped: &CreatedKey,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // A key to revoke, and one in an organization whose plan lapses.
    let revoked = keys.create(ORG, "Old script", KeySettings::default())?;
    keys.revoke(ORG, &revoked.key.id)?;
    keys.set_api_keys_enabled("org_lapsed", true)?;
    let lapsed = keys.create(
        "org_lapsed",
        "Dashboard",
        KeySettings {
            scopes: vec![SCOPE.into()],
            ..KeySettings::default()
        },
    )?;
    keys.set_api_keys_enabled("org_lapsed", false)?;
    let expiring = keys.create(
        ORG,
        "Trial",
        KeySettings {
            expires_at: Some(std::time::SystemTime::now() + Duration::from_millis(200)),
            ..KeySettings::default()
        },
    )?;
    std::thread::sleep(Duration::from_millis(300));
    // Well formed (right prefix, length and checksum) but never issued: take a
    // real key's shape from another store that shares no database.
    let other_db = Database::open_in_memory()?;
    let other = ApiKeyStore::builder(&other_db).prefix("vr").build()?;
    other.set_api_keys_enabled(ORG, true)?;
    let unknown = other.create(ORG, "Elsewhere", KeySettings::default())?;

    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?;
    let base = format!("http://{}", server.server_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Every status is an answer to check, not an error.
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();

    let bearer = |key: &CreatedKey| format!("Bearer {}", key.secret.expose());
    let cases: Vec<Case> = vec![
        Case::new("no Authorization header", "/v1/conversions", None, 401).error("invalid_api_key"),
        Case::new(
            "a garbage key",
            "/v1/conversions",
            Some("Bearer not-a-key".into()),
            401,
        )
        .error("invalid_api_key"),
        Case::new(
            "Basic instead of Bearer",
            "/v1/conversions",
            Some("Basic dXNlcjpwYXNz".into()),
            401,
        )
        .error("invalid_api_key"),
        Case::new(
            "a well-formed key that was never issued",
            "/v1/conversions",
            Some(bearer(&unknown)),
            401,
        )
        .error("invalid_api_key"),
        Case::new(
            "a key with conversions:read",
            "/v1/conversions",
            Some(bearer(reader)),
            200,
        ),
        Case::new(
            "a key with conversions:read, lower-case scheme",
            "/v1/conversions?limit=10",
            Some(format!("bearer {}", reader.secret.expose())),
            200,
        ),
        Case::new(
            "a key without the scope",
            "/v1/conversions",
            Some(bearer(unscoped)),
            403,
        )
        .error("insufficient_scope"),
        Case::new(
            "a revoked key",
            "/v1/conversions",
            Some(bearer(&revoked)),
            401,
        )
        .error("invalid_api_key"),
        Case::new(
            "an expired key",
            "/v1/conversions",
            Some(bearer(&expiring)),
            401,
        )
        .error("invalid_api_key"),
        Case::new(
            "a key whose org's plan lapsed",
            "/v1/conversions",
            Some(bearer(&lapsed)),
            403,
        )
        .error("plan_inactive"),
        Case::new("an unknown path", "/v1/payouts", Some(bearer(reader)), 404),
    ];

    let mut failures = Vec::new();
    let mut messages_401 = Vec::new();
    std::thread::scope(|scope| {
        let server = &server;
        let handle = scope.spawn(move || serve(server, keys, None));
        for case in &cases {
            match case.check(&agent, &base) {
                Ok(body) => {
                    println!("  ok    {}", case.what);
                    if case.status == 401 {
                        messages_401.push(body["message"].as_str().unwrap_or("").to_owned());
                    }
                    if case.status == 200 {
                        let data = body["data"].as_array().map_or(0, Vec::len);
                        if body["org"] != ORG
                            || data != 3
                            || body["key"]["name"] != "Internal Dashboard"
                            || body["key"]["created_by"] != "usr_ana"
                        {
                            failures.push(format!("{}: wrong data: {body}", case.what));
                        }
                    }
                }
                Err(e) => {
                    println!("  FAIL  {}: {e}", case.what);
                    failures.push(format!("{}: {e}", case.what));
                }
            }
        }
        server.unblock();
        let _ = handle.join();
    });

    // Each reason has its own message, so a user can tell what to fix.
    let mut distinct = messages_401.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != messages_401.len() {
        failures.push(format!("401 messages are not distinct: {messages_401:?}"));
    }

    if failures.is_empty() {
        println!("self-test: all {} cases answered as expected", cases.len());
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// One request of the self-test and the answer it expects.
struct Case {
    what: &'static str,
    path: &'static str,
    authorization: Option<String>,
    status: u16,
    error: Option<&'static str>,
}

impl Case {
    fn new(
        what: &'static str,
        path: &'static str,
        authorization: Option<String>,
        status: u16,
    ) -> Case {
        Case {
            what,
            path,
            authorization,
            status,
            error: None,
        }
    }

    fn error(mut self, code: &'static str) -> Case {
        self.error = Some(code);
        self
    }

    /// Sends the request; the JSON body when the answer is as expected.
    fn check(&self, agent: &ureq::Agent, base: &str) -> Result<serde_json::Value, String> {
        let mut request = agent.get(format!("{base}{}", self.path));
        if let Some(value) = &self.authorization {
            request = request.header("Authorization", value);
        }
        let response = request.call().map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response
            .into_body()
            .read_to_string()
            .map_err(|e| format!("reading the body failed: {e}"))?;
        let body: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| format!("body is not JSON: {text:?}"))?;
        if status != self.status {
            return Err(format!("status {status}, expected {}: {body}", self.status));
        }
        if let Some(code) = self.error
            && body["error"] != code
        {
            return Err(format!("error {}, expected {code:?}", body["error"]));
        }
        if self.error == Some("insufficient_scope") && body["required"] != SCOPE {
            return Err(format!("no \"required\": {SCOPE:?} in {body}"));
        }
        if status == 401 && !challenge.is_some_and(|c| c.starts_with("Bearer")) {
            return Err("401 without WWW-Authenticate: Bearer".into());
        }
        Ok(body)
    }
}
