//! keyhook
#![forbid(unsafe_code)]

mod api_keys;
mod db;
mod error;
mod id;
mod schema;
mod validate;

pub use api_keys::{
    ApiKey, ApiKeyStore, ApiKeyStoreBuilder, CreatedKey, KeySecret, KeySettings, KeyState,
    VerifiedKey,
};
pub use db::{Database, DatabaseBuilder, Durability};
pub use error::{Error, Rejection, Result};
