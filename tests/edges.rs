//! Sharp edges: how a delivery that goes wrong on the wire is classified,
//! the dispatcher's scheme rule, and what opening a database that cannot be
//! used says. Real HTTP on 127.0.0.1 (hand-written servers where a well
//! behaved receiver cannot misbehave on cue) and real SQLite files.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

use common::{TempDb, builder, endpoint, loopback_setup, schedule, temp_db_path};
use keyhook::{AttemptError, Database, DestinationPolicy, EndpointOptions, Error, OpenProblem};
use receiver::Receiver;
use serde_json::json;

const CREATED: &str = "conversion.created";
const ORG: &str = "org_1";
const WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ delivery

/// Delivers one event to `url` (registered under a policy that allows plain
/// http and loopback) with one attempt and a 1 s request timeout, under
/// `policy` if given (else the registry's), and returns the recorded
/// attempt's status and error.
fn one_attempt(
    url: &str,
    policy: Option<DestinationPolicy>,
) -> (Option<u16>, Option<AttemptError>) {
    let (t, registry) = loopback_setup(&[(CREATED, "A new referred purchase")]);
    endpoint(&registry, ORG, url, &[CREATED]);
    let (tx, rx) = mpsc::channel();
    let mut b = builder(&t, &registry)
        .retry_policy(schedule(1, Duration::ZERO))
        .request_timeout(Duration::from_secs(1))
        .on_attempt(move |r| {
            let _ = tx.send((r.status, r.error));
        });
    if let Some(policy) = policy {
        b = b.destination_policy(policy);
    }
    let d = b.start().unwrap();
    d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    let attempt = rx.recv_timeout(WAIT).expect("no attempt was recorded");
    d.shutdown(WAIT).unwrap();
    attempt
}

/// A TCP server on 127.0.0.1 that hands every connection to `serve` on its
/// own thread. The threads end with the test process.
fn raw_server(serve: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

/// Reads until the peer closes or `limit` passes, so the client, not this
/// server, ends the connection.
fn hold_open(mut conn: TcpStream, limit: Duration) {
    let _ = conn.set_read_timeout(Some(limit));
    let mut sink = [0u8; 4096];
    while let Ok(n) = conn.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// Reads one TLS record (the ClientHello) from `conn`.
fn read_tls_record(conn: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 5];
    conn.read_exact(&mut header).unwrap();
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    body
}

#[test]
fn a_stored_http_url_is_not_sent_under_a_policy_without_http() {
    let rx = Receiver::ok();
    // Stored while the registry's policy allowed http; delivered by a
    // dispatcher whose policy allows loopback but not plain http.
    let (status, error) = one_attempt(
        &rx.url("/hook"),
        Some(DestinationPolicy::new().allow_loopback(true)),
    );
    assert_eq!(error, Some(AttemptError::DestinationRefused));
    assert_eq!(status, None);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rx.count(),
        0,
        "a request reached the receiver in clear text"
    );

    // The same endpoint under a policy with http is delivered.
    let (status, error) = one_attempt(
        &rx.url("/hook"),
        Some(
            DestinationPolicy::new()
                .allow_loopback(true)
                .allow_http(true),
        ),
    );
    assert_eq!((status, error), (Some(204), None));
    assert_eq!(rx.count(), 1);
}

#[test]
fn garbage_in_answer_to_a_tls_hello_is_a_tls_error() {
    let addr = raw_server(|mut conn| {
        read_tls_record(&mut conn);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        hold_open(conn, Duration::from_secs(5));
    });
    let (status, error) = one_attempt(&format!("https://{addr}/hook"), None);
    assert_eq!((status, error), (None, Some(AttemptError::Tls)));
}

/// A self-signed P-256 end-entity certificate for IP 127.0.0.1 (CN
/// keyhook-test, valid until 2126), made by `openssl req -x509 -newkey ec
/// -pkeyopt ec_paramgen_curve:prime256v1 -subj /CN=keyhook-test -addext
/// basicConstraints=critical,CA:FALSE -addext subjectAltName=IP:127.0.0.1
/// -days 36500 -outform DER`. No root vouches for it.
const SELF_SIGNED_DER: &str = "MIIBkzCCATmgAwIBAgIUPlLFTMcEOmjv03XF/Vktx8i/saAwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMa2V5aG9vay10ZXN0MCAXDTI2MTIwMjA4MTgwMFoYDzIxMjYxMTA4MDgxODAwWjAXMRUwEwYDVQQDDAxrZXlob29rLXRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARMXBvTh+zuMKAmGTRCt9wkoS9+9e4p6JA2QjYf4b5YHgdtuEpHf33igy0JnA8rEUKW3c6npHDnfv0F7ubwn07Zo2EwXzAdBgNVHQ4EFgQUFsZ9NiCF8is0w+ZFjgi+wBjimv8wHwYDVR0jBBgwFoAUFsZ9NiCF8is0w+ZFjgi+wBjimv8wDAYDVR0TAQH/BAIwADAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0gAMEUCIQD4pdM/Nj5rUzfG+Unpq6J0cAz3zuHgm1otRJzwDesdVgIgeuEjmw9+neffCbIBThyz+YuKZjXi08cUQxYXU7ucRcs=";

/// A handshake message (type, body) as a TLS 1.2 plaintext record.
fn handshake_record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![kind];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(body);
    let mut record = vec![22, 3, 3];
    record.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    record.extend_from_slice(&msg);
    record
}

/// The server's first flight of a TLS 1.2 handshake, up to ServerHelloDone,
/// presenting the self-signed certificate. TLS 1.2 sends the certificate in
/// clear, and the client checks it before anything that would need the
/// private key, so no real TLS server is needed to be refused for it.
fn tls12_flight_with_self_signed_certificate() -> Vec<u8> {
    use base64::Engine;
    let cert = base64::engine::general_purpose::STANDARD
        .decode(SELF_SIGNED_DER)
        .unwrap();

    let mut hello = vec![3, 3]; // TLS 1.2
    hello.extend_from_slice(&[0x11; 32]); // random (no downgrade marker)
    hello.push(0); // empty session id
    hello.extend_from_slice(&[0xc0, 0x2b]); // ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    hello.push(0); // no compression

    let mut entry = (cert.len() as u32).to_be_bytes()[1..].to_vec();
    entry.extend_from_slice(&cert);
    let mut certificates = (entry.len() as u32).to_be_bytes()[1..].to_vec();
    certificates.extend_from_slice(&entry);

    let mut kx = vec![3, 0x00, 0x1d, 32]; // named curve x25519, 32-byte key
    kx.extend_from_slice(&[9; 32]);
    kx.extend_from_slice(&[0x04, 0x03, 0, 8]); // ecdsa_secp256r1_sha256, 8 bytes
    kx.extend_from_slice(&[0; 8]); // (never checked: the certificate fails first)

    let mut flight = handshake_record(2, &hello);
    flight.extend(handshake_record(11, &certificates));
    flight.extend(handshake_record(12, &kx));
    flight.extend(handshake_record(14, &[]));
    flight
}

#[test]
fn a_certificate_from_an_unknown_issuer_is_a_tls_error() {
    let addr = raw_server(|mut conn| {
        read_tls_record(&mut conn);
        let _ = conn.write_all(&tls12_flight_with_self_signed_certificate());
        hold_open(conn, Duration::from_secs(5));
    });
    let (status, error) = one_attempt(&format!("https://{addr}/hook"), None);
    assert_eq!((status, error), (None, Some(AttemptError::Tls)));
}

#[test]
fn a_non_2xx_body_that_stalls_past_the_timeout_is_a_timeout() {
    let addr = raw_server(|mut conn| {
        // Headers of a 500 promising 1000 bytes, then 10 of them, then nothing.
        let mut buf = [0u8; 8192];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1000\r\n\r\nfirst bits",
        );
        hold_open(conn, Duration::from_secs(10));
    });
    let (status, error) = one_attempt(&format!("http://{addr}/hook"), None);
    assert_eq!((status, error), (Some(500), Some(AttemptError::Timeout)));
}

/// Every log record of this test process at DEBUG and above, as
/// `target: message` (TRACE stays off, as the crate docs advise).
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Debug
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{}: {}", record.target(), record.args());
            self.0.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn captured() -> Vec<String> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
    CAPTURE.0.lock().unwrap().clone()
}

#[test]
fn at_debug_no_secret_reaches_the_log() {
    captured();
    let (t, registry) = loopback_setup(&[(CREATED, "A new referred purchase")]);
    let rx = Receiver::ok();
    let ep = registry
        .create(
            ORG,
            &rx.url("/hook?token=url-secret-7731"),
            &[CREATED],
            EndpointOptions {
                headers: vec![("X-Receiver-Token".into(), "header-secret-4419".into())],
                ..EndpointOptions::default()
            },
        )
        .unwrap();
    let d = builder(&t, &registry).start().unwrap();
    d.emit(ORG, CREATED, &json!({"n": 1})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    d.shutdown(WAIT).unwrap();
    let signature = rx.received()[0]
        .header("webhook-signature")
        .unwrap()
        .to_owned();
    let signing_secret = ep.secret.expose();
    let lines = captured();
    let port = format!(":{}", rx.addr().port());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ureq") && l.contains(&port)),
        "ureq logged nothing about the request at DEBUG: {lines:#?}"
    );
    for secret in [
        "url-secret-7731",
        "header-secret-4419",
        signature.as_str(),
        signing_secret.as_str(),
    ] {
        let leaked: Vec<&String> = lines.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret:?} was logged: {leaked:#?}");
    }
}

// ------------------------------------------------------------------- opening

fn open_err(path: impl AsRef<Path>) -> Error {
    match Database::open(path) {
        Ok(db) => panic!("opened: {db:?}"),
        Err(e) => e,
    }
}

/// The error is [`Error::Open`] for `path` with `problem`, and its
/// message names the path and says `what`.
fn assert_says(err: &Error, path: &Path, problem: OpenProblem, what: &str) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(what), "{msg}");
    match err {
        Error::Open {
            path: reported,
            problem: found,
            ..
        } => {
            assert_eq!(reported, path);
            assert_eq!(*found, problem, "{msg}");
        }
        other => panic!("expected Error::Open, got {other:?}"),
    }
}

#[test]
fn opening_a_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_err(dir.path());
    assert_says(
        &err,
        dir.path(),
        OpenProblem::IsADirectory,
        "is a directory",
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "SQLite's error is kept"
    );
}

#[test]
fn opening_under_a_missing_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("keyhook.sqlite3");
    let err = open_err(&path);
    assert_says(
        &err,
        &path,
        OpenProblem::ParentMissing,
        "directory does not exist",
    );
    assert!(
        !dir.path().join("missing").exists(),
        "created the directory"
    );
}

#[test]
fn opening_under_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain.txt"), "hello").unwrap();
    let path = dir.path().join("plain.txt").join("keyhook.sqlite3");
    let err = open_err(&path);
    assert_says(
        &err,
        &path,
        OpenProblem::ParentNotADirectory,
        "not a directory",
    );
}

#[test]
fn a_read_only_uri_is_refused_at_open() {
    let t = TempDb::sqlite();
    let uri = format!("file:{}?mode=ro", t.path().display());
    let err = open_err(Path::new(&uri));
    assert_says(&err, Path::new(&uri), OpenProblem::ReadOnly, "read-only");
}

/// Whether this process can write `path` despite its permissions (root can).
fn writable_anyway(path: &Path) -> bool {
    std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

#[cfg(unix)]
#[test]
fn a_file_without_write_permission_is_refused_at_open_unless_writable_anyway() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = temp_db_path();
    drop(Database::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    if writable_anyway(&path) {
        // Root ignores permission bits: the file really is writable, so
        // opening it works and so do writes.
        let db = Database::open(&path).unwrap();
        keyhook::WebhookRegistry::new(&db)
            .register_event_type(CREATED, "written through 0444")
            .unwrap();
    } else {
        let err = open_err(&path);
        assert_says(&err, &path, OpenProblem::ReadOnly, "read-only");
    }
}

/// Sets the immutable attribute on a file while alive (root may write any
/// file, but not an immutable one); `None` where `chattr` is missing or not
/// permitted.
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn set(path: &'a Path) -> Option<Immutable<'a>> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Immutable(path))
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.0)
            .status();
    }
}

#[test]
fn an_immutable_file_is_refused_at_open_not_at_the_first_write() {
    let (_dir, path) = temp_db_path();
    drop(Database::open(&path).unwrap());
    let Some(_immutable) = Immutable::set(&path) else {
        eprintln!("skipped: chattr +i is not available or not permitted here");
        return;
    };
    if writable_anyway(&path) {
        eprintln!("skipped: the immutable file is still writable");
        return;
    }
    let err = open_err(&path);
    assert_says(&err, &path, OpenProblem::ReadOnly, "read-only");
}

/// A second connection on `path` (as another process would have) holding an
/// exclusive transaction.
fn hold_exclusive(path: &Path) -> rusqlite::Connection {
    let host = rusqlite::Connection::open(path).unwrap();
    host.execute_batch("BEGIN EXCLUSIVE").unwrap();
    host
}

#[test]
fn a_lock_held_past_the_busy_timeout_during_migration_names_the_file() {
    let (_dir, path) = temp_db_path();
    drop(Database::open(&path).unwrap());
    let _host = hold_exclusive(&path);
    let err = Database::builder()
        .busy_timeout(Duration::from_millis(100))
        .open(&path)
        .unwrap_err();
    assert_says(&err, &path, OpenProblem::Locked, "locked");
}

#[test]
fn a_lock_held_on_a_hosts_rollback_journal_file_names_the_file() {
    // The host's own file, in SQLite's default rollback-journal mode:
    // switching it to WAL needs the lock the host holds.
    let (_dir, path) = temp_db_path();
    let host = rusqlite::Connection::open(&path).unwrap();
    host.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY); BEGIN EXCLUSIVE")
        .unwrap();
    let err = Database::builder()
        .busy_timeout(Duration::from_millis(100))
        .open(&path)
        .unwrap_err();
    assert_says(&err, &path, OpenProblem::Locked, "locked");
    drop(host);
    Database::open(&path).expect("opens once the host lets go");
}

#[test]
fn a_database_error_displays_sqlites_message_without_the_sql() {
    // A host table squatting on keyhook's migration table's name.
    let (_dir, path) = temp_db_path();
    let host = rusqlite::Connection::open(&path).unwrap();
    host.execute_batch("CREATE TABLE keyhook_migrations (x)")
        .unwrap();
    drop(host);
    let err = open_err(&path);
    let msg = err.to_string();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(msg.starts_with("database error: "), "{msg}");
    assert!(msg.contains("no such column: version"), "{msg}");
    assert!(!msg.contains("SELECT"), "the statement leaked into: {msg}");
}

#[test]
fn states_have_stable_names_that_parse_back() {
    use keyhook::{DeliveryState, KeyState};
    for s in [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
    ] {
        assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
        assert_eq!(s.to_string(), s.as_str());
    }
    for s in [KeyState::Active, KeyState::Expired, KeyState::Revoked] {
        assert_eq!(s.as_str().parse::<KeyState>().unwrap(), s);
    }
    common::assert_invalid_input("Pending".parse::<DeliveryState>(), "state");
    common::assert_invalid_input("".parse::<KeyState>(), "state");
}
