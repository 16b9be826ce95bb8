//! keyhook on PostgreSQL (feature `postgres`), each figure beside a raw
//! baseline measured in the same run: emit against single-row insert
//! transactions of the same rows with the `postgres` client; end to end
//! with 4 emitting threads and 4 workers (default `synchronous_commit=on`);
//! three processes on one database against one.
//!
//! `cargo bench --features postgres --bench postgres [-- emit e2e hosts]`,
//! against `KEYHOOK_BENCH_POSTGRES` (default
//! `postgres://postgres@127.0.0.1/test`); each run uses a schema of its own,
//! dropped at the end.

#[path = "../tests/common/receiver.rs"]
mod receiver;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyhook::postgres::{Client, NoTls};
use keyhook::{Database, DestinationPolicy, Dispatcher, EndpointOptions, WebhookRegistry};
use receiver::{Receiver, Reply};

const ORG: &str = "org_bench";
const TYPE: &str = "conversion.created";
const ROLE: &str = "KEYHOOK_BENCH_ROLE";

fn url() -> String {
    std::env::var("KEYHOOK_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".into())
}

fn data() -> serde_json::Value {
    serde_json::json!({"conversion_id": "cv_123456", "amount_cents": 4900, "currency": "EUR",
        "affiliate": {"id": "af_42", "email": "someone@example.com"}, "status": "pending"})
}

fn open(schema: &str) -> (Database, WebhookRegistry) {
    let db = Database::builder()
        .schema(schema)
        .open_postgres(&url())
        .expect("the bench PostgreSQL server (KEYHOOK_BENCH_POSTGRES)");
    let registry = WebhookRegistry::builder(&db)
        .destination_policy(
            DestinationPolicy::new()
                .allow_http(true)
                .allow_loopback(true),
        )
        .build();
    (db, registry)
}

/// A fresh schema with the event type and one endpoint at `endpoint_url`.
fn setup(schema: &str, endpoint_url: &str) -> (Database, WebhookRegistry) {
    drop_schema(schema);
    let (db, registry) = open(schema);
    registry.register_event_type(TYPE, "bench").unwrap();
    registry
        .create(ORG, endpoint_url, &[TYPE], EndpointOptions::default())
        .unwrap();
    (db, registry)
}

fn drop_schema(schema: &str) {
    let mut c = Client::connect(&url(), NoTls).unwrap();
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}

fn row(what: &str, ours: f64, raw: f64, unit: &str, target: &str) {
    println!(
        "{what:<46} ours {ours:>9.0} {unit:<5} raw {raw:>9.0} {unit:<5} ratio {:>5.2}  (target {target})",
        ours / raw
    );
}

/// The rows one emit writes (an event and its delivery), one transaction
/// per event, with the plain `postgres` client and prepared statements.
fn raw_emit(schema: &str, n: usize) -> f64 {
    let mut c = Client::connect(&url(), NoTls).unwrap();
    c.batch_execute(&format!("SET search_path TO {schema}"))
        .unwrap();
    let body = serde_json::to_vec(&data()).unwrap();
    let endpoint_row: i64 = c
        .query_one("SELECT row_id FROM keyhook_endpoints LIMIT 1", &[])
        .unwrap()
        .get(0);
    let ev = c
        .prepare(
            "INSERT INTO keyhook_events (id, org_id, event_type, body, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING row_id",
        )
        .unwrap();
    let dl = c
        .prepare(
            "INSERT INTO keyhook_deliveries (id, event_row, endpoint_row, org_id, state,
                 next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 0, $5, $5, $5)",
        )
        .unwrap();
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let seq = RUN.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..n {
        let now = 1_800_000_000_000i64 + i as i64;
        let mut tx = c.transaction().unwrap();
        let row: i64 = tx
            .query_one(
                &ev,
                &[&format!("msg_raw{seq}_{i}"), &ORG, &TYPE, &body, &now],
            )
            .unwrap()
            .get(0);
        tx.execute(
            &dl,
            &[
                &format!("dlv_raw{seq}_{i}"),
                &row,
                &endpoint_row,
                &ORG,
                &now,
            ],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn ours_emit(d: &Dispatcher, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        d.emit(ORG, TYPE, &data()).unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn bench_emit() {
    println!("\n== emit on PostgreSQL, one event per call, one endpoint (nothing delivered)");
    let schema = format!("kh_bench_emit_{}", std::process::id());
    let (db, registry) = setup(&schema, "http://127.0.0.1:9/unused");
    let d = Dispatcher::builder(&db, &registry)
        .workers(0)
        .start()
        .unwrap();
    let (mut ours, mut raw) = (0f64, 0f64);
    for _ in 0..3 {
        ours = ours.max(ours_emit(&d, 1000));
        raw = raw.max(raw_emit(&schema, 1000));
    }
    row(
        "emit, 1 event per call (events/s)",
        ours,
        raw,
        "ev/s",
        ">= 0.5",
    );
    d.shutdown(Duration::from_secs(5)).unwrap();
    drop(db);
    drop_schema(&schema);
}

/// 4 threads emit `4 * per_thread` events; 4 workers deliver them to `rx`.
/// Returns events/s from the first emit to the last arrival, and emits/s.
fn e2e(schema: &str, rx: &Receiver, per_thread: usize) -> (f64, f64) {
    let (db, registry) = setup(schema, &rx.url("/hook"));
    let d = Arc::new(
        Dispatcher::builder(&db, &registry)
            .workers(4)
            .start()
            .unwrap(),
    );
    // The endpoint proven first, as in steady state.
    let before = rx.count();
    d.emit(ORG, TYPE, &data()).unwrap();
    assert!(rx.wait_for(before + 1, Duration::from_secs(30)));
    let before = rx.count();
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let d = Arc::clone(&d);
            sc.spawn(move || {
                for _ in 0..per_thread {
                    d.emit(ORG, TYPE, &data()).unwrap();
                }
            });
        }
    });
    let emitted = start.elapsed();
    assert!(rx.wait_for(before + 4 * per_thread, Duration::from_secs(300)));
    let total = start.elapsed();
    d.shutdown(Duration::from_secs(10)).unwrap();
    drop(db);
    drop_schema(schema);
    let n = (4 * per_thread) as f64;
    (n / total.as_secs_f64(), n / emitted.as_secs_f64())
}

fn bench_e2e() {
    println!(
        "\n== end to end on PostgreSQL: 4 threads emit one event per call, 4 workers deliver (synchronous_commit=on)"
    );
    let rx = Receiver::counting(|_| Reply::status(204));
    let schema = format!("kh_bench_e2e_{}", std::process::id());
    let (mut best, mut best_emit, mut raw) = (0f64, 0f64, 0f64);
    for _ in 0..2 {
        let (e2e, emit) = e2e(&schema, &rx, 1500);
        (best, best_emit) = (best.max(e2e), best_emit.max(emit));
        let (db, _) = setup(&schema, "http://127.0.0.1:9/unused");
        raw = raw.max(raw_emit(&schema, 1000));
        drop(db);
        drop_schema(&schema);
    }
    println!("(raw: single-row insert transactions of emit's rows; the peer server did ~1,000/s)");
    row(
        &format!("one process (events/s; emit alone {best_emit:.0}/s)"),
        best,
        raw,
        "ev/s",
        ">= 3,000 ev/s",
    );
}

/// A child process (an app server): 4 threads emit `per_thread` events
/// each while 4 workers deliver, until the parent's stop file appears.
fn child(schema: &str, per_thread: usize, stop: &Path) {
    let (db, registry) = open(schema);
    let d = Arc::new(
        Dispatcher::builder(&db, &registry)
            .workers(4)
            .start()
            .unwrap(),
    );
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let d = Arc::clone(&d);
            sc.spawn(move || {
                for _ in 0..per_thread {
                    d.emit(ORG, TYPE, &data()).unwrap();
                }
            });
        }
    });
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(d) = Arc::try_unwrap(d) {
        d.shutdown(Duration::from_secs(10)).unwrap();
    }
}

/// `processes` children emit `total` events between them; events/s from
/// their start to the last arrival.
fn hosts_rate(schema: &str, rx: &Receiver, processes: usize, total: usize) -> f64 {
    let (db, registry) = setup(schema, &rx.url("/hook"));
    // Prove the endpoint first.
    let d = Dispatcher::builder(&db, &registry).start().unwrap();
    let before = rx.count();
    d.emit(ORG, TYPE, &data()).unwrap();
    assert!(rx.wait_for(before + 1, Duration::from_secs(30)));
    d.shutdown(Duration::from_secs(5)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let before = rx.count();
    let start = Instant::now();
    let mut children: Vec<std::process::Child> = (0..processes)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .env(ROLE, "host")
                .env("KEYHOOK_BENCH_SCHEMA", schema)
                .env(
                    "KEYHOOK_BENCH_PER_THREAD",
                    (total / processes / 4).to_string(),
                )
                .env("KEYHOOK_BENCH_STOP", &stop)
                .spawn()
                .unwrap()
        })
        .collect();
    let expected = before + (total / processes / 4) * 4 * processes;
    assert!(rx.wait_for(expected, Duration::from_secs(300)));
    let rate = (expected - before) as f64 / start.elapsed().as_secs_f64();
    std::fs::write(&stop, b"stop").unwrap();
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    drop(db);
    drop_schema(schema);
    rate
}

fn bench_hosts() {
    println!("\n== three processes (app servers) on one database, each emitting and delivering");
    let rx = Receiver::counting(|_| Reply::status(204));
    let schema = format!("kh_bench_hosts_{}", std::process::id());
    let (mut one, mut three) = (0f64, 0f64);
    for _ in 0..2 {
        one = one.max(hosts_rate(&schema, &rx, 1, 6000));
        three = three.max(hosts_rate(&schema, &rx, 3, 6000));
    }
    println!(
        "(6,000 events; each process starts, emits from 4 threads and delivers with 4 workers)"
    );
    row(
        "three processes vs one (events/s)",
        three,
        one,
        "ev/s",
        "measured; 2 cores here",
    );
}

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("host") {
        let var = |k: &str| std::env::var(k).unwrap();
        child(
            &var("KEYHOOK_BENCH_SCHEMA"),
            var("KEYHOOK_BENCH_PER_THREAD").parse().unwrap(),
            Path::new(&var("KEYHOOK_BENCH_STOP")),
        );
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    println!("keyhook on PostgreSQL (release; ratios are what count on a noisy machine)");
    if want("emit") {
        bench_emit();
    }
    if want("e2e") {
        bench_e2e();
    }
    if want("hosts") {
        bench_hosts();
    }
}
