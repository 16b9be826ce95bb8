//! Setup shared by the dispatcher benchmarks: a database file in a
//! temporary folder, a registry that allows loopback receivers, one event
//! type and one endpoint.
#![allow(dead_code)]

use std::path::PathBuf;

use keyhook::{Database, DestinationPolicy, Durability, EndpointOptions, WebhookRegistry};

pub const ORG: &str = "org_bench";
pub const TYPE: &str = "conversion.created";
/// For endpoints nothing is delivered to (emit-only benchmarks).
pub const UNUSED_URL: &str = "http://127.0.0.1:9/unused";

pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub db: Database,
    pub registry: WebhookRegistry,
    pub path: PathBuf,
    pub endpoint_id: String,
}

pub fn setup(durability: Durability, url: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite3");
    let db = Database::builder()
        .durability(durability)
        .open(&path)
        .unwrap();
    let registry = WebhookRegistry::builder(&db)
        .destination_policy(
            DestinationPolicy::new()
                .allow_http(true)
                .allow_loopback(true),
        )
        .build();
    registry.register_event_type(TYPE, "bench").unwrap();
    let endpoint_id = registry
        .create(ORG, url, &[TYPE], EndpointOptions::default())
        .unwrap()
        .endpoint
        .id;
    Setup {
        _dir: dir,
        db,
        registry,
        path,
        endpoint_id,
    }
}

/// The sections named on the command line (`cargo bench --bench X -- a b`);
/// `want(name)` is true for every section when none is named.
pub fn wanted_sections() -> impl Fn(&str) -> bool {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    move |name| args.is_empty() || args.iter().any(|a| a == name)
}
