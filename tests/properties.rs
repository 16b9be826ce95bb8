//! Property tests ("fuzzing" on the stable toolchain) for the three parsers
//! that take untrusted input: API-key verification, Standard Webhooks
//! signature verification, and the destination (URL / IP / CIDR) policy.
//!
//! None of them may panic on any input, and each property checks a stronger
//! statement where one exists: a reference model of what must be accepted,
//! round trips, and invariants of every accepted value.
//!
//! # Running
//!
//! A normal `cargo test` runs each property with proptest's default of 256
//! cases (a few seconds in all). For a long fuzzing session, raise the case
//! count and build with optimizations; a test-name filter runs one group:
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release --test properties
//! PROPTEST_CASES=200000 cargo test --release --test properties api_keys_
//! PROPTEST_CASES=200000 cargo test --release --test properties signing_
//! PROPTEST_CASES=200000 cargo test --release --test properties destination_
//! ```
//!
//! Every run draws a fresh random seed (`PROPTEST_RNG_SEED=N` fixes it). A
//! failure is shrunk to a minimal input, printed, and its seed is saved to
//! `tests/properties.proptest-regressions`, which is replayed first on every
//! later run: commit that file with the fix.
//!
//! Why proptest rather than `cargo fuzz`: cargo-fuzz needs a nightly
//! toolchain and a separate `fuzz/` crate; these properties run on stable
//! inside the ordinary test suite, and CI keeps them from rotting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use keyhook::destination::{Cidr, DestinationPolicy, MAX_URL_LEN, classify};
use keyhook::signing::{
    self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, MAX_SIGNATURE_HEADER_LEN, Signer,
    VerifyError,
};
use keyhook::{ApiKeyStore, Database, Error, KeySettings, Rejection, SigningSecret};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::FileFailurePersistence;
use sha2::Sha256;
use url::{Host, Url};

/// Proptest's defaults (256 cases, or `PROPTEST_CASES`), with failures saved
/// beside this file.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// `s` with its `pos`-th character replaced by `with` (or, when they are the
/// same, by the next character of `alt` that differs).
fn substitute(s: &str, pos: Index, with: char, alt: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let i = pos.index(chars.len());
    let with = if with == chars[i] {
        alt.chars()
            .find(|&c| c != chars[i])
            .expect("alt has two chars")
    } else {
        with
    };
    let mut out: String = chars[..i].iter().collect();
    out.push(with);
    out.extend(&chars[i + 1..]);
    out
}

// ===========================================================================
// API keys
// ===========================================================================

const BASE62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// A prefix with an underscore in it: parsing must split from the right.
const PREFIX: &str = "my_app";
const ENVS: [&str; 2] = ["live", "test"];

/// What the store must answer for one issued key.
#[derive(Debug, Clone)]
struct Issued {
    plaintext: String,
    org: &'static str,
    env: &'static str,
    expect: Result<(), Rejection>,
}

struct KeyFixture {
    store: ApiKeyStore,
    keys: Vec<Issued>,
}

/// One in-memory store shared by every case: a few live keys in two
/// environments and organizations, a revoked key, and a key whose
/// organization's plan was turned off.
static KEYS: LazyLock<KeyFixture> = LazyLock::new(|| {
    let db = Database::open_in_memory().unwrap();
    let store = ApiKeyStore::builder(&db)
        .prefix(PREFIX)
        .environments(ENVS)
        .build()
        .unwrap();
    for org in ["org_1", "org_2", "org_off"] {
        store.set_api_keys_enabled(org, true).unwrap();
    }
    let mut keys = Vec::new();
    let mut create = |org: &'static str, env: &'static str| {
        let settings = KeySettings {
            environment: Some(env.into()),
            scopes: vec!["read".into()],
            ..KeySettings::default()
        };
        let created = store.create(org, "k", settings).unwrap();
        keys.push(Issued {
            plaintext: created.secret.expose().to_owned(),
            org,
            env,
            expect: Ok(()),
        });
        created.key.id
    };
    create("org_1", "live");
    create("org_1", "test");
    create("org_2", "live");
    let revoked = create("org_2", "test");
    create("org_off", "live");
    store.revoke("org_2", &revoked).unwrap();
    keys[3].expect = Err(Rejection::Revoked);
    store.set_api_keys_enabled("org_off", false).unwrap();
    keys[4].expect = Err(Rejection::PlanInactive);
    KeyFixture { store, keys }
});

/// CRC-32/ISO-HDLC, written out independently of the crate's.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base62_6(mut n: u64) -> String {
    let mut out = [0u8; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62.as_bytes()[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).unwrap()
}

/// A key string with a correct checksum, as the documented format builds it.
fn assemble(prefix: &str, env: &str, id: &str, secret: &str) -> String {
    let signed = format!("{prefix}_{env}_{id}{secret}");
    let check = base62_6(u64::from(crc32(signed.as_bytes())));
    signed + &check
}

/// The reference model of "well formed for this store": the store's prefix,
/// one of its environments, a 40-character base62 body (12 id, 22 secret,
/// 6 checksum) and the CRC32 of everything before the checksum.
fn well_formed(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    let Some((env, body)) = rest.split_once('_') else {
        return false;
    };
    ENVS.contains(&env)
        && body.len() == 40
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && body[34..] == base62_6(u64::from(crc32(&s.as_bytes()[..s.len() - 6])))
}

/// What `verify` must answer for `s`: an issued key's own answer, else
/// `Unknown` for a well-formed string and `Malformed` for anything else.
fn expected(s: &str) -> Result<&'static Issued, Rejection> {
    let fx = &*KEYS;
    if let Some(k) = fx.keys.iter().find(|k| k.plaintext == s) {
        return match k.expect {
            Ok(()) => Ok(k),
            Err(r) => Err(r),
        };
    }
    Err(if well_formed(s) {
        Rejection::Unknown
    } else {
        Rejection::Malformed
    })
}

/// `verify(s)` agrees with the model, and never fails for another reason.
fn check_verify(s: &str) -> Result<(), TestCaseError> {
    let got = KEYS.store.verify(s);
    match (expected(s), got) {
        (Ok(k), Ok(v)) => {
            prop_assert_eq!(v.org.as_str(), k.org);
            prop_assert_eq!(v.environment.as_str(), k.env);
            prop_assert!(k.plaintext.contains(&v.id));
        }
        (Err(want), Err(Error::Rejected(r))) => prop_assert_eq!(r, want, "input {:?}", s),
        (want, got) => prop_assert!(false, "input {s:?}: expected {want:?}, got {got:?}"),
    }
    Ok(())
}

fn issued_key() -> impl Strategy<Value = Issued> {
    select(KEYS.keys.clone())
}

/// Characters worth substituting into a key: its own alphabet, the separator
/// and anything else.
fn key_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => select(format!("{BASE62}_").chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ]
}

/// Strings shaped like keys of this store or of a near miss.
fn key_like() -> impl Strategy<Value = String> {
    "(my_app|my|app|MY_APP|my_ap|[a-z_]{0,8})_(live|test|prod|LIVE|)_[0-9A-Za-z_]{36,44}"
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    DropFront(Index),
    Remove(Index),
    Insert(Index, char),
    Duplicate(Index),
    Swap(Index),
    NewHead(String),
    Case(Index),
    Append(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        any::<Index>().prop_map(Mutation::DropFront),
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), key_char()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<Index>().prop_map(Mutation::Duplicate),
        any::<Index>().prop_map(Mutation::Swap),
        "(my_app|my|app|MY_APP|my_apq|kh|vr|my_app_x|x_my_app)_(live|test|prod|Live|)_"
            .prop_map(Mutation::NewHead),
        any::<Index>().prop_map(Mutation::Case),
        ".{1,4}".prop_map(Mutation::Append),
    ]
}

fn apply(key: &str, m: &Mutation) -> String {
    let mut c: Vec<char> = key.chars().collect();
    let n = c.len();
    match m {
        Mutation::Truncate(i) => c.truncate(i.index(n)),
        Mutation::DropFront(i) => c = c.split_off(i.index(n) + 1),
        Mutation::Remove(i) => {
            c.remove(i.index(n));
        }
        Mutation::Insert(i, ch) => c.insert(i.index(n + 1), *ch),
        Mutation::Duplicate(i) => {
            let i = i.index(n);
            c.insert(i, c[i]);
        }
        Mutation::Swap(i) => {
            let i = i.index(n - 1);
            c.swap(i, i + 1);
        }
        Mutation::NewHead(head) => {
            let body: String = c[n - 40..].iter().collect();
            return format!("{head}{body}");
        }
        Mutation::Case(i) => {
            let i = i.index(n);
            c[i] = if c[i].is_ascii_lowercase() {
                c[i].to_ascii_uppercase()
            } else {
                c[i].to_ascii_lowercase()
            };
        }
        Mutation::Append(tail) => c.extend(tail.chars()),
    }
    c.into_iter().collect()
}

/// Forgeries that carry a correct checksum, so they get past the format check.
#[derive(Debug, Clone)]
enum Forgery {
    /// A random id and secret.
    Random(String, String),
    /// An issued key's id and secret under another environment of the store.
    OtherEnv,
    /// An issued key's id and secret under another prefix or an unknown environment.
    OtherHead(String, String),
    /// An issued id with one secret character changed.
    SecretChar(Index, char),
    /// An issued secret with one id character changed (a case flip included).
    IdChar(Index, char),
}

fn forgery() -> impl Strategy<Value = Forgery> {
    let b62 = || select(BASE62.chars().collect::<Vec<_>>());
    prop_oneof![
        ("[0-9A-Za-z]{12}", "[0-9A-Za-z]{22}").prop_map(|(i, s)| Forgery::Random(i, s)),
        Just(Forgery::OtherEnv),
        ("(my|app|my_ap|My_app|kh|my_app_my_app)", "(live|test|prod)")
            .prop_map(|(p, e)| Forgery::OtherHead(p, e)),
        ("my_app", "(prod|Live|live0|tes)").prop_map(|(p, e)| Forgery::OtherHead(p, e)),
        (any::<Index>(), b62()).prop_map(|(i, c)| Forgery::SecretChar(i, c)),
        (any::<Index>(), b62()).prop_map(|(i, c)| Forgery::IdChar(i, c)),
    ]
}

fn forge(key: &Issued, f: &Forgery) -> String {
    let body = &key.plaintext[key.plaintext.len() - 40..];
    let (id, secret) = (&body[..12], &body[12..34]);
    match f {
        Forgery::Random(id, secret) => assemble(PREFIX, "live", id, secret),
        Forgery::OtherEnv => {
            let env = if key.env == "live" { "test" } else { "live" };
            assemble(PREFIX, env, id, secret)
        }
        Forgery::OtherHead(prefix, env) => assemble(prefix, env, id, secret),
        Forgery::SecretChar(i, c) => {
            assemble(PREFIX, key.env, id, &substitute(secret, *i, *c, "ab"))
        }
        Forgery::IdChar(i, c) => assemble(PREFIX, key.env, &substitute(id, *i, *c, "ab"), secret),
    }
}

#[test]
fn api_keys_issued_keys_verify() {
    assert_eq!(KEYS.keys.len(), 5);
    for k in &KEYS.keys {
        assert!(well_formed(&k.plaintext), "{}", k.plaintext);
        assert!(k.plaintext.starts_with(&format!("{PREFIX}_{}_", k.env)));
        check_verify(&k.plaintext).unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any string: the model's answer, and no panic.
    #[test]
    fn api_keys_arbitrary_strings(s in prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 40..120).prop_map(String::from_iter),
        key_like(),
    ]) {
        check_verify(&s)?;
    }

    /// Any bytes, read as (lossy) UTF-8, or embedding a real key.
    #[test]
    fn api_keys_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..160),
        key in issued_key(),
        at in any::<Index>(),
    ) {
        check_verify(&String::from_utf8_lossy(&bytes))?;
        let mut around = bytes.clone();
        around.splice(at.index(bytes.len() + 1)..at.index(bytes.len() + 1), key.plaintext.bytes());
        check_verify(&String::from_utf8_lossy(&around))?;
    }

    /// CRC32 catches every single-character substitution, anywhere in the
    /// key: always `Malformed`, without a database lookup.
    #[test]
    fn api_keys_single_substitution_is_malformed(
        key in issued_key(),
        pos in any::<Index>(),
        with in key_char(),
    ) {
        let changed = substitute(&key.plaintext, pos, with, "ab");
        prop_assert!(!well_formed(&changed));
        let got = KEYS.store.verify(&changed).unwrap_err().rejection();
        prop_assert_eq!(got, Some(Rejection::Malformed), "{:?}", changed);
    }

    /// Truncations, insertions, deletions, swaps, case flips and prefix or
    /// environment swaps of real keys: never accepted.
    #[test]
    fn api_keys_mutations_never_verify(key in issued_key(), m in mutation()) {
        let changed = apply(&key.plaintext, &m);
        if changed == key.plaintext {
            // A case flip of a digit, or the key's own head: nothing to test.
            return Ok(());
        }
        prop_assert!(KEYS.store.verify(&changed).is_err());
        check_verify(&changed)?;
    }

    /// Strings with a correct checksum but a made-up id or secret, another
    /// environment, or another prefix: `Unknown` (or `Malformed` for a head
    /// the store does not use), never accepted.
    #[test]
    fn api_keys_checksum_valid_forgeries_are_rejected(key in issued_key(), f in forgery()) {
        let forged = forge(&key, &f);
        prop_assert_ne!(&forged, &key.plaintext);
        let got = KEYS.store.verify(&forged).unwrap_err().rejection();
        let want = if matches!(f, Forgery::OtherHead(..)) {
            Rejection::Malformed
        } else {
            Rejection::Unknown
        };
        prop_assert_eq!(got, Some(want), "{:?}", forged);
        check_verify(&forged)?;
    }
}

// ===========================================================================
// Standard Webhooks signatures
// ===========================================================================

const TOLERANCE: Duration = signing::DEFAULT_TOLERANCE;

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

fn secret_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 24..=64)
}

/// Message ids: realistic ones and arbitrary non-empty text ('.' included).
fn msg_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "msg_[0-9A-Za-z]{1,40}",
        prop::collection::vec(any::<char>(), 1..90).prop_map(String::from_iter),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        "\\{\"[a-z]{1,8}\": [0-9]{1,12}\\}".prop_map(String::into_bytes),
    ]
}

/// Seconds since the epoch, 1970 to 2100.
fn now_secs() -> impl Strategy<Value = i64> {
    1_000i64..4_102_444_800
}

fn secret(bytes: &[u8]) -> SigningSecret {
    SigningSecret::from_bytes(bytes).unwrap()
}

/// An independent HMAC-SHA256 over `{id}.{ts}.{body}`, as a header entry.
fn reference_entry(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn sign_one(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    signing::sign(&[Signer::new(&secret(key))], id, ts, body)
}

/// The documented timestamp syntax: decimal digits with an optional leading
/// `-`, fitting an `i64`.
fn model_timestamp(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Every documented reason for `verify` to fail on these inputs; empty when
/// it must succeed. `verify` must return one of them.
fn model_verify(
    id: Option<&str>,
    ts: Option<&str>,
    sig: Option<&str>,
    body: &[u8],
    keys: &[Vec<u8>],
    now: i64,
    tolerance: i64,
) -> Vec<VerifyError> {
    let mut fails = Vec::new();
    let invalid = |header| VerifyError::InvalidHeader { header, reason: "" };
    if keys.is_empty() {
        fails.push(VerifyError::NoSecrets);
    }
    let (Some(id), Some(ts), Some(sig)) = (id, ts, sig) else {
        for (present, name) in [
            (id.is_some(), HEADER_ID),
            (ts.is_some(), HEADER_TIMESTAMP),
            (sig.is_some(), HEADER_SIGNATURE),
        ] {
            if !present {
                fails.push(VerifyError::MissingHeader(name));
            }
        }
        return fails;
    };
    if id.is_empty() {
        fails.push(invalid(HEADER_ID));
    }
    let ts = model_timestamp(ts);
    if ts.is_none() {
        fails.push(invalid(HEADER_TIMESTAMP));
    }
    let v1: Vec<&str> = sig
        .split(' ')
        .filter_map(|e| e.split_once(','))
        .filter(|(v, _)| *v == "v1")
        .map(|(_, b64)| b64)
        .collect();
    if sig.len() > MAX_SIGNATURE_HEADER_LEN || v1.is_empty() {
        fails.push(invalid(HEADER_SIGNATURE));
    }
    if let Some(ts) = ts {
        let skew = i128::from(now) - i128::from(ts);
        if skew > i128::from(tolerance) {
            fails.push(VerifyError::TimestampTooOld);
        } else if -skew > i128::from(tolerance) {
            fails.push(VerifyError::TimestampTooNew);
        }
        let matched = keys.iter().any(|k| {
            let want = reference_entry(k, id, ts, body);
            v1.iter().any(|b64| *b64 == &want[3..])
        });
        if !matched {
            fails.push(VerifyError::NoMatchingSignature);
        }
    }
    fails
}

/// Equal, ignoring an `InvalidHeader`'s wording.
fn same_error(a: &VerifyError, b: &VerifyError) -> bool {
    match (a, b) {
        (
            VerifyError::InvalidHeader { header: x, .. },
            VerifyError::InvalidHeader { header: y, .. },
        ) => x == y,
        _ => a == b,
    }
}

#[allow(clippy::too_many_arguments)]
fn check_against_model(
    id: Option<&str>,
    ts: Option<&str>,
    sig: Option<&str>,
    body: &[u8],
    keys: &[Vec<u8>],
    now: i64,
    tolerance: i64,
) -> Result<(), TestCaseError> {
    let secrets: Vec<SigningSecret> = keys.iter().map(|k| secret(k)).collect();
    let got = signing::verify(
        id,
        ts,
        sig,
        body,
        &secrets,
        at(now),
        Duration::from_secs(tolerance as u64),
    );
    let fails = model_verify(id, ts, sig, body, keys, now, tolerance);
    match got {
        Ok(()) => prop_assert!(fails.is_empty(), "accepted, but the model says {fails:?}"),
        Err(e) => prop_assert!(
            fails.iter().any(|f| same_error(f, &e)),
            "got {e:?}, the model says {fails:?}"
        ),
    }
    Ok(())
}

/// Pieces of a `webhook-signature` header.
#[derive(Debug, Clone)]
enum Token {
    /// The right entry for the n-th signing key.
    Valid(usize),
    /// The right MAC under another version label.
    OtherVersion(usize, String),
    /// The right MAC without its padding.
    Unpadded(usize),
    /// The right MAC with its last symbol's unused low bits set.
    TrailingBits(usize, u8),
    /// The right MAC with one character changed.
    Flipped(usize, Index, char),
    /// Text made of the header's own alphabet.
    Junk(String),
    Empty,
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        (0..3usize).prop_map(Token::Valid),
        (0..3usize, "(v2|V1|v1a|v|1|v1 |)").prop_map(|(k, v)| Token::OtherVersion(k, v)),
        (0..3usize).prop_map(Token::Unpadded),
        (0..3usize, 1..4u8).prop_map(|(k, b)| Token::TrailingBits(k, b)),
        (0..3usize, any::<Index>(), any::<char>()).prop_map(|(k, i, c)| Token::Flipped(k, i, c)),
        "[v12,=+/A-Za-z0-9 ]{0,60}".prop_map(Token::Junk),
        Just(Token::Empty),
    ]
}

fn render(
    tokens: &[Token],
    seps: &[bool],
    keys: &[Vec<u8>],
    id: &str,
    ts: i64,
    b: &[u8],
) -> String {
    let entry = |k: usize| reference_entry(&keys[k], id, ts, b);
    let mut out = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            out.push_str(if seps[i % seps.len()] { " " } else { "  " });
        }
        match t {
            Token::Valid(k) => out.push_str(&entry(*k)),
            Token::OtherVersion(k, v) => out.push_str(&format!("{v},{}", &entry(*k)[3..])),
            Token::Unpadded(k) => {
                out.push_str(entry(*k).trim_end_matches('='));
            }
            Token::TrailingBits(k, bits) => {
                let e = entry(*k);
                let mac = STANDARD.decode(&e[3..]).unwrap();
                // The 43rd symbol holds the MAC's last 4 bits and 2 unused bits.
                let mut b64 = STANDARD_NO_PAD.encode(&mac).into_bytes();
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let pos = alphabet.iter().position(|&c| c == b64[42]).unwrap();
                b64[42] = alphabet[pos | usize::from(*bits)];
                out.push_str("v1,");
                out.push_str(std::str::from_utf8(&b64).unwrap());
                out.push('=');
            }
            Token::Flipped(k, i, c) => out.push_str(&substitute(&entry(*k), *i, *c, "AB")),
            Token::Junk(j) => out.push_str(j),
            Token::Empty => {}
        }
    }
    out
}

fn timestamp_text(ts: i64) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => Just(ts.to_string()),
        1 => Just(format!("+{ts}")),
        1 => Just(format!(" {ts}")),
        1 => Just(format!("{ts} ")),
        1 => Just(format!("0{ts}")),
        1 => Just(format!("{ts}.0")),
        1 => Just(format!("{}", i128::from(ts) * 1000)),
        1 => Just(format!("-{ts}")),
        1 => Just(format!("{ts}\0")),
        1 => Just(format!("\u{0660}{ts}")),
        1 => "-?[0-9]{0,25}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// `Signer` (with its first-block fast path) computes the HMAC of
    /// `{id}.{ts}.{body}` for any id, timestamp and body.
    #[test]
    fn signing_sign_matches_reference_hmac(
        key in secret_bytes(),
        id in prop_oneof![msg_id(), "[a-z]{0,130}"],
        ts in any::<i64>(),
        body in body(),
    ) {
        prop_assert_eq!(sign_one(&key, &id, ts, &body), reference_entry(&key, &id, ts, &body));
    }

    /// Sign then verify round-trips, with the timestamp anywhere within the
    /// tolerance, and with the signing secret anywhere in a rotation list.
    #[test]
    fn signing_round_trip(
        key in secret_bytes(),
        others in prop::collection::vec(secret_bytes(), 0..3),
        at_pos in any::<Index>(),
        id in msg_id(),
        now in now_secs(),
        skew in -300i64..=300,
        body in body(),
    ) {
        let ts = now + skew;
        let header = sign_one(&key, &id, ts, &body);
        let mut secrets: Vec<SigningSecret> = others.iter().map(|k| secret(k)).collect();
        secrets.insert(at_pos.index(secrets.len() + 1), secret(&key));
        let r = signing::verify(
            Some(&id), Some(&ts.to_string()), Some(&header), &body, &secrets, at(now), TOLERANCE,
        );
        prop_assert_eq!(r, Ok(()));
        // Without the signing secret: no match (unless another is the same key).
        let others: Vec<SigningSecret> =
            others.iter().filter(|k| **k != key).map(|k| secret(k)).collect();
        if !others.is_empty() {
            let r = signing::verify(
                Some(&id), Some(&ts.to_string()), Some(&header), &body, &others, at(now), TOLERANCE,
            );
            prop_assert_eq!(r, Err(VerifyError::NoMatchingSignature));
        }
    }

    /// `verify_headers` against the real clock.
    #[test]
    fn signing_verify_headers_round_trip(
        key in secret_bytes(),
        id in msg_id(),
        skew in -240i64..=240,
        body in body(),
        extra in any::<u8>(),
    ) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let ts = (now + skew).to_string();
        let header = sign_one(&key, &id, now + skew, &body);
        let get = |name: &str| match name {
            HEADER_ID => Some(id.as_str()),
            HEADER_TIMESTAMP => Some(ts.as_str()),
            HEADER_SIGNATURE => Some(header.as_str()),
            _ => None,
        };
        let secrets = [secret(&key)];
        prop_assert_eq!(signing::verify_headers(get, &body, &secrets), Ok(()));
        let mut longer = body.clone();
        longer.push(extra);
        prop_assert_eq!(
            signing::verify_headers(get, &longer, &secrets),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    /// The timestamp is accepted exactly within the tolerance, either way.
    #[test]
    fn signing_tolerance_is_exact(
        key in secret_bytes(),
        now in now_secs(),
        skew in prop_oneof![-1000i64..=1000, any::<i64>()],
        tolerance in prop_oneof![Just(300i64), 0i64..100_000],
    ) {
        let ts = now.saturating_add(skew);
        let header = sign_one(&key, "msg_1", ts, b"{}");
        let r = signing::verify(
            Some("msg_1"), Some(&ts.to_string()), Some(&header), b"{}", &[secret(&key)],
            at(now), Duration::from_secs(tolerance as u64),
        );
        let skew = i128::from(ts) - i128::from(now);
        let want = if skew < -i128::from(tolerance) {
            Err(VerifyError::TimestampTooOld)
        } else if skew > i128::from(tolerance) {
            Err(VerifyError::TimestampTooNew)
        } else {
            Ok(())
        };
        prop_assert_eq!(r, want);
    }

    /// Any one-byte change of the body, one-character change of the id,
    /// other timestamp (within tolerance) or one-character change of the
    /// signature header: rejected.
    #[test]
    fn signing_single_changes_fail(
        key in secret_bytes(),
        id in msg_id(),
        now in now_secs(),
        body in body(),
        pos in any::<Index>(),
        xor in 1u8..=255,
        with in any::<char>(),
        dts in prop_oneof![-300i64..=-1, 1i64..=300],
    ) {
        let header = sign_one(&key, &id, now, &body);
        let ts = now.to_string();
        let secrets = [secret(&key)];
        let run = |id: &str, ts: &str, sig: &str, body: &[u8]| {
            signing::verify(Some(id), Some(ts), Some(sig), body, &secrets, at(now), TOLERANCE)
        };
        prop_assert_eq!(run(&id, &ts, &header, &body), Ok(()));

        let mut changed = body.clone();
        if changed.is_empty() {
            changed.push(xor);
        } else {
            changed[pos.index(body.len())] ^= xor;
        }
        prop_assert_eq!(run(&id, &ts, &header, &changed), Err(VerifyError::NoMatchingSignature));
        if !body.is_empty() {
            let shorter = &body[..pos.index(body.len())];
            prop_assert_eq!(run(&id, &ts, &header, shorter), Err(VerifyError::NoMatchingSignature));
        }

        let other_id = substitute(&id, pos, with, "ab");
        prop_assert_eq!(run(&other_id, &ts, &header, &body), Err(VerifyError::NoMatchingSignature));

        let other_ts = (now + dts).to_string();
        prop_assert_eq!(run(&id, &other_ts, &header, &body), Err(VerifyError::NoMatchingSignature));
        let ts_char = substitute(&ts, pos, with, "01");
        prop_assert!(run(&id, &ts_char, &header, &body).is_err(), "{:?}", ts_char);

        let sig_char = substitute(&header, pos, with, "AB");
        let r = run(&id, &ts, &sig_char, &body);
        prop_assert!(
            r == Err(VerifyError::NoMatchingSignature)
                || matches!(r, Err(VerifyError::InvalidHeader { header: HEADER_SIGNATURE, .. })),
            "{:?}: {:?}", sig_char, r
        );
    }

    /// Arbitrary header values (present or not): no panic, and the answer is
    /// one the model allows.
    #[test]
    fn signing_arbitrary_headers(
        id in prop::option::weighted(0.95, prop_oneof![msg_id(), any::<String>()]),
        ts in prop::option::weighted(0.95, prop_oneof![
            any::<String>(), "-?[0-9]{1,21}", now_secs().prop_map(|t| t.to_string()),
        ]),
        sig in prop::option::weighted(0.95, prop_oneof![
            any::<String>(),
            "(v1,[A-Za-z0-9+/=]{40,46}| |  |v1|,|v2,x){0,6}",
        ]),
        body in body(),
        keys in prop::collection::vec(secret_bytes(), 0..3),
        now in now_secs(),
    ) {
        check_against_model(
            id.as_deref(), ts.as_deref(), sig.as_deref(), &body, &keys, now, 300,
        )?;
    }

    /// Headers built from valid, near-valid and junk entries, timestamps in
    /// odd spellings, and keys that may or may not be the verifier's.
    #[test]
    fn signing_structured_headers(
        sign_keys in prop::collection::vec(secret_bytes(), 3),
        use_keys in prop::collection::vec(prop::bool::weighted(0.7), 3),
        id in prop_oneof![9 => msg_id(), 1 => Just(String::new())],
        (now, ts, ts_text) in now_secs()
            .prop_flat_map(|now| (Just(now), now - 400..now + 400))
            .prop_flat_map(|(now, ts)| (Just(now), Just(ts), timestamp_text(ts))),
        tokens in prop::collection::vec(token(), 0..5),
        seps in prop::collection::vec(any::<bool>(), 1..4),
        body in body(),
        pad in 0usize..3,
    ) {
        let mut sig = render(&tokens, &seps, &sign_keys, &id, ts, &body);
        if pad == 2 {
            // Around the length limit.
            while sig.len() <= MAX_SIGNATURE_HEADER_LEN - 40 {
                sig.push_str(" v2,xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            }
        }
        let keys: Vec<Vec<u8>> = sign_keys
            .iter()
            .zip(&use_keys)
            .filter(|(_, u)| **u)
            .map(|(k, _)| k.clone())
            .collect();
        check_against_model(Some(&id), Some(&ts_text), Some(&sig), &body, &keys, now, 300)?;
    }

    /// `SigningSecret::parse` on any text: no panic; what it accepts is 24 to
    /// 64 bytes and its exposed form parses back to the same secret.
    #[test]
    fn signing_secret_parse_arbitrary(s in prop_oneof![
        any::<String>(),
        "(whsec_)?[A-Za-z0-9+/=]{28,92}",
        "[ \t\n\r]{0,2}(whsec_|WHSEC_|whsec)?[A-Za-z0-9+/=_\\-]{0,100}[ \t\n\r\u{b}\u{a0}]{0,2}",
    ]) {
        if let Ok(secret) = SigningSecret::parse(&s) {
            prop_assert!((24..=64).contains(&secret.as_bytes().len()));
            let text = secret.expose();
            prop_assert!(text.starts_with("whsec_"));
            prop_assert_eq!(SigningSecret::parse(&text).unwrap(), secret);
        }
    }

    /// Secrets written every documented way: accepted exactly when they hold
    /// 24 to 64 bytes, and then with those bytes.
    #[test]
    fn signing_secret_parse_model(
        key in prop::collection::vec(any::<u8>(), 0..100),
        prefix in any::<bool>(),
        padded in any::<bool>(),
        lead in "[ \t\n\r\u{c}]{0,3}",
        trail in "[ \t\n\r\u{c}]{0,3}",
    ) {
        let b64 = if padded { STANDARD.encode(&key) } else { STANDARD_NO_PAD.encode(&key) };
        let text = format!("{lead}{}{b64}{trail}", if prefix { "whsec_" } else { "" });
        match SigningSecret::parse(&text) {
            Ok(s) => {
                prop_assert!((24..=64).contains(&key.len()));
                prop_assert_eq!(s.as_bytes(), key.as_slice());
                prop_assert_eq!(s.expose(), format!("whsec_{}", STANDARD.encode(&key)));
            }
            Err(e) => {
                prop_assert!(!(24..=64).contains(&key.len()), "{:?}: {}", text, e);
                prop_assert!(matches!(e, Error::InvalidInput { field: "secret", .. }), "{:?}", e);
            }
        }
    }
}

// ===========================================================================
// Destination policy
// ===========================================================================

/// `(network, prefix)` blocks with a meaning in `classify`, and a few public ones.
const V4_BLOCKS: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),
    ([127, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([172, 16, 0, 0], 12),
    ([192, 168, 0, 0], 16),
    ([169, 254, 0, 0], 16),
    ([169, 254, 169, 254], 32),
    ([100, 100, 100, 200], 32),
    ([100, 64, 0, 0], 10),
    ([192, 0, 2, 0], 24),
    ([198, 51, 100, 0], 24),
    ([203, 0, 113, 0], 24),
    ([198, 18, 0, 0], 15),
    ([224, 0, 0, 0], 4),
    ([240, 0, 0, 0], 4),
    ([255, 255, 255, 255], 32),
    ([192, 88, 99, 0], 24),
    ([192, 0, 0, 0], 24),
    ([192, 0, 0, 9], 32),
    ([192, 0, 0, 10], 32),
    ([8, 8, 8, 8], 32),
    ([1, 1, 1, 1], 32),
];

const V6_BLOCKS: &[([u16; 8], u8)] = &[
    ([0; 8], 128),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128),
    ([0; 8], 96),
    ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
    ([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
    ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    ([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
    ([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
    ([0x2001, 1, 0, 0, 0, 0, 0, 1], 126),
    ([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),
    ([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48),
    ([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 27),
    ([0x2000, 0, 0, 0, 0, 0, 0, 0], 3),
    ([0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111], 128),
];

fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    match prefix {
        0 => 0,
        p if p >= width => all,
        p => all & !(all >> p),
    }
}

/// An address in the block, at its edges (and just past them) more often.
fn in_block(net: u128, prefix: u8, width: u8, edge: u8, r: u128) -> u128 {
    let all = mask(width, width);
    let host = !mask(prefix, width) & all;
    let base = net & mask(prefix, width);
    match edge {
        0 => base,
        1 => base | host,
        2 => base.wrapping_sub(1) & all,
        3 => base.wrapping_add(host).wrapping_add(1) & all,
        _ => base | (r & host),
    }
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<u32>().prop_map(Ipv4Addr::from),
        (select(V4_BLOCKS), 0u8..8, any::<u32>()).prop_map(|((net, p), edge, r)| {
            let v = in_block(
                u128::from(u32::from_be_bytes(net)),
                p,
                32,
                edge,
                u128::from(r),
            );
            Ipv4Addr::from(v as u32)
        }),
    ]
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        // Global unicast, 2000::/3: mostly public.
        any::<u128>().prop_map(|r| Ipv6Addr::from((r >> 3) | (1 << 125))),
        (select(V6_BLOCKS), 0u8..8, any::<u128>()).prop_map(|((net, p), edge, r)| {
            Ipv6Addr::from(in_block(u128::from(Ipv6Addr::from(net)), p, 128, edge, r))
        }),
        // Each way an IPv6 address embeds an IPv4 one, around special IPv4s.
        (ipv4(), 0u8..5, any::<u128>()).prop_map(|(v4, how, r)| {
            let v4 = u128::from(u32::from(v4));
            Ipv6Addr::from(match how {
                0 => (0xffff << 32) | v4,
                1 => (0xffff << 48) | v4,
                2 => v4,
                3 => (0x64_ff9b << 96) | v4,
                _ => (0x2002 << 112) | (v4 << 80) | (r & ((1 << 80) - 1)),
            })
        }),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4().prop_map(IpAddr::V4), ipv6().prop_map(IpAddr::V6)]
}

/// The documented meaning of a policy: public addresses; never unspecified
/// ones; loopback and private ones when allowed; anything in an allowed block.
fn allowed_by(flags: (bool, bool), cidrs: &[Cidr], ip: IpAddr) -> bool {
    use keyhook::destination::AddressClass;
    match classify(ip) {
        None => true,
        Some(AddressClass::Unspecified) => false,
        Some(class) => {
            (class == AddressClass::Loopback && flags.0)
                || (class == AddressClass::Private && flags.1)
                || cidrs.iter().any(|c| c.contains(ip))
        }
    }
}

/// Textual forms of an IPv4 host that a URL parser reads as that address
/// (`true`), or might read as another or none (`false`).
fn v4_host(ip: Ipv4Addr, form: u8, salt: u32) -> (String, bool) {
    let n = u32::from(ip);
    let [a, b, c, d] = ip.octets();
    let dotted = ip.to_string();
    let text = match form {
        0 => dotted,
        1 => n.to_string(),
        2 => format!("0x{n:x}"),
        3 => format!("0X{n:08X}"),
        4 => format!("0{n:o}"),
        5 => ip
            .octets()
            .iter()
            .enumerate()
            .map(|(i, o)| match (salt >> (2 * i)) & 3 {
                0 => o.to_string(),
                1 => format!("0x{o:x}"),
                2 => format!("0{o:o}"),
                _ => format!("0X{o:02X}"),
            })
            .collect::<Vec<_>>()
            .join("."),
        6 => format!("{a}.{b}.{}", n & 0xffff),
        7 => format!("{a}.{}", n & 0xff_ffff),
        8 => format!("{ip}."),
        9 => dotted
            .chars()
            .map(|ch| match ch.to_digit(10) {
                Some(v) => char::from_u32(0xFF10 + v).unwrap(),
                None => '\u{FF0E}',
            })
            .collect(),
        10 => dotted
            .bytes()
            .enumerate()
            .map(|(i, ch)| {
                if (salt >> (i % 32)) & 1 == 1 {
                    format!("%{ch:02X}")
                } else {
                    char::from(ch).to_string()
                }
            })
            .collect(),
        // Leading zeros mean octal: not necessarily this address.
        11 => return (format!("{a:03}.{b:03}.{c:03}.{d:03}"), false),
        12 => return (format!("{a}.{b}.{c}.{d}.{}", salt % 256), false),
        _ => return (format!("{a}.{b}.{c}.{}", u64::from(d) + 256), false),
    };
    (text, true)
}

fn v6_host(ip: Ipv6Addr, form: u8) -> (String, bool) {
    let s = ip.segments();
    let text = match form {
        0 => format!("[{ip}]"),
        1 => format!(
            "[{}]",
            s.iter()
                .map(|x| format!("{x:x}"))
                .collect::<Vec<_>>()
                .join(":")
        ),
        2 => format!(
            "[{}]",
            s.iter()
                .map(|x| format!("{x:04X}"))
                .collect::<Vec<_>>()
                .join(":")
        ),
        3 => {
            let [.., a, b, c, d] = ip.octets();
            let head: Vec<String> = s[..6].iter().map(|x| format!("{x:x}")).collect();
            format!("[{}:{a}.{b}.{c}.{d}]", head.join(":"))
        }
        4 => format!("[{}]", ip.to_string().to_uppercase()),
        5 => return (format!("[{ip}%25eth0]"), false),
        _ => return (ip.to_string(), false),
    };
    (text, true)
}

const NAMES: &[&str] = &[
    "example.com",
    "EXAMPLE.com.",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "foo.localhost",
    "foo.LocalHost.",
    "localhost.localdomain",
    "localhost.localdomain.",
    "metadata.google.internal",
    "METADATA.GOOGLE.INTERNAL.",
    "metadata.goog",
    "\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}",
    "%6c%6f%63%61%6c%68%6f%73%74",
    "loc%61lhost",
    "localhost%2e",
    "xn--localhost",
    "xn--nxasmq6b.com",
    "a..b",
    "1.2.3.4.5",
    "0x7f.example",
    "127.0.0.1.nip.io",
    "exa mple.com",
    "ex%00ample.com",
    "[::1",
    "::1",
    "",
    "\u{0661}\u{0662}\u{0667}.\u{0660}.\u{0660}.\u{0661}",
    "\u{1d7cf}\u{1d7d0}\u{1d7d5}.0.0.1",
    "127\u{3002}0\u{3002}0\u{3002}1",
    "127%2e0%2e0%2e1",
];

const SCHEMES: &[&str] = &[
    "https",
    "HTTPS",
    "HtTpS",
    "http",
    "HTTP",
    "ftp",
    "file",
    "ws",
    "wss",
    "javascript",
    "data",
    "",
    "https ",
    " https",
    "h\ttps",
    "xhttps",
    "https+unix",
    "https\u{0}",
    "\u{feff}https",
];

const SEPARATORS: &[&str] = &[
    "://",
    ":/",
    ":",
    ":///",
    ":\\\\",
    ":\\/",
    "://user@",
    "://user:pass@",
    "://:@",
    "://@",
    "://:pass@",
    "://u%40x@",
    "://evil.com@",
    "://evil.com#@",
    ":////",
];

const PORTS: &[&str] = &[
    "", ":", ":0", ":00", ":443", ":8443", ":65535", ":65536", ":-1", ":0x1bb", ": 443", ":443\t",
];

/// Path, query and fragment characters, control characters and characters
/// the parser percent-encodes (which lengthens the URL) among them.
const PATH_CHARS: &[char] = &[
    'a',
    'Z',
    '0',
    '/',
    '/',
    '.',
    '%',
    '?',
    '=',
    '&',
    '#',
    ' ',
    '"',
    '<',
    '>',
    '`',
    '{',
    '}',
    '|',
    '^',
    '\\',
    '@',
    ':',
    '\t',
    '\n',
    '\r',
    '\0',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{2028}',
    'é',
    '\u{1f600}',
    '\u{feff}',
];

/// Path pieces that repeat into long paths; some grow when normalized.
const PATH_UNITS: &[&str] = &["/a", "/%20", "/ ", "/\"", "/é", "/{"];

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(/[A-Za-z0-9._~-]{0,10}){0,4}(\\?[a-z=&]{0,10})?",
        3 => prop::collection::vec(select(PATH_CHARS), 0..30)
            .prop_map(|c| c.into_iter().collect::<String>()),
        1 => (select(PATH_CHARS), 600usize..2100)
            .prop_map(|(c, n)| format!("/{}", c.to_string().repeat(n / c.len_utf8()))),
        1 => (select(PATH_UNITS), 300usize..1100)
            .prop_map(|(p, n)| p.repeat(n)),
    ]
}

fn host() -> impl Strategy<Value = (String, Option<IpAddr>)> {
    prop_oneof![
        3 => (ipv4(), 0u8..14, any::<u32>()).prop_map(|(ip, form, salt)| {
            let (text, exact) = v4_host(ip, form, salt);
            (text, exact.then_some(IpAddr::V4(ip)))
        }),
        3 => (ipv6(), 0u8..7).prop_map(|(ip, form)| {
            let (text, exact) = v6_host(ip, form);
            (text, exact.then_some(IpAddr::V6(ip)))
        }),
        2 => select(NAMES).prop_map(|n| (n.to_owned(), None)),
        1 => "[a-z0-9.-]{1,20}".prop_map(|n| (n, None)),
    ]
}

/// `usual` three times in four, else one of `odd`.
fn mostly(
    usual: &'static str,
    odd: &'static [&'static str],
) -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just(usual), 1 => select(odd)]
}

fn structured_url() -> impl Strategy<Value = (String, Option<IpAddr>)> {
    (
        mostly("https", SCHEMES),
        mostly("://", SEPARATORS),
        host(),
        mostly("", PORTS),
        path(),
    )
        .prop_map(|(scheme, sep, (host, ip), port, path)| {
            // A path that does not start with a delimiter runs on into the host.
            let ends_host = path.is_empty() || path.starts_with(['/', '?', '#', '\\']);
            let ip = ip.filter(|_| ends_host);
            (format!("{scheme}{sep}{host}{port}{path}"), ip)
        })
}

/// Everything an accepted URL must satisfy: the documented shape, a host the
/// policy allows, and acceptance again of its own serialization.
fn check_accepted(
    policy: &DestinationPolicy,
    flags: (bool, bool, bool),
    input: &str,
    url: &Url,
) -> Result<(), TestCaseError> {
    let (allow_http, allow_loopback, allow_private) = flags;
    prop_assert!(
        url.scheme() == "https" || (allow_http && url.scheme() == "http"),
        "{input:?} -> {url}"
    );
    prop_assert!(url.fragment().is_none(), "{input:?} -> {url}");
    prop_assert!(
        url.username().is_empty() && url.password().is_none(),
        "{input:?} -> {url}"
    );
    prop_assert!(input.len() <= MAX_URL_LEN && url.as_str().len() <= MAX_URL_LEN);
    prop_assert_ne!(url.port(), Some(0));
    prop_assert!(
        !input.is_empty() && !input.chars().any(char::is_control),
        "{input:?}"
    );
    prop_assert_eq!(input.trim(), input);
    match url.host() {
        None => prop_assert!(false, "{input:?} accepted without a host"),
        Some(Host::Ipv4(v4)) => prop_assert!(
            allowed_by((allow_loopback, allow_private), &[], IpAddr::V4(v4)),
            "{input:?} -> {v4} ({:?})",
            classify(IpAddr::V4(v4))
        ),
        Some(Host::Ipv6(v6)) => prop_assert!(
            allowed_by((allow_loopback, allow_private), &[], IpAddr::V6(v6)),
            "{input:?} -> {v6} ({:?})",
            classify(IpAddr::V6(v6))
        ),
        Some(Host::Domain(name)) => {
            prop_assert!(
                name.parse::<IpAddr>().is_err(),
                "{input:?}: domain {name:?}"
            );
            let bare = name.trim_end_matches('.');
            prop_assert!(
                !matches!(bare, "metadata.google.internal" | "metadata.goog"),
                "{input:?}: domain {name:?}"
            );
            let loopback = bare == "localhost"
                || bare == "localhost.localdomain"
                || bare.ends_with(".localhost");
            prop_assert!(allow_loopback || !loopback, "{input:?}: domain {name:?}");
        }
    }
    match policy.check_url(url.as_str()) {
        Ok(again) => prop_assert_eq!(&again, url, "{:?}", input),
        Err(e) => prop_assert!(false, "{input:?} -> {url}, which is then refused: {e}"),
    }
    Ok(())
}

fn policy(flags: (bool, bool, bool)) -> DestinationPolicy {
    DestinationPolicy::new()
        .allow_http(flags.0)
        .allow_loopback(flags.1)
        .allow_private(flags.2)
}

/// Loopback and metadata names in the spellings the URL parser keeps.
fn refused_name() -> impl Strategy<Value = String> {
    (
        select(
            &[
                "localhost",
                "foo.localhost",
                "a.b.localhost",
                "localhost.localdomain",
                "metadata.google.internal",
                "metadata.goog",
            ][..],
        ),
        any::<u64>(),
        prop::collection::vec(select(&[".", "%2e", "%2E"][..]), 0..4),
    )
        .prop_map(|(name, case, dots)| {
            let mixed: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if (case >> (i % 64)) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            mixed + &dots.concat()
        })
}

proptest! {
    #![proptest_config(config())]

    /// The loopback names and cloud metadata names are refused at
    /// registration, however many trailing dots they carry (a URL host keeps
    /// them all; the names mean the same to a resolver, or nothing).
    #[test]
    fn destination_check_url_refuses_special_names(
        name in refused_name(),
        port in mostly("", PORTS),
        path in "(/[a-z]{0,5}){0,2}",
    ) {
        let input = format!("https://{name}{port}{path}");
        let r = DestinationPolicy::new().check_url(&input);
        prop_assert!(r.is_err(), "{:?} accepted as {}", input, r.unwrap());
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any string: no panic; whatever is accepted satisfies every rule.
    #[test]
    fn destination_check_url_arbitrary(s in prop_oneof![
        any::<String>(),
        "https://[^/?#]{0,40}(/.{0,40})?",
        "(https?|HTTPS|ftp)://[\\[\\]0-9a-fA-FxX.:%@]{0,45}(/[ -~]{0,20})?",
    ]) {
        let strict = DestinationPolicy::new();
        if let Ok(url) = strict.check_url(&s) {
            check_accepted(&strict, (false, false, false), &s, &url)?;
        }
    }

    /// URL-like strings from odd schemes, separators, hosts in every IP
    /// spelling, ports and paths, under the strict policy and loosened ones.
    #[test]
    fn destination_check_url_structured(
        (input, ip) in structured_url(),
        query in prop_oneof![3 => Just(""), 1 => Just("?a=1"), 1 => Just("#frag"), 1 => Just("?#")],
        flags in prop_oneof![3 => Just((false, false, false)), 1 => any::<(bool, bool, bool)>()],
    ) {
        let input = format!("{input}{query}");
        let policy = policy(flags);
        let r = policy.check_url(&input);
        if input.chars().any(char::is_control) || input.len() > MAX_URL_LEN {
            prop_assert!(
                matches!(r, Err(Error::InvalidInput { field: "url", .. })),
                "{:?}: {:?}", input, r
            );
        }
        if let Ok(url) = r {
            check_accepted(&policy, flags, &input, &url)?;
            if let Some(ip) = ip {
                // The address is the one written, however it was spelt.
                let got = match url.host() {
                    Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                    Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                    _ => None,
                };
                prop_assert_eq!(got, Some(ip), "{:?} -> {}", input, url);
            }
        }
    }

    /// `check_ip` under the strict policy refuses exactly what `classify`
    /// reports, naming the address and class; and IPv6 forms that embed an
    /// IPv4 address are classified by it, as documented.
    #[test]
    fn destination_check_ip_matches_classify(ip in ip(), v4 in ipv4(), low in any::<u128>()) {
        match (DestinationPolicy::new().check_ip(ip), classify(ip)) {
            (Ok(()), None) => {}
            (Err(refusal), Some(class)) => {
                prop_assert_eq!(refusal.ip(), ip);
                prop_assert_eq!(refusal.class(), class);
                let shown = refusal.to_string();
                prop_assert!(shown.starts_with(&format!("{ip} is ")), "{}", shown);
            }
            (got, class) => prop_assert!(false, "{ip}: check_ip {got:?}, classify {class:?}"),
        }
        let inner = classify(IpAddr::V4(v4));
        let bits = u128::from(u32::from(v4));
        let embed = |n: u128| classify(IpAddr::V6(Ipv6Addr::from(n)));
        prop_assert_eq!(embed((0xffff << 32) | bits), inner, "mapped {}", v4);
        prop_assert_eq!(embed((0x64_ff9b << 96) | bits), inner, "NAT64 {}", v4);
        let six_to_four = (0x2002 << 112) | (bits << 80) | (low & ((1 << 80) - 1));
        prop_assert_eq!(embed(six_to_four), inner, "6to4 {}", v4);
        if bits > 1 {
            let reserved = Some(keyhook::destination::AddressClass::Reserved);
            prop_assert_eq!(embed(bits), inner.or(reserved), "compatible {}", v4);
            prop_assert_eq!(embed((0xffff << 48) | bits), inner.or(reserved), "translated {}", v4);
        }
    }

    /// `check_ip` under any policy follows the documented rules.
    #[test]
    fn destination_check_ip_policy(
        ip in ip(),
        flags in any::<(bool, bool)>(),
        blocks in prop::collection::vec((ip(), 0u8..=128), 0..3),
    ) {
        let cidrs: Vec<Cidr> = blocks
            .iter()
            .map(|&(net, p)| Cidr::new(net, if net.is_ipv4() { p % 33 } else { p }).unwrap())
            .collect();
        let mut policy = DestinationPolicy::new().allow_loopback(flags.0).allow_private(flags.1);
        for c in &cidrs {
            policy = policy.allow_cidr(*c);
        }
        prop_assert_eq!(
            policy.check_ip(ip).is_ok(),
            allowed_by(flags, &cidrs, ip),
            "{} ({:?}) under {:?}", ip, classify(ip), policy
        );
    }

    /// `Cidr` from any string: no panic; a parsed block contains its own
    /// network address, has its host bits cleared, and round-trips through
    /// `Display`.
    #[test]
    fn destination_cidr_parse_arbitrary(s in prop_oneof![
        any::<String>(),
        "[0-9a-fA-F.:/%x ]{0,45}",
        "[0-9]{1,3}(\\.[0-9]{1,3}){0,4}(/[0-9+-]{0,4})?",
    ]) {
        if let Ok(c) = s.parse::<Cidr>() {
            check_cidr(&c)?;
        }
    }

    /// `ADDRESS/PREFIX` in odd spellings: accepted exactly as documented, and
    /// membership is "shares the top PREFIX bits" (IPv4-mapped forms included).
    #[test]
    fn destination_cidr_model(
        ip in ip(),
        prefix in prop_oneof![0u16..=128, 0u16..1000],
        form in 0u8..8,
        other in ip(),
    ) {
        let width: u16 = if ip.is_ipv4() { 32 } else { 128 };
        let (text, ok) = match form {
            0 | 1 => (format!("{ip}/{prefix}"), prefix <= width),
            2 => (ip.to_string(), true),
            3 => (format!("{ip}/0{prefix}"), prefix <= width && prefix < 100),
            4 => (format!("{ip}/+{prefix}"), false),
            5 => (format!("{ip}/ {prefix}"), false),
            6 => (format!("{ip}/"), false),
            _ => (format!(" {ip}/{prefix}"), false),
        };
        let prefix = if form == 2 { width } else { prefix };
        match text.parse::<Cidr>() {
            Ok(c) => {
                prop_assert!(ok, "{:?} accepted as {}", text, c);
                prop_assert_eq!(u16::from(c.prefix_len()), prefix);
                check_cidr(&c)?;
                prop_assert!(c.contains(ip), "{} does not contain {}", c, ip);
                let same = |a: IpAddr, b: IpAddr| match (a, b) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        mask(prefix as u8, 32) & u128::from(u32::from(a) ^ u32::from(b)) == 0
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        mask(prefix as u8, 128) & (u128::from(a) ^ u128::from(b)) == 0
                    }
                    (IpAddr::V4(a), IpAddr::V6(b)) => b.to_ipv4_mapped().is_some_and(|b| {
                        mask(prefix as u8, 32) & u128::from(u32::from(a) ^ u32::from(b)) == 0
                    }),
                    (IpAddr::V6(a), IpAddr::V4(b)) => {
                        mask(prefix as u8, 128) & (u128::from(a) ^ u128::from(b.to_ipv6_mapped())) == 0
                    }
                };
                prop_assert_eq!(c.contains(other), same(ip, other), "{} contains {}?", c, other);
                if let IpAddr::V4(v4) = other {
                    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                    prop_assert_eq!(c.contains(mapped), c.contains(other), "{} / {}", c, mapped);
                }
            }
            Err(e) => {
                prop_assert!(!ok, "{:?} refused: {}", text, e);
                prop_assert!(matches!(e, Error::InvalidInput { field: "cidr", .. }), "{:?}", e);
            }
        }
    }
}

fn check_cidr(c: &Cidr) -> Result<(), TestCaseError> {
    let net = c.network();
    let width = if net.is_ipv4() { 32 } else { 128 };
    prop_assert!(c.prefix_len() <= width);
    prop_assert!(c.contains(net), "{} does not contain its network", c);
    let bits = match net {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    prop_assert_eq!(
        bits & !mask(c.prefix_len(), width),
        0,
        "{} has host bits",
        c
    );
    prop_assert_eq!(c.to_string().parse::<Cidr>().ok(), Some(*c));
    Ok(())
}
