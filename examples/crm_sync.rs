//! The "Syncing with a CRM" pattern: a webhook receiver that turns
//! `affiliate.created` events into CRM contacts and `conversion.created`
//! events into CRM deals, exactly once each, although webhooks are delivered
//! at least once.
//!
//! Every request's signature is checked, then its `webhook-id` (the event id,
//! the same on every delivery attempt) is inserted into a `processed` table
//! **in the same SQLite transaction** as the contact or deal it creates. A
//! redelivered event finds its id already there and changes nothing. Other
//! event types are acknowledged with `204` and ignored.
//!
//! Run:
//!
//! * `cargo run --example crm_sync -- --demo`: the whole story in one
//!   process. keyhook (on a temporary database) emits an `affiliate.created`
//!   and a `conversion.created` to this receiver on 127.0.0.1. The receiver
//!   pretends its answer to the conversion was lost after it had committed
//!   (it answers 500), so keyhook's dispatcher delivers the same webhook
//!   again a second later, and the receiver must recognize it. Prints the CRM
//!   tables, and exits with status 0 only if each record exists once and the
//!   redelivery was detected as a duplicate.
//! * `WEBHOOK_SECRET=whsec_... cargo run --example crm_sync`: a standalone
//!   receiver, like the `receiver` example. `PORT` (default 8080, on
//!   127.0.0.1), `CRM_DB` (default `crm_sync.sqlite3`: a file, so that
//!   processed ids survive a restart), and `MAX_REQUESTS=n` to exit after `n`
//!   requests.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use keyhook::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, verify_headers};
use keyhook::{
    Database, DeliveryState, DestinationPolicy, Dispatcher, EndpointOptions, RetryPolicy,
    SigningSecret, WebhookRegistry,
};
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

const MAX_BODY_BYTES: u64 = 1024 * 1024;

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("--demo") => demo(),
        None => standalone(),
        Some(other) => Err(format!("unknown argument {other:?}; the only one is --demo").into()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crm_sync: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The CRM store
// ---------------------------------------------------------------------------

/// The receiver's own database: the CRM records and the webhook ids already
/// processed.
struct Crm {
    conn: Connection,
}

/// What became of one verified webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The record was created or updated, and the id recorded.
    Applied,
    /// This webhook id was processed before: nothing changed.
    Duplicate,
    /// Not an event type this sync handles.
    Ignored,
}

impl Crm {
    fn open(path: &Path) -> rusqlite::Result<Crm> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS processed (
                 webhook_id   TEXT PRIMARY KEY,
                 event_type   TEXT NOT NULL,
                 processed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             );
             CREATE TABLE IF NOT EXISTS contacts (
                 affiliate_id TEXT PRIMARY KEY,
                 email        TEXT,
                 name         TEXT,
                 updated_by   TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS deals (
                 conversion_id TEXT PRIMARY KEY,
                 affiliate_id  TEXT,
                 amount_cents  INTEGER,
                 status        TEXT,
                 updated_by    TEXT NOT NULL
             );",
        )?;
        Ok(Crm { conn })
    }

    /// Applies one verified webhook, at most once per `webhook_id`.
    ///
    /// # Errors
    ///
    /// [`ApplyError::BadEvent`] if the body is not the event this type
    /// promises; [`ApplyError::Database`] if SQLite fails (nothing was
    /// changed, and the sender's retry will try again).
    fn apply(&mut self, webhook_id: &str, body: &[u8]) -> Result<Outcome, ApplyError> {
        let envelope: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| ApplyError::BadEvent("body is not JSON"))?;
        let event_type = envelope["type"]
            .as_str()
            .ok_or(ApplyError::BadEvent("no \"type\""))?;
        let data = &envelope["data"];
        if !matches!(event_type, "affiliate.created" | "conversion.created") {
            return Ok(Outcome::Ignored);
        }

        // Why the id and the record share one transaction: if the id were
        // recorded in a separate step (or kept in memory), a crash between
        // the two steps would either lose the record for good (id saved
        // first: the redelivery is skipped) or create it twice (record saved
        // first: the redelivery applies it again). In one transaction both
        // happen or neither does, and the answer is sent only after the
        // commit, so an event whose answer never reached the sender is
        // recognized when it comes back. IMMEDIATE takes the write lock at
        // the start, so two receivers handling the same redelivery at once
        // are serialized instead of failing with SQLITE_BUSY on upgrade.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let first_time = tx.execute(
            "INSERT OR IGNORE INTO processed (webhook_id, event_type) VALUES (?1, ?2)",
            params![webhook_id, event_type],
        )? == 1;
        if !first_time {
            // Dropping `tx` rolls back; nothing was written anyway.
            return Ok(Outcome::Duplicate);
        }
        match event_type {
            "affiliate.created" => {
                let affiliate_id = data["affiliate_id"]
                    .as_str()
                    .ok_or(ApplyError::BadEvent("no data.affiliate_id"))?;
                // An upsert, not an insert: the contact may already exist
                // (created by hand in the CRM, or by an earlier import).
                tx.execute(
                    "INSERT INTO contacts (affiliate_id, email, name, updated_by)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (affiliate_id) DO UPDATE SET
                         email = excluded.email, name = excluded.name,
                         updated_by = excluded.updated_by",
                    params![
                        affiliate_id,
                        data["email"].as_str(),
                        data["name"].as_str(),
                        webhook_id
                    ],
                )?;
            }
            _ => {
                let conversion_id = data["conversion_id"]
                    .as_str()
                    .ok_or(ApplyError::BadEvent("no data.conversion_id"))?;
                tx.execute(
                    "INSERT INTO deals (conversion_id, affiliate_id, amount_cents, status, updated_by)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (conversion_id) DO UPDATE SET
                         affiliate_id = excluded.affiliate_id,
                         amount_cents = excluded.amount_cents,
                         status = excluded.status, updated_by = excluded.updated_by",
                    params![
                        conversion_id,
                        data["affiliate_id"].as_str(),
                        data["amount_cents"].as_i64(),
                        data["status"].as_str(),
                        webhook_id
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(Outcome::Applied)
    }

    fn print_tables(&self) -> rusqlite::Result<()> {
        println!("\nCRM contacts:");
        let mut stmt = self.conn.prepare(
            "SELECT affiliate_id, email, name, updated_by FROM contacts ORDER BY affiliate_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, email, name, by): (String, Option<String>, Option<String>, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let (email, name) = (email.unwrap_or_default(), name.unwrap_or_default());
            println!("  {id:<8} {email:<20} {name:<12} (from {by})");
        }
        println!("CRM deals:");
        let mut stmt = self.conn.prepare(
            "SELECT conversion_id, affiliate_id, amount_cents, status, updated_by
             FROM deals ORDER BY conversion_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, affiliate, cents, status, by): (
                String,
                Option<String>,
                Option<i64>,
                Option<String>,
                String,
            ) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
            let amount = cents.map_or("-".into(), |c| format!("{}.{:02}", c / 100, c % 100));
            let (affiliate, status) = (affiliate.unwrap_or_default(), status.unwrap_or_default());
            println!("  {id:<8} {affiliate:<8} {amount:>8} {status:<10} (from {by})");
        }
        println!("processed webhook ids:");
        let mut stmt = self
            .conn
            .prepare("SELECT webhook_id, event_type FROM processed ORDER BY processed_at")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, event_type): (String, String) = (r.get(0)?, r.get(1)?);
            println!("  {id}  {event_type}");
        }
        Ok(())
    }

    fn count(&self, table: &str) -> rusqlite::Result<i64> {
        self.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
    }

    fn deal_amount(&self, conversion_id: &str) -> rusqlite::Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT amount_cents FROM deals WHERE conversion_id = ?1",
                [conversion_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
    }
}

#[derive(Debug)]
enum ApplyError {
    /// Verified, but not the event this type promises: answered 400, so the
    /// sender's delivery history shows it.
    BadEvent(&'static str),
    /// The CRM database failed: answered 500, and the retry tries again.
    Database(rusqlite::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Database(e)
    }
}

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// What the receiver did with one request, for the log and the demo's checks.
#[derive(Debug)]
struct Handled {
    webhook_id: String,
    event_type: String,
    result: Result<Outcome, String>,
}

/// Demo only: pretend the answer to the first applied `conversion.created`
/// was lost (a timeout, a crash just after the commit) by answering 500.
struct LoseFirstConversionAnswer;

/// Verifies, applies and answers requests until `max_requests` were handled
/// or no request came for `idle_timeout`.
fn serve(
    server: &tiny_http::Server,
    secrets: &[SigningSecret],
    crm: &mut Crm,
    max_requests: Option<usize>,
    idle_timeout: Option<Duration>,
    mut lose_answer: Option<LoseFirstConversionAnswer>,
) -> Vec<Handled> {
    let mut handled = Vec::new();
    while max_requests.is_none_or(|max| handled.len() < max) {
        let request = match idle_timeout {
            Some(timeout) => match server.recv_timeout(timeout) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("crm_sync: accepting a connection failed: {e}");
                    continue;
                }
            },
            None => match server.recv() {
                Ok(request) => request,
                Err(e) => {
                    eprintln!("crm_sync: accepting a connection failed: {e}");
                    continue;
                }
            },
        };
        let (h, status, message) = handle(request, secrets, crm, &mut lose_answer);
        let line = match (&h.result, message) {
            (Ok(outcome), None) => format!("{outcome:?}"),
            (Ok(outcome), Some(m)) => format!("{outcome:?}, but {m}"),
            (Err(e), _) => format!("rejected: {e}"),
        };
        println!("{} {:<18} -> {status} {line}", h.webhook_id, h.event_type);
        handled.push(h);
    }
    handled
}

/// One request; returns what happened, the status answered and a note.
fn handle(
    mut request: tiny_http::Request,
    secrets: &[SigningSecret],
    crm: &mut Crm,
    lose_answer: &mut Option<LoseFirstConversionAnswer>,
) -> (Handled, u16, Option<&'static str>) {
    let header = |name: &str| -> Option<String> {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let webhook_id = header(HEADER_ID);
    let (ts, sig) = (header(HEADER_TIMESTAMP), header(HEADER_SIGNATURE));
    let mut handled = Handled {
        webhook_id: webhook_id.clone().unwrap_or_else(|| "-".into()),
        event_type: "-".into(),
        result: Err(String::new()),
    };
    let mut fail = |request: tiny_http::Request, status: u16, message: String| {
        respond(request, status, Some(&message));
        handled.result = Err(message);
    };

    let mut body = Vec::new();
    if *request.method() != tiny_http::Method::Post {
        fail(request, 405, "webhooks must be sent with POST".into());
        return (handled, 405, None);
    }
    let read = request
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut body);
    if read.is_err() || body.len() as u64 > MAX_BODY_BYTES {
        fail(request, 400, "unreadable or too large body".into());
        return (handled, 400, None);
    }
    if let Err(e) = verify_headers(
        |name| match name {
            HEADER_ID => webhook_id.as_deref(),
            HEADER_TIMESTAMP => ts.as_deref(),
            HEADER_SIGNATURE => sig.as_deref(),
            _ => None,
        },
        &body,
        secrets,
    ) {
        fail(request, 400, e.to_string());
        return (handled, 400, None);
    }
    // From here on the body is trusted.
    handled.event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into());
    let webhook_id = webhook_id.expect("verify_headers checked it is present");

    match crm.apply(&webhook_id, &body) {
        Ok(outcome) => {
            let lose = outcome == Outcome::Applied
                && handled.event_type == "conversion.created"
                && lose_answer.take().is_some();
            handled.result = Ok(outcome);
            if lose {
                respond(request, 500, Some("simulated: answer lost after commit"));
                return (
                    handled,
                    500,
                    Some("the demo answers 500 as if the answer was lost"),
                );
            }
            // Duplicates and ignored types are successes too: a non-2xx
            // answer would only make the sender retry them for days.
            respond(request, 204, None);
            (handled, 204, None)
        }
        Err(ApplyError::BadEvent(reason)) => {
            respond(request, 400, Some(reason));
            handled.result = Err(reason.into());
            (handled, 400, None)
        }
        Err(ApplyError::Database(e)) => {
            // Rolled back: nothing recorded, so the sender's retry is safe.
            eprintln!("crm_sync: database error: {e}");
            respond(request, 500, Some("internal error"));
            handled.result = Err("database error".into());
            (handled, 500, None)
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, error: Option<&str>) {
    let result = match error {
        None => request.respond(tiny_http::Response::empty(status)),
        Some(message) => {
            let body = serde_json::json!({ "error": message }).to_string();
            let content_type = tiny_http::Header::from_bytes("Content-Type", "application/json")
                .expect("a valid header");
            request.respond(
                tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(content_type),
            )
        }
    };
    if let Err(e) = result {
        eprintln!("crm_sync: sending the answer failed: {e}");
    }
}

// ---------------------------------------------------------------------------
// Standalone receiver
// ---------------------------------------------------------------------------

fn standalone() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let secrets = std::env::var("WEBHOOK_SECRET").map_err(|_| {
        "WEBHOOK_SECRET is not set; set it to the endpoint's signing secret (whsec_...), \
         or run with --demo"
    })?;
    let secrets = secrets
        .split_ascii_whitespace()
        .map(|s| {
            SigningSecret::parse(s)
                .map_err(|e| format!("WEBHOOK_SECRET is not a signing secret: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if secrets.is_empty() {
        return Err("WEBHOOK_SECRET is empty; set it to the endpoint's signing secret".into());
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
    let crm_path = std::env::var("CRM_DB").unwrap_or_else(|_| "crm_sync.sqlite3".into());
    let mut crm = Crm::open(Path::new(&crm_path))
        .map_err(|e| format!("cannot open the CRM database {crm_path}: {e}"))?;
    let server = tiny_http::Server::http(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    println!(
        "crm_sync: CRM database {crm_path}; listening on http://{}/",
        server.server_addr()
    );
    serve(&server, &secrets, &mut crm, max_requests, None, None);
    crm.print_tables()?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// Demo: keyhook sends, this receiver syncs
// ---------------------------------------------------------------------------

fn demo() -> Result<ExitCode, Box<dyn std::error::Error>> {
    const ORG: &str = "org_acme";
    let dir = tempfile::tempdir()?;
    let db = Database::open(dir.path().join("keyhook.sqlite3"))?;
    let registry = WebhookRegistry::builder(&db)
        // Development only: a receiver on 127.0.0.1 over plain http.
        .destination_policy(
            DestinationPolicy::new()
                .allow_http(true)
                .allow_loopback(true),
        )
        .build();
    for (name, description) in [
        ("conversion.created", "A new referred purchase is detected"),
        (
            "conversion.updated",
            "A conversion status changes (approved, rejected, fraud)",
        ),
        (
            "affiliate.created",
            "A new referrer is added to your program",
        ),
        (
            "affiliate.updated",
            "An affiliate's status or details change",
        ),
        ("payout.created", "A new payout batch is created"),
    ] {
        registry.register_event_type(name, description)?;
    }

    let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?;
    let url = format!("http://{}/crm/webhooks", server.server_addr());
    let webhook = registry.create(
        ORG,
        &url,
        &["conversion.created", "affiliate.created"],
        EndpointOptions::default(),
    )?;
    println!("webhook {} -> {url}", webhook.endpoint.id);

    let mut crm = Crm::open(&dir.path().join("crm.sqlite3"))?;
    let secrets = vec![webhook.secret.clone()];

    // Retry after one second instead of the production schedule's 5 s, so
    // the redelivery comes quickly.
    let dispatcher = Dispatcher::builder(&db, &registry)
        .retry_policy(
            RetryPolicy::new([
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2),
            ])
            .jitter(0.0),
        )
        .start()?;
    let affiliate_event = dispatcher.emit(
        ORG,
        "affiliate.created",
        &serde_json::json!({"affiliate_id": "af_ana", "email": "ana@example.com", "name": "Ana Lima"}),
    )?;
    let conversion_event = dispatcher.emit(
        ORG,
        "conversion.created",
        &serde_json::json!({
            "conversion_id": "cv_1001", "affiliate_id": "af_ana",
            "amount_cents": 4900, "status": "pending",
        }),
    )?;
    // Not subscribed: keyhook does not send it to this endpoint at all.
    dispatcher.emit(
        ORG,
        "payout.created",
        &serde_json::json!({"payout_id": "po_1"}),
    )?;
    println!(
        "emitted {affiliate_event} (affiliate.created), {conversion_event} (conversion.created)\n"
    );

    // Three requests: the affiliate, the conversion, and its redelivery.
    let handled = serve(
        &server,
        &secrets,
        &mut crm,
        Some(3),
        Some(Duration::from_secs(15)),
        Some(LoseFirstConversionAnswer),
    );
    dispatcher.shutdown(Duration::from_secs(10))?;
    crm.print_tables()?;

    let mut failures = Vec::new();
    let outcomes = |id: &str| -> Vec<Result<Outcome, String>> {
        handled
            .iter()
            .filter(|h| h.webhook_id == id)
            .map(|h| h.result.clone())
            .collect()
    };
    if outcomes(&affiliate_event) != [Ok(Outcome::Applied)] {
        failures.push(format!(
            "affiliate.created: {:?}",
            outcomes(&affiliate_event)
        ));
    }
    if outcomes(&conversion_event) != [Ok(Outcome::Applied), Ok(Outcome::Duplicate)] {
        failures.push(format!(
            "conversion.created was not applied once then detected as a duplicate: {:?}",
            outcomes(&conversion_event)
        ));
    }
    for (table, expected) in [("contacts", 1), ("deals", 1), ("processed", 2)] {
        let found = crm.count(table)?;
        if found != expected {
            failures.push(format!("{table} has {found} rows, expected {expected}"));
        }
    }
    if crm.deal_amount("cv_1001")? != Some(4900) {
        failures.push("deal cv_1001 is missing or has the wrong amount".into());
    }
    // keyhook's side of the story: delivered, after two attempts.
    for d in dispatcher.event_deliveries(ORG, &conversion_event)? {
        println!(
            "\nkeyhook's history of {}: {:?} after {} attempt(s), statuses {:?}",
            d.event_id,
            d.state,
            d.attempts.len(),
            d.attempts.iter().map(|a| a.status_code).collect::<Vec<_>>()
        );
        if d.state != DeliveryState::Delivered || d.attempts.len() != 2 {
            failures.push(format!(
                "keyhook's delivery of the conversion is {:?} after {} attempts",
                d.state,
                d.attempts.len()
            ));
        }
    }

    if failures.is_empty() {
        println!("\ncrm_sync demo: each record exists once and the redelivery was detected");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}
