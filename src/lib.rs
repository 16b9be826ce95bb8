//! keyhook
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api_keys;
mod db;
pub mod destination;
mod dispatch;
mod error;
mod event;
mod id;
mod registry;
mod schema;
pub mod signing;
mod validate;

pub use api_keys::{
    ApiKey, ApiKeyStore, ApiKeyStoreBuilder, CreatedKey, KeySecret, KeySettings, KeyState,
    VerifiedKey,
};
pub use db::{Database, DatabaseBuilder, Durability};
pub use destination::DestinationPolicy;
pub use dispatch::{
    Attempt, AttemptError, AttemptReport, Delivery, DeliveryState, Dispatcher, DispatcherBuilder,
    RetryPolicy,
};
pub use error::{Error, Rejection, Result};
pub use event::NewEvent;
pub use registry::{
    CreatedEndpoint, DEFAULT_ROTATION_GRACE, Endpoint, EndpointOptions, EndpointUpdate, EventType,
    MAX_ROTATION_GRACE, WebhookRegistry, WebhookRegistryBuilder,
};
pub use signing::SigningSecret;
