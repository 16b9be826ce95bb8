//! Verify's memory of recently seen keys (SQLite files).
//!
//! An API server verifies a key on every request, and a few keys make most
//! of the traffic. A key whose secret matched once is kept here, by id, with
//! what verify answers; the next verify of it reads no row. Every verify
//! first asks SQLite whether anything was committed since the last look
//! (`PRAGMA data_version` on a connection of the cache's own: no table is
//! read), and only then reads `keyhook_key_changes`, whose version every
//! change to what verify answers bumps (a trigger, in any process, with any
//! code). A changed version empties the cache. So revocation, expiry
//! changes, plan changes and key updates are seen by the very next verify on
//! every thread and in every process, exactly as without a cache.
//!
//! `data_version` starts a read transaction, which costs about as much as
//! the row read it saves. So on Unix the cache first reads the wal-index
//! header, the first 96 bytes of the `-shm` file that every connection to
//! the file shares (SQLite's documented WAL format: two copies of a 48-byte
//! header). Every commit, by any connection of any process, rewrites it
//! (new frame count, checksums, salts after a WAL reset) before the commit
//! returns; while the bytes are the same as at the last full check, nothing
//! was committed since. Any difference, or a header that does not look
//! valid, falls back to the full check.
//!
//! Only keys whose secret matched are kept: unknown ids and wrong secrets
//! never enter, so they cannot push the hot keys out. At most `capacity`
//! keys are kept; a new one then replaces the one used longest ago.
//!
//! PostgreSQL has no commit counter to read without a round trip, which is
//! what verify costs anyway: there the cache is off.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use crate::db::Database;
use crate::error::Result;

/// What verify needs of a key, as stored when it was read.
pub(crate) struct Cached {
    pub org: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub environment: String,
    pub metadata: Option<serde_json::Value>,
    pub prefix: Option<String>,
    pub hash: Vec<u8>,
    pub hash_kind: i64,
    pub expires_at: Option<i64>,
    pub revoke_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub plan: bool,
    /// When use was last recorded (`i64::MIN`: never); kept up to date by
    /// verify, which records use at most once per granularity.
    pub last_used_at: AtomicI64,
}

pub(crate) struct VerifyCache {
    state: Mutex<State>,
    capacity: usize,
}

struct State {
    /// The cache's own connection, for `data_version`.
    conn: rusqlite::Connection,
    /// The `-shm` file (Unix, a plain file path), and its header as of the
    /// last full check.
    wal_index: Option<std::fs::File>,
    wal_header: Option<[u8; WAL_HEADER]>,
    data_version: Option<i64>,
    /// The `keyhook_key_changes` version the entries were read under.
    key_version: Option<i64>,
    entries: HashMap<String, (Arc<Cached>, u64)>,
    /// Counts lookups: an entry's last use, for replacement.
    tick: u64,
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl VerifyCache {
    /// A cache of at most `capacity` keys, or `None` where there is none
    /// (capacity 0, in memory, PostgreSQL).
    pub(crate) fn new(db: &Database, capacity: usize) -> Result<Option<VerifyCache>> {
        if capacity == 0 {
            return Ok(None);
        }
        let Some(conn) = db.extra_connection()? else {
            return Ok(None);
        };
        // Opened after the connection: the file exists while one is open.
        let wal_index = if cfg!(unix) {
            db.wal_index_path()
                .and_then(|p| std::fs::File::open(p).ok())
        } else {
            None
        };
        Ok(Some(VerifyCache {
            state: Mutex::new(State {
                conn,
                wal_index,
                wal_header: None,
                data_version: None,
                key_version: None,
                entries: HashMap::new(),
                tick: 0,
            }),
            capacity,
        }))
    }

    /// The key `id` as last read, if nothing changed since.
    pub(crate) fn get(&self, id: &str) -> Result<Option<Arc<Cached>>> {
        let mut st = self.lock();
        st.refresh()?;
        st.tick += 1;
        let tick = st.tick;
        Ok(st.entries.get_mut(id).map(|(cached, used)| {
            *used = tick;
            Arc::clone(cached)
        }))
    }

    /// Keeps `cached`, read under `key_version`, unless a change came since.
    pub(crate) fn insert(&self, id: &str, cached: Arc<Cached>, key_version: i64) {
        let mut st = self.lock();
        if st.key_version != Some(key_version) {
            return;
        }
        if st.entries.len() >= self.capacity && !st.entries.contains_key(id) {
            let oldest = st
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                st.entries.remove(&oldest);
            }
        }
        let tick = st.tick;
        st.entries.insert(id.to_owned(), (cached, tick));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Entries are whole values: a panic elsewhere cannot leave one half
        // written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Two copies of SQLite's 48-byte wal-index header.
const WAL_HEADER: usize = 96;

/// The wal-index header, if it reads whole and looks initialised (format
/// 3007000, `isInit` set, both copies equal).
#[cfg(unix)]
fn read_wal_header(file: &std::fs::File) -> Option<[u8; WAL_HEADER]> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; WAL_HEADER];
    file.read_exact_at(&mut h, 0).ok()?;
    let version = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
    (version == 3_007_000 && h[12] == 1 && h[..48] == h[48..]).then_some(h)
}

#[cfg(not(unix))]
fn read_wal_header(_: &std::fs::File) -> Option<[u8; WAL_HEADER]> {
    None
}

impl State {
    /// Empties the cache if a change to keys was committed since the last
    /// look, by any connection of any process.
    fn refresh(&mut self) -> Result<()> {
        // Read before the full check: a commit after this read changes the
        // header again, and the next verify looks again.
        let header = self.wal_index.as_ref().and_then(read_wal_header);
        if header.is_some() && header == self.wal_header {
            return Ok(());
        }
        self.full_check()?;
        self.wal_header = header;
        Ok(())
    }

    fn full_check(&mut self) -> Result<()> {
        let data_version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.data_version == Some(data_version) {
            return Ok(());
        }
        let key_version: i64 = self
            .conn
            .prepare_cached("SELECT version FROM keyhook_key_changes WHERE id = 1")?
            .query_row([], |r| r.get(0))?;
        if self.key_version != Some(key_version) {
            self.entries.clear();
            self.key_version = Some(key_version);
        }
        self.data_version = Some(data_version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{ApiKeyStore, Database, KeySettings, KeyUpdate, Rejection};

    fn store(dir: &tempfile::TempDir, capacity: usize) -> ApiKeyStore {
        let db = Database::open(dir.path().join("k.sqlite3")).unwrap();
        let s = ApiKeyStore::builder(&db)
            .verify_cache(capacity)
            .build()
            .unwrap();
        s.set_api_keys_enabled("org", true).unwrap();
        s
    }

    fn cache_len(s: &ApiKeyStore) -> usize {
        s.cache.as_ref().expect("a cache on a file").len()
    }

    #[test]
    fn only_matching_secrets_are_kept_and_memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 2);
        let keys: Vec<String> = (0..3)
            .map(|i| {
                s.create("org", &format!("k{i}"), KeySettings::default())
                    .unwrap()
                    .secret
                    .expose()
                    .to_owned()
            })
            .collect();
        // A wrong secret for a real id, many times: nothing kept.
        let mut wrong = keys[0].clone();
        let at = wrong.len() - 10;
        let swapped = if &wrong[at..at + 1] == "A" { "B" } else { "A" };
        wrong.replace_range(at..at + 1, swapped);
        for _ in 0..5 {
            assert!(s.verify(&wrong).is_err());
        }
        assert_eq!(cache_len(&s), 0);
        for k in &keys {
            s.verify(k).unwrap();
        }
        assert_eq!(cache_len(&s), 2, "at most the capacity");
        // The hot key stays when a third comes in.
        s.verify(&keys[2]).unwrap();
        s.verify(&keys[0]).unwrap();
        s.verify(&keys[1]).unwrap();
        assert_eq!(cache_len(&s), 2);
    }

    #[test]
    fn every_change_is_seen_by_the_next_verify_on_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 100);
        let created = s.create("org", "k", KeySettings::default()).unwrap();
        let key = created.secret.expose().to_owned();
        let id = created.key.id.clone();
        let verify_elsewhere = |s: &ApiKeyStore| {
            let (s, key) = (s.clone(), key.clone());
            std::thread::spawn(move || s.verify(&key)).join().unwrap()
        };
        assert!(verify_elsewhere(&s).is_ok());
        assert_eq!(cache_len(&s), 1);
        // An update of what verify answers.
        s.update(
            "org",
            &id,
            KeyUpdate {
                scopes: Some(vec!["reports:read".into()]),
                ..KeyUpdate::default()
            },
        )
        .unwrap();
        assert_eq!(verify_elsewhere(&s).unwrap().scopes, ["reports:read"]);
        // The plan.
        s.set_api_keys_enabled("org", false).unwrap();
        assert_eq!(
            verify_elsewhere(&s).unwrap_err().rejection(),
            Some(Rejection::PlanInactive)
        );
        s.set_api_keys_enabled("org", true).unwrap();
        assert!(verify_elsewhere(&s).is_ok());
        // Revocation.
        s.revoke("org", &id).unwrap();
        assert_eq!(
            verify_elsewhere(&s).unwrap_err().rejection(),
            Some(Rejection::Revoked)
        );
        // Another connection (as another process) writing the table itself.
        let other = store(&dir, 100);
        let k2 = other.create("org", "k2", KeySettings::default()).unwrap();
        let k2_plain = k2.secret.expose().to_owned();
        assert!(s.verify(&k2_plain).is_ok());
        let raw = rusqlite::Connection::open(dir.path().join("k.sqlite3")).unwrap();
        raw.busy_timeout(Duration::from_secs(5)).unwrap();
        raw.execute(
            "UPDATE keyhook_api_keys SET expires_at = 1 WHERE id = ?1",
            [&k2.key.id],
        )
        .unwrap();
        assert_eq!(
            s.verify(&k2_plain).unwrap_err().rejection(),
            Some(Rejection::Expired)
        );
    }

    #[test]
    fn changes_are_seen_through_wal_resets_by_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 100);
        assert_eq!(
            cfg!(unix),
            s.cache.as_ref().unwrap().lock().wal_index.is_some(),
            "the wal-index header is watched on Unix"
        );
        let raw = rusqlite::Connection::open(dir.path().join("k.sqlite3")).unwrap();
        raw.busy_timeout(Duration::from_secs(5)).unwrap();
        for round in 0..3 {
            let created = s
                .create("org", &format!("k{round}"), KeySettings::default())
                .unwrap();
            let key = created.secret.expose().to_owned();
            s.verify(&key).unwrap();
            s.verify(&key).unwrap();
            assert_eq!(
                cfg!(unix),
                s.cache.as_ref().unwrap().lock().wal_header.is_some(),
                "the header reads as valid"
            );
            // Another connection revokes, then empties and restarts the
            // WAL: the header's frame count starts over, its salts change.
            raw.execute(
                "UPDATE keyhook_api_keys SET revoked_at = 1 WHERE id = ?1",
                [&created.key.id],
            )
            .unwrap();
            let _: (i64, i64, i64) = raw
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(
                s.verify(&key).unwrap_err().rejection(),
                Some(Rejection::Revoked),
                "round {round}"
            );
        }
    }

    #[test]
    fn unrelated_commits_keep_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir, 100);
        let key = s
            .create("org", "k", KeySettings::default())
            .unwrap()
            .secret
            .expose()
            .to_owned();
        s.verify(&key).unwrap();
        // Another organization's plan has no keys to change: the version
        // stays, and so does the cached key.
        s.set_api_keys_enabled("org_other", true).unwrap();
        s.verify(&key).unwrap();
        assert_eq!(cache_len(&s), 1);
    }

    #[test]
    fn no_cache_in_memory_or_at_capacity_zero() {
        let db = Database::open_in_memory().unwrap();
        assert!(ApiKeyStore::new(&db).cache.is_none());
        let dir = tempfile::tempdir().unwrap();
        assert!(store(&dir, 0).cache.is_none());
        assert!(store(&dir, 1).cache.is_some());
    }
}
