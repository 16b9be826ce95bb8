//! A webhook receiver: what a customer's server does with the requests keyhook
//! sends. It checks each request's Standard Webhooks signature with
//! [`keyhook::signing::verify_headers`], answers `204 No Content` when it
//! verifies and `400 Bad Request` with `{"error": "..."}` when it does not, and
//! prints one line per request.
//!
//! Run it with the endpoint's signing secret (shown when the webhook is
//! created):
//!
//! ```text
//! WEBHOOK_SECRET=whsec_... PORT=8080 cargo run --example receiver
//! ```
//!
//! * `WEBHOOK_SECRET` (required): the `whsec_…` secret. While a secret is
//!   being rotated, give the old and the new one separated by a space; a
//!   request signed with either verifies.
//! * `PORT` (default 8080): the port to listen on, on 127.0.0.1. `PORT=0`
//!   picks a free port and prints it.
//! * `--once`, or `MAX_REQUESTS=n`: exit after one (or `n`) requests, so a
//!   script can run it in the background and wait for it.
//!
//! This receiver only verifies. A real one must also deduplicate on the
//! `webhook-id` header, because delivery is at least once: see the
//! `crm_sync` example.

use std::io::Read as _;
use std::process::ExitCode;

use keyhook::SigningSecret;
use keyhook::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, verify_headers};

/// Larger bodies are refused unread; keyhook's own default limit is 256 KiB.
const MAX_BODY_BYTES: u64 = 1024 * 1024;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("receiver: {message}");
            return ExitCode::from(2);
        }
    };
    let server = match tiny_http::Server::http(("127.0.0.1", config.port)) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("receiver: cannot listen on 127.0.0.1:{}: {e}", config.port);
            return ExitCode::FAILURE;
        }
    };
    let addr = server.server_addr();
    println!("receiver: listening on http://{addr}/ (POST webhooks to any path)");

    let mut handled = 0;
    while config.max_requests.is_none_or(|max| handled < max) {
        let request = match server.recv() {
            Ok(request) => request,
            Err(e) => {
                eprintln!("receiver: accepting a connection failed: {e}");
                continue;
            }
        };
        handled += 1;
        handle(request, &config.secrets);
    }
    ExitCode::SUCCESS
}

struct Config {
    secrets: Vec<SigningSecret>,
    port: u16,
    max_requests: Option<usize>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let mut once = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--once" => once = true,
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; the only one is --once"
                    ));
                }
            }
        }
        let secrets = std::env::var("WEBHOOK_SECRET").map_err(|_| {
            "WEBHOOK_SECRET is not set; set it to the endpoint's signing secret (whsec_...)"
                .to_owned()
        })?;
        let secrets = secrets
            .split_ascii_whitespace()
            .map(|s| {
                // The error names what is wrong but never contains the secret.
                SigningSecret::parse(s)
                    .map_err(|e| format!("WEBHOOK_SECRET is not a signing secret: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err("WEBHOOK_SECRET is empty; set it to the endpoint's signing secret".into());
        }
        let port = match std::env::var("PORT") {
            Ok(p) => p
                .parse()
                .map_err(|_| format!("PORT must be a number from 0 to 65535, not {p:?}"))?,
            Err(_) => 8080,
        };
        let max_requests =
            match std::env::var("MAX_REQUESTS") {
                Ok(n) => Some(n.parse().map_err(|_| {
                    format!("MAX_REQUESTS must be a positive whole number, not {n:?}")
                })?),
                Err(_) => None,
            };
        let max_requests = if once { Some(1) } else { max_requests };
        Ok(Config {
            secrets,
            port,
            max_requests,
        })
    }
}

/// Verifies one request, answers it and prints one line about it.
fn handle(mut request: tiny_http::Request, secrets: &[SigningSecret]) {
    let header = |name: &str| -> Option<String> {
        // HTTP header names are case-insensitive; tiny_http keeps them as sent.
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let webhook_id = header(HEADER_ID);
    let (ts, sig) = (header(HEADER_TIMESTAMP), header(HEADER_SIGNATURE));
    let shown_id = webhook_id.as_deref().unwrap_or("-").to_owned();

    if *request.method() != tiny_http::Method::Post {
        let method = request.method().to_string();
        println!("{shown_id} - rejected: method {method} (webhooks are POSTed)");
        respond_error(request, 405, "webhooks must be sent with POST");
        return;
    }
    if request
        .body_length()
        .is_some_and(|n| n as u64 > MAX_BODY_BYTES)
    {
        println!("{shown_id} - rejected: body too large");
        respond_error(request, 413, "body too large");
        return;
    }
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut body);
    if let Err(e) = read {
        println!("{shown_id} - rejected: could not read the body: {e}");
        respond_error(request, 400, "could not read the body");
        return;
    }
    if body.len() as u64 > MAX_BODY_BYTES {
        println!("{shown_id} - rejected: body too large");
        respond_error(request, 413, "body too large");
        return;
    }

    // The signature covers the raw bytes: verify before parsing, and never
    // re-serialize the body before verifying it.
    let verified = verify_headers(
        |name| match name {
            HEADER_ID => webhook_id.as_deref(),
            HEADER_TIMESTAMP => ts.as_deref(),
            HEADER_SIGNATURE => sig.as_deref(),
            _ => None,
        },
        &body,
        secrets,
    );
    // The type is read for the log line only; an unverified body is not trusted.
    let event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned());
    match verified {
        Ok(()) => {
            println!("{shown_id} {event_type} verified");
            // Acknowledge fast (keyhook waits 10 s at most); do slow work after.
            let _ = request.respond(tiny_http::Response::empty(204));
        }
        Err(e) => {
            println!("{shown_id} {event_type} rejected: {e}");
            respond_error(request, 400, &e.to_string());
        }
    }
}

fn respond_error(request: tiny_http::Request, status: u16, message: &str) {
    let body = serde_json::json!({ "error": message }).to_string();
    let content_type =
        tiny_http::Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(content_type);
    let _ = request.respond(response);
}
