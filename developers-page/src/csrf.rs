//! Cross-site request forgery protection, and form parsing.
//!
//! Each browser gets a random token in an `HttpOnly`, `SameSite=Strict`
//! cookie; every form carries the same token in a hidden field; a POST is
//! accepted only if the two match (compared in constant time). Another site
//! can make a browser send the cookie (not even that, with `SameSite`), but
//! cannot read it to put it in the form. Every POST handler takes a
//! [`CsrfForm`], so none can forget the check.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::errors::PageError;

/// The cookie's name.
pub const COOKIE: &str = "dp_csrf";
/// The largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// This browser's token, put in the request by [`session`].
#[derive(Clone, Debug)]
pub struct Csrf(pub String);

/// Middleware: finds the browser's token in its cookie or makes one (and
/// sets the cookie on the answer), and adds security headers to every
/// answer.
pub async fn session(mut request: Request, next: Next) -> Response {
    let existing = cookie(request.headers(), COOKIE).filter(|t| is_token(t));
    let fresh = existing.is_none();
    let token = existing.unwrap_or_else(new_token);
    request.extensions_mut().insert(Csrf(token.clone()));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if fresh {
        let value = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    // Pages show secrets once: never store them in a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_token(t: &str) -> bool {
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The value of cookie `name`, if the request has it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, PageError> {
        parts
            .extensions
            .get::<Csrf>()
            .cloned()
            .ok_or_else(|| forged("the session middleware is not installed"))
    }
}

fn forged(why: &str) -> PageError {
    PageError {
        status: StatusCode::FORBIDDEN,
        title: "This form could not be accepted".into(),
        message: format!(
            "The form's security token {why}. Nothing was changed. \
             Reload the page and submit the form again."
        ),
    }
}

/// A submitted form (`application/x-www-form-urlencoded`) whose token
/// matched the browser's cookie.
#[derive(Debug)]
pub struct CsrfForm(pub Form);

impl<S: Send + Sync> FromRequest<S> for CsrfForm {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &S) -> Result<Self, PageError> {
        let (mut parts, body) = request.into_parts();
        let Csrf(expected) = Csrf::from_request_parts(&mut parts, state).await?;
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(PageError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                title: "This form could not be accepted".into(),
                message: "Expected an HTML form (application/x-www-form-urlencoded).".into(),
            });
        }
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|_| {
                PageError::bad_input("This form could not be read", "The form could not be read.")
            })?;
        if bytes.len() > MAX_FORM_BYTES {
            return Err(PageError::bad_input(
                "This form could not be accepted",
                "The form is too large.",
            ));
        }
        let form = Form::parse(&bytes);
        let given = form.get("csrf").unwrap_or("");
        if given.is_empty() {
            return Err(forged("is missing"));
        }
        let matches = given.len() == expected.len()
            && bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
        if !matches {
            return Err(forged("does not match this browser's session"));
        }
        Ok(CsrfForm(form))
    }
}

/// Form fields in order; a name may repeat (checkboxes).
#[derive(Debug, Default)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses a urlencoded body or query string.
    pub fn parse(bytes: &[u8]) -> Form {
        Form {
            pairs: form_urlencoded::parse(bytes).into_owned().collect(),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed, or `""`.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or("").trim()
    }

    /// Every value of `name` (checked checkboxes), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies_and_forms() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; dp_csrf=abc; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let form = Form::parse(b"t=a.b&t=c.d&name=+Zapier%20x+");
        assert_eq!(form.all("t"), ["a.b", "c.d"]);
        assert_eq!(form.text("name"), "Zapier x");
        assert!(is_token(&new_token()));
        assert_ne!(new_token(), new_token());
    }
}
