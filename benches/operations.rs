//! Delivery-operations benchmarks, each figure beside a baseline measured in
//! the same run: history page queries on a large endpoint vs a small one, and
//! emit latency while a large retention purge runs vs without one.
//!
//! `cargo bench --bench operations` runs all; name sections to pick some:
//! `cargo bench --bench operations -- history purge`.
//!
//! Sizes: `KEYHOOK_BENCH_HISTORY_ROWS` (default 1,000,000 deliveries on the
//! large endpoint; the small one has 10,000) and `KEYHOOK_BENCH_PURGE_ROWS`
//! (default 1,000,000 old deliveries to purge).

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ORG, Setup, TYPE, UNUSED_URL, setup};
use keyhook::{DeliveryState, Dispatcher, Durability, HistoryQuery};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn data() -> serde_json::Value {
    serde_json::json!({"conversion_id": "cv_123456", "amount_cents": 4900, "currency": "EUR",
        "affiliate": {"id": "af_42", "email": "someone@example.com"}, "status": "pending"})
}

fn keyhook_body() -> Vec<u8> {
    let mut b =
        br#"{"type":"conversion.created","timestamp":"2026-11-29T21:46:19.123Z","data":"#.to_vec();
    b.extend(serde_json::to_vec(&data()).unwrap());
    b.push(b'}');
    b
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn env_rows(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dispatcher(s: &Setup) -> Dispatcher {
    Dispatcher::builder(&s.db, &s.registry)
        .workers(0)
        .retention(None)
        .start()
        .unwrap()
}

/// What [`fill`] writes: `rows` finished deliveries to the endpoint, one
/// event each, created `step_ms` apart from `start_ms` on; every
/// `failed_every`-th is failed (the rest delivered), and each has one
/// attempt row.
struct Fill {
    rows: usize,
    start_ms: i64,
    step_ms: i64,
    failed_every: usize,
}

/// Writes [`Fill`] into keyhook's schema with plain rusqlite, in big
/// transactions (`synchronous=NORMAL`), for setup speed.
fn fill(path: &Path, f: &Fill) -> Duration {
    let start = Instant::now();
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.pragma_update(None, "cache_size", -262_144).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let endpoint_row: i64 = c
        .query_row("SELECT row_id FROM keyhook_endpoints LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let body = keyhook_body();
    let per_tx = 100_000;
    let mut i = 0;
    while i < f.rows {
        let tx = c.transaction().unwrap();
        {
            let mut ev_stmt = tx
                .prepare_cached(
                    "INSERT INTO keyhook_events (id, org_id, event_type, body, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .unwrap();
            let mut dl_stmt = tx
                .prepare_cached(
                    "INSERT INTO keyhook_deliveries (event_row, endpoint_row, org_id, state, attempts,
                         next_attempt_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 1, NULL, ?5, ?6)",
                )
                .unwrap();
            let mut at_stmt = tx
                .prepare_cached(
                    "INSERT INTO keyhook_attempts (delivery_row, attempted_at, duration_ms, status_code,
                         error_kind, response_body, manual)
                     VALUES (?1, ?2, 42, ?3, NULL, NULL, 0)",
                )
                .unwrap();
            for _ in 0..per_tx.min(f.rows - i) {
                let at = f.start_ms + i as i64 * f.step_ms;
                let failed = f.failed_every > 0 && i % f.failed_every == f.failed_every / 2;
                ev_stmt
                    .execute(rusqlite::params![
                        format!("msg_fill{i:016}"),
                        ORG,
                        TYPE,
                        body,
                        at
                    ])
                    .unwrap();
                let ev = tx.last_insert_rowid();
                dl_stmt
                    .execute(rusqlite::params![
                        ev,
                        endpoint_row,
                        ORG,
                        if failed { 2 } else { 1 },
                        at,
                        at + 50
                    ])
                    .unwrap();
                let dl = tx.last_insert_rowid();
                at_stmt
                    .execute(rusqlite::params![
                        dl,
                        at + 5,
                        if failed { 500 } else { 200 }
                    ])
                    .unwrap();
                i += 1;
            }
        }
        tx.commit().unwrap();
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    start.elapsed()
}

/// Follows `next_cursor` with the largest pages until `depth` rows of the
/// query lie before the cursor; returns it (`None` at depth 0).
fn cursor_at(
    d: &Dispatcher,
    s: &Setup,
    state: Option<DeliveryState>,
    depth: usize,
) -> Option<String> {
    let mut cursor = None;
    let mut seen = 0;
    while seen < depth {
        let query = HistoryQuery {
            state,
            limit: (depth - seen).min(keyhook::MAX_PAGE_SIZE),
            cursor,
            ..HistoryQuery::default()
        };
        let page = d.history(ORG, &s.endpoint_id, &query).unwrap();
        seen += page.deliveries.len();
        cursor = Some(page.next_cursor.expect("the walk stays inside the history"));
    }
    cursor
}

/// Pages of 50 per second: the same query repeated for `window`.
fn page_rate(d: &Dispatcher, s: &Setup, query: &HistoryQuery, window: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        let page = d.history(ORG, &s.endpoint_id, query).unwrap();
        assert_eq!(page.deliveries.len(), query.limit);
        assert!(page.deliveries.iter().all(|x| x.attempts.len() == 1));
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct HistoryDb {
    s: Setup,
    d: Dispatcher,
    rows: usize,
}

fn history_db(rows: usize) -> HistoryDb {
    let s = setup(Durability::Normal, UNUSED_URL);
    // Created over the last `rows` seconds' worth of 10 ms steps, oldest first.
    let took = fill(
        &s.path,
        &Fill {
            rows,
            start_ms: now_ms() - rows as i64 * 10 - 60_000,
            step_ms: 10,
            failed_every: 100,
        },
    );
    let size = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
    println!(
        "setup: {} deliveries (+ events, 1 attempt each, 1% failed) in {:.1?} ({:.0} rows/s), file {} MiB",
        thousands(rows),
        took,
        rows as f64 / took.as_secs_f64(),
        size >> 20
    );
    let d = dispatcher(&s);
    HistoryDb { s, d, rows }
}

fn bench_history() {
    let large = env_rows("KEYHOOK_BENCH_HISTORY_ROWS", 1_000_000);
    let small = 10_000;
    println!(
        "\n== history: 50-row pages on an endpoint with {} deliveries vs {}",
        thousands(large),
        thousands(small)
    );
    let a = history_db(small);
    let b = history_db(large);
    // (label, state filter, rows of that state in a history of n, depth among them)
    type Rows = fn(usize) -> usize;
    let cases: [(&str, Option<DeliveryState>, Rows, Rows); 6] = [
        ("first page", None, |n| n, |_| 0),
        ("page 101 (5,000 rows deep)", None, |n| n, |_| 5_000),
        ("middle of the history", None, |n| n, |m| m / 2),
        (
            "state Delivered, first page",
            Some(DeliveryState::Delivered),
            |n| n - n / 100,
            |_| 0,
        ),
        (
            "state Delivered, middle",
            Some(DeliveryState::Delivered),
            |n| n - n / 100,
            |m| m / 2,
        ),
        (
            "state Failed (1%), middle",
            Some(DeliveryState::Failed),
            |n| n / 100,
            |m| m / 2,
        ),
    ];
    // The cursors are positions, so they stay valid across the ANALYZE below.
    let walk = Instant::now();
    let queries: Vec<(&str, [HistoryQuery; 2])> = cases
        .iter()
        .map(|&(label, state, matching, depth)| {
            let q = |h: &HistoryDb| {
                let m = matching(h.rows);
                HistoryQuery {
                    state,
                    limit: 50,
                    cursor: cursor_at(&h.d, &h.s, state, depth(m).min(m.saturating_sub(50))),
                    ..HistoryQuery::default()
                }
            };
            (label, [q(&a), q(&b)])
        })
        .collect();
    println!(
        "cursors: followed next_cursor (200-row pages) to each depth in {:.1?}",
        walk.elapsed()
    );
    let measure = |heading: &str| {
        println!("{heading}");
        for (label, [qa, qb]) in &queries {
            let (mut best_a, mut best_b) = (0f64, 0f64);
            for _ in 0..4 {
                let window = Duration::from_millis(250);
                best_a = best_a.max(page_rate(&a.d, &a.s, qa, window));
                best_b = best_b.max(page_rate(&b.d, &b.s, qb, window));
            }
            println!(
                "  {:<28} {:>9} rows {:>6.0} q/s ({:>7.3} ms)   {} rows {:>6.0} q/s ({:>7.3} ms)   ratio {:>5.2}  (target >= 0.5)",
                label,
                thousands(large),
                best_b,
                1000.0 / best_b,
                thousands(small),
                best_a,
                1000.0 / best_a,
                best_b / best_a
            );
        }
    };
    measure("as keyhook leaves the file (no sqlite_stat1):");
    // Hosts that follow SQLite's advice run `PRAGMA optimize` (or ANALYZE);
    // the planner then plans with statistics.
    let analyze = Instant::now();
    for h in [&a, &b] {
        rusqlite::Connection::open(&h.s.path)
            .unwrap()
            .execute_batch("ANALYZE;")
            .unwrap();
    }
    measure(&format!(
        "after ANALYZE of both files ({:.1?}), same cursors:",
        analyze.elapsed()
    ));
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn bench_purge() {
    let rows = env_rows("KEYHOOK_BENCH_PURGE_ROWS", 1_000_000);
    println!(
        "\n== purge: emit latency (1 event per call, FULL) while {} old deliveries are purged vs no purge",
        thousands(rows)
    );
    let s = setup(Durability::Full, UNUSED_URL);
    let took = fill(
        &s.path,
        &Fill {
            rows,
            start_ms: now_ms() - 60 * DAY_MS,
            step_ms: 1,
            failed_every: 100,
        },
    );
    let size = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
    println!(
        "setup: {} deliveries created 60 days ago (+ events, 1 attempt each) in {:.1?} ({:.0} rows/s), file {} MiB",
        thousands(rows),
        took,
        rows as f64 / took.as_secs_f64(),
        size >> 20
    );
    let d = dispatcher(&s);
    // Warm up the connection and statement caches.
    for _ in 0..100 {
        d.emit(ORG, TYPE, &data()).unwrap();
    }
    let emit_timed = |lat: &mut Vec<Duration>| {
        let t = Instant::now();
        d.emit(ORG, TYPE, &data()).unwrap();
        lat.push(t.elapsed());
    };
    let mut quiet = Vec::with_capacity(2000);
    let quiet_start = Instant::now();
    for _ in 0..2000 {
        emit_timed(&mut quiet);
    }
    let quiet_rate = quiet.len() as f64 / quiet_start.elapsed().as_secs_f64();
    quiet.sort();

    let done = AtomicBool::new(false);
    let mut during = Vec::new();
    let during_start = Instant::now();
    let (report, purge_took) = std::thread::scope(|sc| {
        let purger = sc.spawn(|| {
            let t = Instant::now();
            let report = d.purge(Duration::from_secs(30 * 24 * 3600));
            done.store(true, Ordering::Release);
            (report, t.elapsed())
        });
        while !done.load(Ordering::Acquire) {
            emit_timed(&mut during);
        }
        purger.join().unwrap()
    });
    let during_rate = during.len() as f64 / during_start.elapsed().as_secs_f64();
    let report = report.unwrap();
    during.sort();

    println!(
        "{:<30} p50 {:>9.2?} p99 {:>9.2?} max {:>9.2?} ({:.0} emits/s, {} emits)",
        "emit without purge",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        quiet.last().unwrap(),
        quiet_rate,
        quiet.len()
    );
    println!(
        "{:<30} p50 {:>9.2?} p99 {:>9.2?} max {:>9.2?} ({:.0} emits/s, {} emits)",
        "emit during purge",
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().unwrap(),
        during_rate,
        during.len()
    );
    println!(
        "{:<30} ratio p99 during/without {:.2}  (target <= 4)",
        "",
        percentile(&during, 0.99).as_secs_f64() / percentile(&quiet, 0.99).as_secs_f64()
    );
    println!(
        "purge: {report:?} in {purge_took:.1?} ({:.0} deliveries/s; it yields to emits)",
        report.deliveries as f64 / purge_took.as_secs_f64(),
    );
    assert_eq!(report.deliveries, rows as u64, "every old delivery purged");
}

fn main() {
    let want = common::wanted_sections();
    println!("keyhook operations benchmarks (release; ratios are what count on a noisy machine)");
    if want("history") {
        bench_history();
    }
    if want("purge") {
        bench_purge();
    }
}
