//! HTML building blocks: escaping, the page layout, dates.
//!
//! Plain `format!` with one escaping function, so a reader sees the HTML as
//! it is sent. Every value that did not come from this file goes through
//! [`esc`].

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML element content and double- or single-quoted
/// attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value (cursors, filters).
pub fn url_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The hidden field every form carries (see `csrf.rs`).
pub fn csrf_field(token: &str) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(token)
    )
}

/// The single-use nonce of a form that shows a secret once (see `once.rs`).
/// `autocomplete="off"` stops a browser from restoring an old value into a
/// freshly loaded form.
pub fn once_field(nonce: &str) -> String {
    format!(
        r#"<input type="hidden" name="{}" value="{}" autocomplete="off">"#,
        crate::once::FIELD,
        esc(nonce)
    )
}

const STYLE: &str = r#"
:root { color-scheme: light; --line: #d7dbe0; --muted: #5b6470; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2228; background: #f6f7f9; }
header.top { background: #fff; border-bottom: 1px solid var(--line); padding: .6rem 1.5rem; }
header.top .crumbs { color: var(--muted); font-size: .9rem; }
main { max-width: 70rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: .5rem 0; }
h2 { font-size: 1.25rem; margin: 0 0 .5rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 .4rem; }
section.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 1rem 1.2rem; margin: 1rem 0; }
p.lead { color: var(--muted); margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; font-size: .92rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88rem; }
pre { background: #f1f3f5; padding: .5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; margin: .3rem 0; }
form.inline { display: inline; }
.field { margin: .5rem 0; }
.field label { display: block; font-weight: 600; margin-bottom: .15rem; }
.check label { font-weight: normal; }
input[type=text], input[type=url], input[type=datetime-local], select, textarea { font: inherit; padding: .3rem .45rem; border: 1px solid #b9c0c8; border-radius: 4px; min-width: 18rem; }
input[type=url] { min-width: 28rem; }
input.secret { width: 100%; font-family: ui-monospace, Menlo, Consolas, monospace; }
fieldset { border: 1px solid var(--line); border-radius: 4px; margin: .5rem 0; }
button { font: inherit; padding: .3rem .8rem; border: 1px solid var(--accent); background: var(--accent); color: #fff; border-radius: 4px; cursor: pointer; }
button.secondary { background: #fff; color: var(--accent); }
button.danger { background: #b42318; border-color: #b42318; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 0 .4rem; border-radius: 3px; font-size: .8rem; background: #e8ebef; }
.ok { background: #dcf5e3; color: #14532d; }
.bad { background: #fde2e0; color: #7a1b14; }
.warn { background: #fff3cd; color: #6b4e00; }
.notice { padding: .6rem .9rem; border-radius: 4px; margin: .8rem 0; border: 1px solid; }
.notice.info { background: #e8f1fd; border-color: #b6cff5; }
.notice.error { background: #fde2e0; border-color: #f1aaa3; }
.notice.secret { background: #fff3cd; border-color: #e9cf7a; }
.locked { background: #f1f3f5; border: 1px dashed #9aa3ad; padding: .7rem .9rem; border-radius: 4px; }
details summary { cursor: pointer; color: var(--accent); }
details.create { margin: .6rem 0; }
details.create > summary { display: inline-block; padding: .3rem .8rem; border: 1px solid var(--accent); border-radius: 4px; background: var(--accent); color: #fff; font-weight: 600; }
details.create[open] > summary { background: #fff; color: var(--accent); }
details.create > form { border: 1px solid var(--line); border-radius: 4px; padding: .4rem .9rem .8rem; margin-top: .5rem; }
nav.pager { margin: .5rem 0; }
"#;

/// The little JavaScript the page has: copy buttons. Without it the secret
/// is still in a selectable field.
const SCRIPT: &str = r#"
document.querySelectorAll('button[data-copy]').forEach(function (b) {
  b.hidden = false;
  b.addEventListener('click', function () {
    var field = document.getElementById(b.dataset.copy);
    field.select();
    var done = function () { b.textContent = 'Copied'; };
    if (navigator.clipboard) { navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand('copy'); done(); }); }
    else { document.execCommand('copy'); done(); }
  });
});
"#;

/// A whole page: `title` (plain text) and `body` (HTML).
pub fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Settings</title>
<style>{STYLE}</style>
</head>
<body>
<header class="top"><span class="crumbs"><a href="/">Settings</a> › Organization › <a href="/">Developers</a></span></header>
<main>
{body}
</main>
<script>{SCRIPT}</script>
</body>
</html>
"#,
        title = esc(title),
    )
}

/// A page as a response with `status`.
pub fn respond(status: StatusCode, title: &str, body: &str) -> Response {
    (status, Html(page(title, body))).into_response()
}

/// A notice box; `kind` is `info`, `error` or `secret`.
pub fn notice(kind: &str, html: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!(r#"<div class="notice {kind}" role="{role}">{html}</div>"#)
}

/// A secret shown once, in a read-only field with a copy button.
pub fn secret_field(id: &str, label: &str, secret: &str) -> String {
    format!(
        r#"<div class="field"><label for="{id}">{label}</label>
<input class="secret" type="text" id="{id}" value="{secret}" readonly autocomplete="off" spellcheck="false">
<button type="button" class="secondary" data-copy="{id}" hidden>Copy</button></div>"#,
        label = esc(label),
        secret = esc(secret),
    )
}

/// `2026-12-02 10:02 UTC`.
pub fn time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `2026-12-02T10:02` for a `datetime-local` field (UTC).
pub fn datetime_local(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]` (what a `datetime-local` field sends) as UTC.
pub fn parse_datetime_local(text: &str) -> Option<SystemTime> {
    let (date, clock) = text.trim().split_once('T')?;
    let mut date = date.split('-');
    let y: i64 = date.next()?.parse().ok()?;
    let m: u32 = date.next()?.parse().ok()?;
    let d: u32 = date.next()?.parse().ok()?;
    if date.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    if d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let mut clock = clock.split(':');
    let h: u64 = clock.next()?.parse().ok()?;
    let min: u64 = clock.next()?.parse().ok()?;
    let s: u64 = match clock.next() {
        Some(s) => s.split('.').next()?.parse().ok()?,
        None => 0,
    };
    if clock.next().is_some() || h > 23 || min > 59 || s > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(y, m, d)).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + min * 60 + s))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil calendar algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `1.2 s`, `35 ms`.
pub fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// `<option>`s for a `<select>`; `(value, label)` pairs, `selected` marked.
pub fn options<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>, selected: &str) -> String {
    let mut out = String::new();
    for (value, label) in items {
        let sel = if value == selected { " selected" } else { "" };
        let _ = write!(
            out,
            r#"<option value="{}"{sel}>{}</option>"#,
            esc(value),
            esc(label)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_break_out() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn dates_round_trip() {
        for secs in [0u64, 951_782_400, 1_764_669_720, 4_102_444_740] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_datetime_local(&datetime_local(t)), Some(t), "{secs}");
        }
        assert_eq!(
            time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00 UTC"
        );
        assert_eq!(
            parse_datetime_local("2026-12-02T10:02:30"),
            Some(UNIX_EPOCH + Duration::from_secs(1_796_205_750))
        );
    }

    #[test]
    fn refuses_bad_dates() {
        for bad in [
            "",
            "2026-02-30T10:00",
            "2026-13-01T00:00",
            "2026-01-01 10:00",
            "2026-01-01T24:00",
            "x-1-1T1:1",
        ] {
            assert_eq!(parse_datetime_local(bad), None, "{bad}");
        }
    }
}
