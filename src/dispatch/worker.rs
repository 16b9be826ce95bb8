//! The worker loop: claim, sign, send, record; sleep until woken or due.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::db::{duration_ms, now_ms};
use crate::signing::{Signer, sign};

use super::Shared;
use super::http::{self, Request, Response, redacted_target};
use super::queue::{self, Claimed, Lane, Next};
use super::retry::parse_retry_after;

pub(crate) fn run(shared: Arc<Shared>, lane: Lane) {
    while !shared.signal.stopping() {
        let seen = shared.signal.generation();
        match queue::claim(
            &shared.db,
            lane,
            shared.lease_ms,
            shared.config.limited_in_flight,
        ) {
            Ok(Some(claimed)) => attempt(&shared, &claimed),
            Ok(None) => {
                let wait = idle_wait(&shared);
                shared.signal.wait(seen, wait);
            }
            Err(e) => {
                log::error!("keyhook: claiming a delivery failed: {e}");
                shared.signal.wait(seen, Duration::from_millis(500));
            }
        }
    }
}

/// How long an idle worker sleeps: until the next due delivery, but never
/// longer than the poll interval (which bounds how late work from another
/// process is seen).
fn idle_wait(shared: &Shared) -> Duration {
    let poll = shared.config.poll_interval;
    match queue::next_due(&shared.db) {
        Ok(Some(due)) => {
            let until = due - now_ms();
            if until <= 0 {
                // Due but not claimable: its endpoint is at its in-flight
                // limit. A completion wakes us; poll gently meanwhile.
                poll.min(Duration::from_millis(50))
            } else {
                poll.min(Duration::from_millis(until as u64))
            }
        }
        Ok(None) => poll,
        Err(_) => poll,
    }
}

fn attempt(shared: &Shared, claimed: &Claimed) {
    let response = deliver(shared, claimed);
    let next = decide(shared, claimed, &response);
    log_attempt(claimed, &response, next);
    match queue::complete(&shared.db, claimed, &response, next, false) {
        Ok(true) => {}
        Ok(false) => log::warn!(
            "keyhook: delivery of {} to {} outlived its lease; recorded, not applied",
            claimed.event_id,
            claimed.endpoint_id
        ),
        Err(e) => log::error!(
            "keyhook: recording the attempt of {} to {} failed: {e}; it will be retried when its lease ends",
            claimed.event_id,
            claimed.endpoint_id
        ),
    }
    if !response.is_success() {
        // A slot at a limited endpoint is free again.
        shared.signal.notify_one();
    }
    if let Some(observer) = &shared.observer {
        observer(&super::AttemptReport {
            event_id: &claimed.event_id,
            endpoint_id: &claimed.endpoint_id,
            org: &claimed.org,
            attempt: claimed.attempt,
            status: response.status,
            error: response.error,
            outcome: next,
        });
    }
}

/// Signs with every current secret and sends.
pub(crate) fn deliver(shared: &Shared, claimed: &Claimed) -> Response {
    let timestamp = now_ms() / 1000;
    let signers: Vec<Signer> = claimed.secrets.iter().map(Signer::new).collect();
    let signature = sign(&signers, &claimed.event_id, timestamp, &claimed.body);
    http::send(
        &shared.agent,
        &Request {
            url: &claimed.url,
            headers: &claimed.headers,
            msg_id: &claimed.event_id,
            timestamp,
            signature: &signature,
            body: &claimed.body,
        },
        shared.config.response_excerpt_limit,
    )
}

fn decide(shared: &Shared, claimed: &Claimed, response: &Response) -> Next {
    if response.is_success() {
        return Next::Delivered;
    }
    if response.is_gone() {
        return Next::Gone;
    }
    let retry_after = response.retry_after.as_deref().and_then(parse_retry_after);
    let unit: f64 = rand::rng().random();
    match shared.config.retry.next_delay(
        claimed.attempt,
        response.is_throttled(),
        retry_after,
        unit,
    ) {
        Some(delay) => Next::RetryAt(now_ms() + duration_ms(delay)),
        None => Next::Failed,
    }
}

fn log_attempt(claimed: &Claimed, response: &Response, next: Next) {
    let target = redacted_target(&claimed.url);
    match next {
        Next::Delivered => log::debug!(
            "keyhook: delivered {} to {} ({target}) attempt {} status {} in {:?}",
            claimed.event_id,
            claimed.endpoint_id,
            claimed.attempt,
            response.status.unwrap_or(0),
            response.duration
        ),
        Next::RetryAt(at) => log::info!(
            "keyhook: attempt {} of {} to {} ({target}) failed ({}{}); retry in {} ms",
            claimed.attempt,
            claimed.event_id,
            claimed.endpoint_id,
            response.error.map(|e| e.as_str()).unwrap_or("?"),
            response.status.map(|s| format!(" {s}")).unwrap_or_default(),
            at - now_ms()
        ),
        Next::Failed => log::warn!(
            "keyhook: delivery of {} to {} ({target}) failed for good after {} attempts",
            claimed.event_id,
            claimed.endpoint_id,
            claimed.attempt
        ),
        Next::Gone => log::warn!(
            "keyhook: endpoint {} ({target}) answered 410 Gone; disabled",
            claimed.endpoint_id
        ),
    }
}
