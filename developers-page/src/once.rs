//! Single-use form nonces for the forms whose answer shows a secret once:
//! "Create API key", "Roll key", "Create webhook" and "Rotate secret".
//!
//! Those answers are the response to a POST (secrets never go in a URL), so
//! reloading the page makes the browser send the POST again. Without a
//! nonce that would create a second key or endpoint, or rotate again. So
//! each such form carries a hidden `once` field, and a nonce is accepted
//! once: a second submission changes nothing and gets a **409 Conflict**
//! page saying the form was already submitted and the secret cannot be
//! shown again.
//!
//! A nonce is `{random}.{issued}.{mac}`: 128 random bits (hex), the seconds
//! since this process started, and an HMAC-SHA256 (keyhook's `v1` webhook
//! signer, so no new dependency) over those two, the browser's CSRF token
//! and what the form makes, under a key made at startup and never stored.
//! So a nonce cannot be guessed or forged, works only with the CSRF cookie
//! of the browser it was rendered for (the double-submit design of
//! `csrf.rs` has no other server-side session), and only on the kind of
//! form it was made for. A form older than [`TTL`] is refused (reload the
//! page for a new one); so is a form rendered before a restart, since the
//! key changed, which keeps the in-memory record of used nonces sufficient.
//!
//! Used nonces are kept in a map ordered by time of use: an entry is dropped
//! [`TTL`] after its use (its nonce is expired by then, since it was used
//! after it was issued), and at most [`CAP`] are kept, the oldest dropped
//! first when full. Memory is bounded; the price is that a flood of more
//! than [`CAP`] submissions within an hour would let the oldest of those
//! forms through once more.
//!
//! The nonce is marked used before the change is made, so two submissions
//! racing (a double click, a reload while the first is in flight) make one
//! change. If the change fails (a bad field, say), the mark is removed, so
//! the visitor can fix the form and send it again. The [`Claim`] is moved
//! into the blocking call that makes the change, so a visitor who cancels
//! the request mid-way cannot free it while the change goes ahead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use keyhook::signing::{Signer, SigningSecret};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::csrf::Form;
use crate::errors::PageError;

/// The form field's name.
pub const FIELD: &str = "once";
/// How long a rendered form stays valid, and how long a used nonce is kept.
pub const TTL: Duration = Duration::from_secs(3600);
/// The most used nonces kept.
pub const CAP: usize = 100_000;

/// What a show-once form makes: it picks the message of the "already
/// submitted" page, and a nonce made for one kind is refused by the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Makes {
    /// An API key (create, roll).
    ApiKey,
    /// A webhook signing secret (create webhook, rotate).
    SigningSecret,
}

impl Makes {
    fn code(self) -> &'static str {
        match self {
            Makes::ApiKey => "key",
            Makes::SigningSecret => "secret",
        }
    }

    fn already_submitted(self) -> &'static str {
        match self {
            Makes::ApiKey => {
                "This form was already submitted; the key was shown once and cannot be shown again. \
                 Create a new one if you lost it. Nothing was changed this time."
            }
            Makes::SigningSecret => {
                "This form was already submitted; the signing secret was shown once and cannot be \
                 shown again. Rotate the secret if you lost it. Nothing was changed this time."
            }
        }
    }
}

/// Issues and checks the nonces. One per app.
pub struct FormNonces {
    signer: Signer,
    started: Instant,
    used: Arc<Mutex<Used>>,
    cap: usize,
}

#[derive(Default)]
struct Used {
    /// Random part → seconds (since start) of its use.
    at: HashMap<String, u64>,
    /// The same, in order of use; may hold entries already released.
    order: VecDeque<(u64, String)>,
}

impl Used {
    fn drop_front(&mut self) {
        if let Some((t, id)) = self.order.pop_front() {
            // Only if it is still this use (not released and used again).
            if self.at.get(&id) == Some(&t) {
                self.at.remove(&id);
            }
        }
    }
}

impl FormNonces {
    /// A store with a fresh random key.
    ///
    /// # Errors
    ///
    /// keyhook's error if the operating system's random source fails.
    pub fn new() -> keyhook::Result<FormNonces> {
        Ok(FormNonces::with_cap(&SigningSecret::generate()?, CAP))
    }

    fn with_cap(key: &SigningSecret, cap: usize) -> FormNonces {
        FormNonces {
            signer: Signer::new(key),
            started: Instant::now(),
            used: Arc::default(),
            cap,
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn mac(&self, csrf: &str, makes: Makes, random: &str, issued: u64) -> String {
        let body = format!("{csrf}.{}", makes.code());
        let issued = i64::try_from(issued).unwrap_or(i64::MAX);
        self.signer
            .sign(random, issued, body.as_bytes())
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A fresh nonce for a form rendered for the browser with CSRF token `csrf`.
    pub fn issue(&self, csrf: &str, makes: Makes) -> String {
        self.issue_at(csrf, makes, self.now())
    }

    fn issue_at(&self, csrf: &str, makes: Makes, now: u64) -> String {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mac = self.mac(csrf, makes, &random, now);
        format!("{random}.{now}.{mac}")
    }

    /// Checks the form's nonce and marks it used. The browser's CSRF token
    /// `csrf` must already have been checked (take a `CsrfForm`).
    ///
    /// # Errors
    ///
    /// A page for the visitor: 409 if the nonce was used already; 400 if it
    /// is missing, expired or not this browser's (nothing is changed).
    pub fn claim(&self, csrf: &str, form: &Form, makes: Makes) -> Result<Claim, PageError> {
        self.claim_at(csrf, form.get(FIELD).unwrap_or(""), makes, self.now())
    }

    fn claim_at(
        &self,
        csrf: &str,
        nonce: &str,
        makes: Makes,
        now: u64,
    ) -> Result<Claim, PageError> {
        let mut parts = nonce.split('.');
        let (Some(random), Some(issued), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(stale("is missing or damaged"));
        };
        let lower_hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let issued_at = issued
            .parse::<u64>()
            .ok()
            .filter(|_| lower_hex(random, 32) && lower_hex(mac, 64))
            .ok_or_else(|| stale("is missing or damaged"))?;
        let expected = self.mac(csrf, makes, random, issued_at);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return Err(stale(
                "was not made for this browser's session or this form (or the server restarted)",
            ));
        }
        if issued_at > now || now - issued_at > TTL.as_secs() {
            return Err(stale("has expired: forms are valid for an hour"));
        }
        let mut used = lock(&self.used);
        while used
            .order
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > TTL.as_secs())
        {
            used.drop_front();
        }
        if used.at.contains_key(random) {
            return Err(PageError {
                status: StatusCode::CONFLICT,
                title: "This form was already submitted".into(),
                message: makes.already_submitted().into(),
            });
        }
        while used.order.len() >= self.cap {
            used.drop_front();
        }
        used.at.insert(random.to_owned(), now);
        used.order.push_back((now, random.to_owned()));
        Ok(Claim {
            used: Arc::clone(&self.used),
            random: random.to_owned(),
            at: now,
            kept: false,
        })
    }
}

fn lock(used: &Mutex<Used>) -> MutexGuard<'_, Used> {
    // The map stays consistent whatever panicked while it was held.
    used.lock().unwrap_or_else(PoisonError::into_inner)
}

fn stale(why: &str) -> PageError {
    PageError::bad_input(
        "This form could not be accepted",
        format!(
            "The form's single-use token {why}. Nothing was changed. \
             Open the page again and submit the new form."
        ),
    )
}

/// A nonce marked used. Dropped without [`Claim::settle`] seeing success,
/// it is freed again (nothing was changed, so the form may be sent again).
#[must_use = "settle the claim with the change's result"]
pub struct Claim {
    used: Arc<Mutex<Used>>,
    random: String,
    at: u64,
    kept: bool,
}

impl Claim {
    /// Keeps the nonce used if the change succeeded, frees it if it failed;
    /// returns `result`. Call it inside the blocking call that made the
    /// change.
    pub fn settle<T, E>(mut self, result: Result<T, E>) -> Result<T, E> {
        self.kept = result.is_ok();
        result
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.kept {
            let mut used = lock(&self.used);
            if used.at.get(&self.random) == Some(&self.at) {
                used.at.remove(&self.random);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaa";
    const B: &str = "bbbb";

    fn nonces(cap: usize) -> FormNonces {
        FormNonces::with_cap(&SigningSecret::generate().unwrap(), cap)
    }

    #[test]
    fn a_nonce_is_accepted_once() {
        let n = nonces(CAP);
        let nonce = n.issue_at(A, Makes::ApiKey, 10);
        let claim = n.claim_at(A, &nonce, Makes::ApiKey, 11).unwrap();
        claim.settle(Ok::<(), ()>(())).unwrap();
        let again = n.claim_at(A, &nonce, Makes::ApiKey, 12).err().unwrap();
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert!(again.message.contains("already submitted"));
        // Another nonce for the same form is fresh.
        let other = n.issue_at(A, Makes::ApiKey, 12);
        assert_ne!(other, nonce);
        assert!(n.claim_at(A, &other, Makes::ApiKey, 12).is_ok());
    }

    #[test]
    fn a_failed_or_abandoned_change_frees_the_nonce() {
        let n = nonces(CAP);
        let nonce = n.issue_at(A, Makes::SigningSecret, 0);
        let claim = n.claim_at(A, &nonce, Makes::SigningSecret, 0).unwrap();
        // While it is in flight, a second submission is refused.
        assert_eq!(
            n.claim_at(A, &nonce, Makes::SigningSecret, 0)
                .err()
                .unwrap()
                .status,
            StatusCode::CONFLICT
        );
        assert!(claim.settle(Err::<(), _>("bad field")).is_err());
        let claim = n.claim_at(A, &nonce, Makes::SigningSecret, 1).unwrap();
        drop(claim);
        n.claim_at(A, &nonce, Makes::SigningSecret, 2)
            .unwrap()
            .settle(Ok::<(), ()>(()))
            .unwrap();
        assert!(n.claim_at(A, &nonce, Makes::SigningSecret, 3).is_err());
    }

    #[test]
    fn forged_foreign_expired_and_tampered_nonces_are_refused() {
        let n = nonces(CAP);
        let nonce = n.issue_at(A, Makes::ApiKey, 100);
        let refused = |csrf: &str, nonce: &str, makes: Makes, now: u64| {
            let e = n.claim_at(csrf, nonce, makes, now).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{nonce}");
            assert!(e.message.contains("Nothing was changed"));
        };
        refused(B, &nonce, Makes::ApiKey, 100); // another browser's
        refused(A, &nonce, Makes::SigningSecret, 100); // another kind of form
        refused(A, &nonce, Makes::ApiKey, 100 + TTL.as_secs() + 1); // expired
        refused(A, &nonce, Makes::ApiKey, 99); // from the future
        refused(A, "", Makes::ApiKey, 100);
        refused(A, &nonce.to_uppercase(), Makes::ApiKey, 100);
        let (random, rest) = nonce.split_once('.').unwrap();
        let (_, mac) = rest.split_once('.').unwrap();
        refused(A, &format!("{random}.101.{mac}"), Makes::ApiKey, 101);
        refused(
            A,
            &format!("{}.100.{mac}", "0".repeat(32)),
            Makes::ApiKey,
            100,
        );
        // From another process (another key).
        refused(
            A,
            &nonces(CAP).issue_at(A, Makes::ApiKey, 100),
            Makes::ApiKey,
            100,
        );
        // None of that used it up.
        assert!(n.claim_at(A, &nonce, Makes::ApiKey, 100).is_ok());
    }

    #[test]
    fn memory_is_bounded_by_time_and_count() {
        let n = nonces(3);
        for t in 0..10 {
            let nonce = n.issue_at(A, Makes::ApiKey, t);
            n.claim_at(A, &nonce, Makes::ApiKey, t)
                .unwrap()
                .settle(Ok::<(), ()>(()))
                .unwrap();
            let used = lock(&n.used);
            assert!(used.order.len() <= 3 && used.at.len() <= 3);
        }
        let late = 10 + TTL.as_secs() + 1;
        let nonce = n.issue_at(A, Makes::ApiKey, late);
        n.claim_at(A, &nonce, Makes::ApiKey, late)
            .unwrap()
            .settle(Ok::<(), ()>(()))
            .unwrap();
        let used = lock(&n.used);
        assert_eq!((used.order.len(), used.at.len()), (1, 1));
    }
}
