//! Helpers shared by the integration tests.

// Each test crate compiles this module on its own and uses only some helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use keyhook::Database;
use tempfile::TempDir;

/// A fresh temporary directory and the path of a (not yet created) database
/// file inside it. The directory and everything in it go when `TempDir` drops.
pub fn temp_db_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("keyhook.sqlite3");
    (dir, path)
}

/// A real SQLite file database (WAL, default settings) in its own temporary
/// directory, removed on drop.
pub struct TempDb {
    /// The open handle; clone it freely.
    pub db: Database,
    path: PathBuf,
    // Declared last so it is dropped last: the directory outlives the handle.
    _dir: TempDir,
}

impl TempDb {
    /// Opens a new, empty database file.
    pub fn new() -> TempDb {
        let (dir, path) = temp_db_path();
        let db = Database::open(&path).expect("open a new database file");
        TempDb {
            db,
            path,
            _dir: dir,
        }
    }

    /// The database file, for opening it again or with plain `rusqlite`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
