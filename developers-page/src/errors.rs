//! Calling keyhook from async code, and turning its errors into HTTP answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyhook::{Error, Rejection};

use crate::html::{esc, notice, respond};

/// Runs a keyhook call on tokio's blocking pool, never on an async worker
/// thread: keyhook is synchronous (SQLite, and `redeliver` makes an HTTP
/// request on the calling thread), and a blocked async thread stalls every
/// request it would have served meanwhile.
pub async fn blocking<T, F>(call: F) -> keyhook::Result<T>
where
    F: FnOnce() -> keyhook::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        // The call panicked (or the runtime is shutting down): a 500.
        Err(join) => Err(Error::Io(std::io::Error::other(format!(
            "keyhook call did not finish: {join}"
        )))),
    }
}

/// The HTTP status for a keyhook error.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::InvalidInput { .. }
        | Error::UnknownEventType { .. }
        | Error::DestinationRefused { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidState { .. } | Error::LimitReached { .. } => StatusCode::CONFLICT,
        Error::PlanNotEnabled { .. } | Error::Rejected(Rejection::PlanInactive) => {
            StatusCode::FORBIDDEN
        }
        Error::Rejected(_) => StatusCode::UNAUTHORIZED,
        Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        // Retrying later helps: another process holds the write lock, or
        // the dispatcher is down (emits are still stored).
        Error::Locked(_) | Error::DispatcherFailed { .. } | Error::ShutdownTimedOut { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs a server-side error with its whole source chain. keyhook's errors
/// never carry secrets, so they may be logged as they are.
pub fn log_error(error: &Error) {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("developers-page: error: {message}");
}

/// An error shown to a visitor as a page: a status, what was being done,
/// and what went wrong.
#[derive(Debug)]
pub struct PageError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What the visitor tried, e.g. "Could not create the API key".
    pub title: String,
    /// What went wrong, as plain text.
    pub message: String,
}

impl PageError {
    /// An error from keyhook while doing `what`.
    pub fn keyhook(what: &str, error: Error) -> PageError {
        let status = status_of(&error);
        let message = if status.is_server_error() {
            log_error(&error);
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    "The service is busy right now; nothing was changed. Try again in a moment."
                        .to_owned()
                }
                _ => "Something went wrong on our side; nothing was changed.".to_owned(),
            }
        } else {
            // keyhook's messages name the field and say what was wrong,
            // and never contain secrets.
            let mut m = error.to_string();
            if let Some(first) = m.get(..1) {
                let upper = first.to_uppercase();
                m.replace_range(..1, &upper);
            }
            m
        };
        PageError {
            status,
            title: what.to_owned(),
            message,
        }
    }

    /// A bad form field, found before keyhook was called.
    pub fn bad_input(what: &str, message: impl Into<String>) -> PageError {
        PageError {
            status: StatusCode::BAD_REQUEST,
            title: what.to_owned(),
            message: message.into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = format!(
            r#"<h1>{title}</h1>{notice}<p><a href="/">Back to Developers settings</a></p>"#,
            title = esc(&self.title),
            notice = notice("error", &esc(&self.message)),
        );
        let mut response = respond(self.status, &self.title, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// `map_err` helper: `.map_err(failed("Could not revoke the key"))`.
pub fn failed(what: &'static str) -> impl FnOnce(Error) -> PageError {
    move |e| PageError::keyhook(what, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (
                Error::InvalidInput {
                    field: "name",
                    reason: "must not be empty".into(),
                },
                400,
            ),
            (
                Error::NotFound {
                    kind: "api key",
                    id: "k".into(),
                },
                404,
            ),
            (
                Error::InvalidState {
                    kind: "api key",
                    id: "k".into(),
                    state: "revoked",
                },
                409,
            ),
            (
                Error::LimitReached {
                    what: "live API keys",
                    limit: 1,
                },
                409,
            ),
            (Error::PlanNotEnabled { org: "o".into() }, 403),
            (Error::Rejected(Rejection::Revoked), 401),
            (Error::Rejected(Rejection::PlanInactive), 403),
            (Error::UnknownEventType { name: "x".into() }, 400),
            (Error::Io(std::io::Error::other("x")), 500),
        ];
        for (error, status) in cases {
            assert_eq!(status_of(&error).as_u16(), status, "{error}");
        }
    }
}
