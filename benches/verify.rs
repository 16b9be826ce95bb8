//! `ApiKeyStore::verify` throughput, printed beside a raw baseline measured in
//! the same run on the same file: a plain rusqlite connection with the same
//! pragmas doing one indexed `SELECT` by lookup id and one SHA-256 of the
//! secret, which is the least any verification has to do. Verify is measured
//! with its cache of recently seen keys (the default; target 2x the raw
//! baseline) and without it (`verify_cache(0)`; target 0.7x).
//!
//! Run with `cargo bench --bench verify`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use keyhook::{ApiKeyStore, Database, Durability, KeySettings, Rejection};
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// Keys in the table, so lookups run against a realistically sized index.
const KEYS: usize = 100_000;
/// Organizations the keys are spread over. `create` counts the organization's
/// live keys on every call, so filling one organization with 100,000 keys
/// takes time quadratic in its size (about ten minutes); verify does not
/// depend on how keys are spread.
const ORGS: usize = 1_000;
/// Valid keys verified in turn: a set whose pages fit SQLite's default page
/// cache (2 MiB per connection), and a wider one whose pages (about 6 MB) do
/// not, so most lookups read from the OS page cache.
const ROTATIONS: [usize; 2] = [100, 1_000];
/// Time each side gets per round.
const ROUND: Duration = Duration::from_secs(1);
/// A round alternates the two sides in this many slices each, so a burst of
/// load from elsewhere on the machine lands on both, not on one.
const SLICES: u32 = 20;
const ROUNDS: usize = 3;
/// Targets: verify of keys seen recently (the cache), and without a cache.
const TARGET_CACHED: f64 = 2.0;
const TARGET_UNCACHED: f64 = 0.7;
const PREFIX: &str = "vb";

const RAW_SELECT: &str = "SELECT org_id, hash, hash_kind, scopes, environment, expires_at, \
     revoke_at, revoked_at FROM keyhook_api_keys WHERE id = ?1";

fn main() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("verify-bench.sqlite3");

    let setup_started = Instant::now();
    let keys = populate(&path, ROTATIONS[1]);
    let setup = setup_started.elapsed();

    // Measured with the default durability (FULL), as a host would run it.
    let db = Database::open(&path).expect("reopen the database");
    let store = ApiKeyStore::builder(&db)
        .prefix(PREFIX)
        .build()
        .expect("store settings");
    let uncached = ApiKeyStore::builder(&db)
        .prefix(PREFIX)
        .verify_cache(0)
        .build()
        .expect("store settings");
    let raw = RawVerifier::open(&path);

    // The first verify of a key records its last use (a write); after that
    // verify is read-only for a minute, which covers every round below.
    for key in &keys {
        store.verify(key).expect("a created key verifies");
        assert!(raw.verify(key), "the raw baseline accepts a created key");
    }

    let comparisons: Vec<(&str, f64, Comparison)> = ROTATIONS
        .iter()
        .flat_map(|&n| {
            [
                ("cached", TARGET_CACHED, compare(&keys[..n], &store, &raw)),
                (
                    "no cache",
                    TARGET_UNCACHED,
                    compare(&keys[..n], &uncached, &raw),
                ),
            ]
        })
        .collect();

    let mut broken = keys[0].clone().into_bytes();
    let last = broken.len() - 1;
    broken[last] = if broken[last] == b'a' { b'b' } else { b'a' };
    let broken = String::from_utf8(broken).expect("ASCII");
    let huge = "a".repeat(1 << 20);
    let malformed = [broken, huge];
    for s in &malformed {
        assert_eq!(
            store.verify(s).unwrap_err().rejection(),
            Some(Rejection::Malformed)
        );
    }
    let mut broken_rate = Meter::default();
    broken_rate.run(ROUND / 2, &malformed[..1], |k| store.verify(k).is_err());
    let mut huge_rate = Meter::default();
    huge_rate.run(ROUND / 2, &malformed[1..], |k| store.verify(k).is_err());

    println!();
    println!(
        "verify: {KEYS} keys over {ORGS} organizations; one thread; best of {ROUNDS} rounds \
         of {ROUND:?} per side, the sides alternating in {SLICES} slices per round"
    );
    println!(
        "setup: {KEYS} ApiKeyStore::create calls in {:.1} s ({:.0}/s, Durability::Normal)",
        setup.as_secs_f64(),
        KEYS as f64 / setup.as_secs_f64()
    );
    println!();
    println!("{:<56} {:>12}", "measurement", "per second");
    println!("{:-<56} {:->12}", "", "");
    for (what, target, c) in &comparisons {
        let n = c.rotation;
        row(
            &format!("(a) ApiKeyStore::verify ({what}), {n} valid keys"),
            c.ours,
        );
        row(&format!("(b) raw SELECT + SHA-256, {n} valid keys"), c.raw);
        let ratio = c.ours / c.raw;
        let verdict = if ratio >= *target { "met" } else { "MISSED" };
        println!(
            "{:<56} {:>12}",
            format!("    (a)/(b), target >= {target:.2}: {verdict}"),
            format!("{ratio:.2}")
        );
        println!(
            "{:<56} {:>12}",
            "    (a)/(b) in each round",
            c.rounds.join(" ")
        );
    }
    row(
        "(c) rejected without a lookup: broken checksum",
        broken_rate.rate(),
    );
    row(
        "(c) rejected without a lookup: 1 MiB string",
        huge_rate.rate(),
    );
    println!();
    println!(
        "The {} keys' pages fit SQLite's default page cache, so that ratio is verify's\n\
         own overhead. The {} keys' pages (about 6 MB) do not: both sides mostly read\n\
         from the OS page cache, and since both connections draw on one page-cache pool\n\
         in the bundled SQLite, that ratio swings with whichever side keeps its pages.",
        ROTATIONS[0], ROTATIONS[1]
    );
    println!();
}

/// Best rates of each side over `ROUNDS` rounds on one rotation of keys.
struct Comparison {
    rotation: usize,
    ours: f64,
    raw: f64,
    rounds: Vec<String>,
}

fn compare(keys: &[String], store: &ApiKeyStore, raw: &RawVerifier) -> Comparison {
    let mut best = Comparison {
        rotation: keys.len(),
        ours: 0.0,
        raw: 0.0,
        rounds: Vec::with_capacity(ROUNDS),
    };
    for _ in 0..ROUNDS {
        let mut ours = Meter::default();
        let mut base = Meter::default();
        for _ in 0..SLICES {
            ours.run(ROUND / SLICES, keys, |k| store.verify(k).is_ok());
            base.run(ROUND / SLICES, keys, |k| raw.verify(k));
        }
        best.ours = best.ours.max(ours.rate());
        best.raw = best.raw.max(base.rate());
        best.rounds
            .push(format!("{:.2}", ours.rate() / base.rate()));
    }
    best
}

fn row(label: &str, per_second: f64) {
    println!("{label:<56} {per_second:>12.0}");
}

/// Creates `KEYS` keys through the public API; returns the plaintext of
/// `sample` of them, spread evenly over the table.
fn populate(path: &Path, sample_len: usize) -> Vec<String> {
    let db = Database::builder()
        .durability(Durability::Normal)
        .open(path)
        .expect("open the database");
    let store = ApiKeyStore::builder(&db)
        .prefix(PREFIX)
        .max_live_keys(200_000)
        .build()
        .expect("store settings");
    let orgs: Vec<String> = (0..ORGS).map(|i| format!("org_{i}")).collect();
    for org in &orgs {
        store.set_api_keys_enabled(org, true).expect("enable plan");
    }
    let settings = KeySettings {
        scopes: vec!["events:read".into(), "events:write".into()],
        ..KeySettings::default()
    };
    let mut sample = Vec::with_capacity(sample_len);
    for i in 0..KEYS {
        let created = store
            .create(&orgs[i % ORGS], &format!("key {i}"), settings.clone())
            .expect("create a key");
        if i % (KEYS / sample_len) == 0 {
            sample.push(created.secret.expose().to_owned());
        }
    }
    sample
}

/// Calls and time accumulated over one or more slices.
#[derive(Default)]
struct Meter {
    calls: u64,
    time: Duration,
}

impl Meter {
    /// Runs `op` over `inputs` in turn (carrying on where the last slice
    /// stopped) for about `length`.
    fn run(&mut self, length: Duration, inputs: &[String], mut op: impl FnMut(&str) -> bool) {
        let started = Instant::now();
        loop {
            for _ in 0..32 {
                let input = &inputs[self.calls as usize % inputs.len()];
                assert!(op(black_box(input)), "unexpected outcome for one input");
                self.calls += 1;
            }
            let elapsed = started.elapsed();
            if elapsed >= length {
                self.time += elapsed;
                return;
            }
        }
    }

    fn rate(&self) -> f64 {
        self.calls as f64 / self.time.as_secs_f64()
    }
}

/// The baseline: what any verification must do, with nothing else.
struct RawVerifier {
    conn: Connection,
}

impl RawVerifier {
    fn open(path: &Path) -> RawVerifier {
        let conn = Connection::open(path).expect("open the database file");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .unwrap();
        assert!(mode.eq_ignore_ascii_case("wal"));
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        RawVerifier { conn }
    }

    fn verify(&self, key: &str) -> bool {
        let Some((_, body)) = key.rsplit_once('_') else {
            return false;
        };
        if body.len() != 40 || !body.is_ascii() {
            return false;
        }
        let (id, secret) = (&body[..12], &body[12..34]);
        let mut stmt = self.conn.prepare_cached(RAW_SELECT).unwrap();
        let row = stmt
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })
            .optional()
            .unwrap();
        match row {
            Some((org, hash, _kind, scopes, env, _expires, _revoke_at, revoked_at)) => {
                black_box((org, scopes, env));
                Sha256::digest(secret.as_bytes()).as_slice() == hash.as_slice()
                    && revoked_at.is_none()
            }
            None => false,
        }
    }
}
