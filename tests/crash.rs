//! Crash safety and multi-process delivery, with real child processes.
//!
//! The test binary re-executes itself: `child_process_entry` does nothing
//! unless `KEYHOOK_CHILD` names a role; then it runs that role's job and ends
//! the process without returning to the test harness. Children talk to the
//! parent through marker lines on stdout.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{TempDb, loopback_registry};
use keyhook::{Database, DeliveryState, Dispatcher, EndpointOptions, NewEvent, WebhookRegistry};
use rand::Rng;
use receiver::{Receiver, Reply};

const ORG: &str = "org_crash";
const EVENT_TYPE: &str = "crash.tick";

const ROLE_VAR: &str = "KEYHOOK_CHILD";
const DB_VAR: &str = "KEYHOOK_CHILD_DB";
const START_VAR: &str = "KEYHOOK_CHILD_START";
const STOP_VAR: &str = "KEYHOOK_CHILD_STOP_FILE";

// Markers are searched anywhere in a line: libtest may have printed
// "test child_process_entry ... " without a newline before the child speaks.
const READY: &str = "@@ready";
const ACK: &str = "@@ack ";
const ATTEMPTS: &str = "@@attempts ";

/// The two tests each run processes flat out on a small machine; running
/// them one at a time keeps their timing (leases, kill moments) meaningful.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The event type and one endpoint subscribed to it, pointing at `rx`.
fn prepare(db: &Database, rx: &Receiver) -> WebhookRegistry {
    let registry = loopback_registry(db);
    registry
        .register_event_type(EVENT_TYPE, "A numbered event from a crash test")
        .unwrap();
    registry
        .create(
            ORG,
            &rx.url("/hook"),
            &[EVENT_TYPE],
            EndpointOptions::default(),
        )
        .unwrap();
    registry
}

fn webhook_ids(rx: &Receiver) -> Vec<String> {
    rx.received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

fn counts(ids: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------- children

#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let db_path = std::env::var(DB_VAR).expect("KEYHOOK_CHILD_DB");
    match role.as_str() {
        "emit" => {
            let start = std::env::var(START_VAR)
                .expect("KEYHOOK_CHILD_START")
                .parse()
                .expect("a start index");
            child_emit(&db_path, start)
        }
        "one_worker" => child_one_worker(&db_path),
        "revoke" => {
            let id = std::env::var(START_VAR).expect("the key id in KEYHOOK_CHILD_START");
            keyhook::ApiKeyStore::new(&common::open_located(&db_path))
                .revoke(ORG, &id)
                .expect("revoke in the child");
        }
        "emit_deliver" => {
            let start = std::env::var(START_VAR)
                .expect("KEYHOOK_CHILD_START")
                .parse()
                .expect("a start index");
            let stop = PathBuf::from(std::env::var(STOP_VAR).expect("KEYHOOK_CHILD_STOP_FILE"));
            child_emit_deliver(&db_path, start, &stop);
        }
        "deliver" => {
            let stop = PathBuf::from(std::env::var(STOP_VAR).expect("KEYHOOK_CHILD_STOP_FILE"));
            child_deliver(&db_path, &stop);
        }
        other => panic!("unknown child role {other:?}"),
    }
    std::process::exit(0);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

/// Delivers with four workers while emitting events `start..`, printing each id once `emit` has returned, until it is killed.
fn child_emit(db_path: &str, start: u64) -> ! {
    let db = common::open_located(db_path);
    let registry = loopback_registry(&db);
    let dispatcher = Dispatcher::builder(&db, &registry)
        .workers(4)
        .request_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(100))
        .start()
        .expect("start the dispatcher");
    say(READY);
    for i in start.. {
        let event = NewEvent::new(EVENT_TYPE, &serde_json::json!({ "i": i }))
            .unwrap()
            .idempotency_key(format!("ev-{i}"));
        let id = dispatcher.emit_event(ORG, event).expect("emit");
        say(&format!("{ACK}{i} {id}"));
        // A steady stream rather than a flood: flat out, emits take the
        // write lock nearly all the time and the workers barely run, so
        // kills would rarely find an attempt in flight.
        std::thread::sleep(Duration::from_millis(2));
    }
    unreachable!("the parent kills this process long before u64 runs out")
}

/// Delivers with one worker (5 s request timeout) until it is killed.
fn child_one_worker(db_path: &str) -> ! {
    let db = common::open_located(db_path);
    let registry = loopback_registry(&db);
    let _dispatcher = Dispatcher::builder(&db, &registry)
        .workers(1)
        .request_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .start()
        .expect("start the dispatcher");
    say(READY);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Emits events `start..start + 1000` while delivering with four workers,
/// as one of several app servers; prints their ids, then delivers until
/// `stop` exists and shuts down cleanly.
fn child_emit_deliver(db_path: &str, start: u64, stop: &Path) {
    let db = common::open_located(db_path);
    let registry = loopback_registry(&db);
    let dispatcher = Dispatcher::builder(&db, &registry)
        .workers(4)
        .poll_interval(Duration::from_millis(500))
        .start()
        .expect("start the dispatcher");
    say(READY);
    for i in start..start + 1000 {
        let id = dispatcher
            .emit(ORG, EVENT_TYPE, &serde_json::json!({ "i": i }))
            .expect("emit");
        say(&format!("{ACK}{i} {id}"));
    }
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    dispatcher
        .shutdown(Duration::from_secs(15))
        .expect("shut down");
}

/// Delivers with four workers until `stop` exists, then shuts down cleanly
/// and reports how many attempts it made.
fn child_deliver(db_path: &str, stop: &Path) {
    let db = common::open_located(db_path);
    let registry = loopback_registry(&db);
    let attempts = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let (a, d) = (Arc::clone(&attempts), Arc::clone(&delivered));
    let dispatcher = Dispatcher::builder(&db, &registry)
        .workers(4)
        .poll_interval(Duration::from_millis(50))
        .on_attempt(move |report| {
            a.fetch_add(1, Ordering::SeqCst);
            if report.delivered() {
                d.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .expect("start the dispatcher");
    say(READY);
    while !stop.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    dispatcher
        .shutdown(Duration::from_secs(15))
        .expect("shut down");
    say(&format!(
        "{ATTEMPTS}{} {}",
        attempts.load(Ordering::SeqCst),
        delivered.load(Ordering::SeqCst)
    ));
}

// ------------------------------------------------------ the parent's side

/// A child process and the marker lines it has printed so far.
struct ChildProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl ChildProc {
    fn spawn(role: &str, envs: &[(&str, String)]) -> ChildProc {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
        cmd.args([
            "child_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn a child process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("@@") {
                    let _ = tx.send(line[at..].to_owned());
                }
            }
        });
        ChildProc {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn wait_ready(&mut self) {
        match self.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line == READY => {}
            Ok(line) => panic!("child said {line:?} before it was ready"),
            Err(e) => panic!("child not ready: {e}; status {:?}", self.child.try_wait()),
        }
    }

    /// SIGKILL, reaped; returns the exit status.
    fn kill(&mut self) -> ExitStatus {
        self.child.kill().expect("kill the child");
        self.finish()
    }

    /// Waits up to `timeout` for the child to exit on its own, killing it then.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().expect("poll the child").is_none() {
            if Instant::now() >= deadline {
                let status = self.kill();
                panic!("child did not exit within {timeout:?} (killed: {status:?})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.finish()
    }

    fn finish(&mut self) -> ExitStatus {
        let status = self.child.wait().expect("reap the child");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the stdout reader");
        }
        status
    }

    /// Marker lines printed and not yet taken.
    fn take_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // A failing test must not leave a child running.
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(unix)]
fn assert_sigkilled(status: ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "child ended otherwise: {status:?}"
    );
}

#[cfg(not(unix))]
fn assert_sigkilled(status: ExitStatus) {
    assert!(!status.success(), "child ended otherwise: {status:?}");
}

/// A child process emits and delivers a stream of events and is killed with
/// SIGKILL at random moments, several times; after a final restart every
/// event whose emit returned reaches the receiver at least once.
#[test]
fn killed_processes_lose_no_acknowledged_event() {
    const MIN_EVENTS: usize = 500;
    const MIN_KILLS: usize = 5;
    const MAX_KILLS: usize = 60;

    let _heavy = heavy();
    let began = Instant::now();
    // Healthy, but slow enough (0-5 ms) that attempts are in flight when a
    // child dies; counts what is being answered right now.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let answering = Arc::clone(&in_flight);
    let rx = Receiver::start(move |_| {
        answering.fetch_add(1, Ordering::SeqCst);
        let delay = rand::rng().random_range(0..=5);
        std::thread::sleep(Duration::from_millis(delay));
        answering.fetch_sub(1, Ordering::SeqCst);
        Reply::status(204)
    });
    let t = TempDb::new();
    let registry = prepare(&t.db, &rx);
    let db_path = t.locator();

    // Index -> event id, for every emit the child saw return.
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut next_index = 0u64;
    let mut kills = 0usize;
    let mut kills_in_flight = 0usize;
    while (kills < MIN_KILLS || acked.len() < MIN_EVENTS || kills_in_flight == 0)
        && kills < MAX_KILLS
    {
        let mut child = ChildProc::spawn(
            "emit",
            &[
                (DB_VAR, db_path.clone()),
                (START_VAR, next_index.to_string()),
            ],
        );
        child.wait_ready();
        let life = rand::rng().random_range(100..=600);
        std::thread::sleep(Duration::from_millis(life));
        if in_flight.load(Ordering::SeqCst) > 0 {
            kills_in_flight += 1;
        }
        assert_sigkilled(child.kill());
        kills += 1;
        let mut printed = 0;
        for line in child.take_lines() {
            let Some(rest) = line.strip_prefix(ACK) else {
                continue;
            };
            let (index, id) = rest.split_once(' ').expect("an ack line");
            let index: u64 = index.parse().expect("an event index");
            if let Some(before) = acked.insert(index, id.to_owned()) {
                assert_eq!(before, id, "event {index} changed id between runs");
            }
            next_index = next_index.max(index + 1);
            printed += 1;
        }
        println!(
            "round {kills}: lived {life} ms, {printed} emits acknowledged, {} in all, {} requests received",
            acked.len(),
            rx.count()
        );
    }
    assert!(kills >= MIN_KILLS, "only {kills} kills");
    assert!(
        acked.len() >= MIN_EVENTS,
        "only {} events acknowledged in {kills} rounds",
        acked.len()
    );
    assert!(
        kills_in_flight > 0,
        "no child of {kills} was killed with an attempt in flight"
    );
    let emitting = began.elapsed();

    // The final restart, here: deliver what is left, leases of the dead included.
    let dispatcher = Dispatcher::builder(&t.db, &registry)
        .workers(4)
        .request_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(100))
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<&String>;
    loop {
        let seen: HashSet<String> = webhook_ids(&rx).into_iter().collect();
        missing = acked.values().filter(|id| !seen.contains(*id)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_arrived = began.elapsed();
    if !missing.is_empty() {
        for id in missing.iter().take(5) {
            eprintln!(
                "never received {id}: {:#?}",
                dispatcher.event_deliveries(ORG, id)
            );
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never reached the receiver, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );

    // Everything arrived; the queue also settles (a dead child's lease runs
    // out and its delivery is made again and recorded).
    let mut unsettled: Vec<&String>;
    loop {
        unsettled = acked
            .values()
            .filter(|id| {
                let deliveries = dispatcher.event_deliveries(ORG, id).unwrap();
                deliveries.len() != 1 || deliveries[0].state != DeliveryState::Delivered
            })
            .collect();
        if unsettled.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    dispatcher.shutdown(Duration::from_secs(5)).unwrap();
    assert!(
        unsettled.is_empty(),
        "{} events not marked delivered, e.g. {:#?}",
        unsettled.len(),
        dispatcher.event_deliveries(ORG, unsettled[0])
    );

    let ids = webhook_ids(&rx);
    let per_id = counts(&ids);
    let acked_ids: HashSet<&str> = acked.values().map(String::as_str).collect();
    let unacked = per_id.keys().filter(|id| !acked_ids.contains(*id)).count();
    let duplicated = per_id.values().filter(|n| **n > 1).count();
    println!(
        "crash: {} acknowledged events, {kills} kills ({kills_in_flight} with attempts in flight), \
         {} requests for {} distinct ids ({unacked} emitted but unacknowledged), \
         {} duplicate requests over {duplicated} events; \
         emitting {emitting:.1?}, all arrived at {all_arrived:.1?}, total {:.1?}",
        acked.len(),
        ids.len(),
        per_id.len(),
        ids.len() - per_id.len(),
        began.elapsed()
    );
}

/// Two processes, each with a dispatcher, on one SQLite file, deliver a
/// stream of 1,000 events: every event arrives, and with a healthy receiver
/// none arrives twice.
#[test]
fn two_processes_deliver_each_event_once() {
    const EVENTS: usize = 1000;

    let _heavy = heavy();
    let began = Instant::now();
    let rx = Receiver::ok();
    let t = TempDb::new();
    let registry = prepare(&t.db, &rx);
    let db_path = t.locator();
    let stop_dir = tempfile::tempdir().unwrap();
    let stop = stop_dir.path().join("stop");
    let envs = [
        (DB_VAR, db_path),
        (
            STOP_VAR,
            stop.to_str().expect("a UTF-8 temp path").to_owned(),
        ),
    ];
    let mut children = [
        ChildProc::spawn("deliver", &envs),
        ChildProc::spawn("deliver", &envs),
    ];
    for child in &mut children {
        child.wait_ready();
    }

    // Emit only: the children's workers find the events by polling.
    let emitter = Dispatcher::builder(&t.db, &registry)
        .workers(0)
        .start()
        .unwrap();
    let emitted: Vec<String> = (0..EVENTS)
        .map(|i| {
            emitter
                .emit(ORG, EVENT_TYPE, &serde_json::json!({ "i": i }))
                .unwrap()
        })
        .collect();
    let emitting = began.elapsed();
    let expected: HashSet<&str> = emitted.iter().map(String::as_str).collect();
    assert_eq!(expected.len(), EVENTS, "emit returned a repeated id");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = webhook_ids(&rx).into_iter().collect();
        let arrived = expected.iter().filter(|id| seen.contains(**id)).count();
        if arrived == EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {arrived} of {EVENTS} events arrived within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all_arrived = began.elapsed();
    // Room for a late duplicate to show up.
    std::thread::sleep(Duration::from_secs(1));

    std::fs::write(&stop, b"stop").unwrap();
    let mut per_child = Vec::new();
    for child in &mut children {
        let status = child.wait(Duration::from_secs(20));
        assert!(status.success(), "a delivering child failed: {status:?}");
        let report = child
            .take_lines()
            .into_iter()
            .find_map(|l| l.strip_prefix(ATTEMPTS).map(str::to_owned))
            .expect("the child reports its attempts");
        per_child.push(report);
    }

    let ids = webhook_ids(&rx);
    let per_id = counts(&ids);
    let duplicated: Vec<(&str, usize)> = per_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    for (id, n) in duplicated.iter().take(5) {
        eprintln!(
            "{id} arrived {n} times: {:#?}",
            emitter.event_deliveries(ORG, id)
        );
    }
    let strays = per_id.keys().filter(|id| !expected.contains(*id)).count();
    println!(
        "two processes: {EVENTS} events, {} requests, {} events duplicated, \
         child attempts/delivered: {per_child:?}; emitting {emitting:.1?}, \
         all arrived at {all_arrived:.1?}, total {:.1?}",
        ids.len(),
        duplicated.len(),
        began.elapsed()
    );
    assert_eq!(strays, 0, "requests for events nobody emitted");
    assert!(
        expected.iter().all(|id| per_id.contains_key(id)),
        "an event never arrived"
    );
    assert!(
        duplicated.is_empty(),
        "{} events arrived more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert_eq!(ids.len(), EVENTS);
    emitter.shutdown(Duration::from_secs(1)).unwrap();
}

/// A process dies holding claims it never sent (prefetched while the
/// endpoint was healthy) after the endpoint started failing. The restarted
/// process sends to that endpoint again within a few seconds, not a whole
/// lease (2 × 5 s + 1 s) later.
#[test]
fn a_dead_process_s_unsent_claims_do_not_stall_a_failing_endpoint() {
    let _heavy = heavy();
    // 0: answer 204; 1: the first request gets 500, later ones hang; 2: 204.
    let phase = Arc::new(AtomicUsize::new(0));
    let failed_once = Arc::new(AtomicUsize::new(0));
    let (p, f) = (Arc::clone(&phase), Arc::clone(&failed_once));
    let rx = Receiver::start(move |_| match p.load(Ordering::SeqCst) {
        1 if f.fetch_add(1, Ordering::SeqCst) == 0 => Reply::status(500),
        1 => Reply::status(204).delay(Duration::from_secs(8)),
        _ => Reply::status(204),
    });
    let t = TempDb::sqlite();
    let registry = prepare(&t.db, &rx);
    // Proven healthy first, so the child prefetches its claims.
    let d = Dispatcher::builder(&t.db, &registry)
        .workers(1)
        .start()
        .unwrap();
    d.emit(ORG, EVENT_TYPE, &serde_json::json!({ "warm": true }))
        .unwrap();
    assert!(rx.wait_for(1, Duration::from_secs(10)));
    d.shutdown(Duration::from_secs(10)).unwrap();
    let emitter = Dispatcher::builder(&t.db, &registry)
        .workers(0)
        .start()
        .unwrap();
    for i in 0..20 {
        emitter
            .emit(ORG, EVENT_TYPE, &serde_json::json!({ "i": i }))
            .unwrap();
    }
    phase.store(1, Ordering::SeqCst);
    let db_path = t.locator();
    let mut child = ChildProc::spawn("one_worker", &[(DB_VAR, db_path)]);
    child.wait_ready();
    // The 500, then a request that hangs; the failure is recorded.
    assert!(rx.wait_for(3, Duration::from_secs(20)));
    let raw = rusqlite::Connection::open(t.path()).unwrap();
    let failing = || -> bool {
        raw.query_row(
            "SELECT MAX(consecutive_failures) > 0 FROM keyhook_endpoints",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !failing() {
        assert!(Instant::now() < deadline, "the failure was not recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_sigkilled(child.kill());
    phase.store(2, Ordering::SeqCst);
    let before = rx.count();

    // The restarted process.
    let restarted = Instant::now();
    let d = Dispatcher::builder(&t.db, &registry)
        .workers(1)
        .request_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    assert!(
        rx.wait_for(before + 1, Duration::from_secs(30)),
        "nothing sent after the restart"
    );
    let waited = restarted.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the failing endpoint waited {waited:?} after the restart"
    );
    d.shutdown(Duration::from_secs(10)).unwrap();
}

/// Three app servers on one database (a SQLite file, or PostgreSQL under
/// `KEYHOOK_TEST_POSTGRES`), each running a dispatcher and emitting 1,000
/// events to a healthy receiver: every event arrives exactly once, whichever
/// process claims it.
#[test]
fn three_processes_emit_and_deliver_each_event_once() {
    const PER_CHILD: u64 = 1000;
    let _heavy = heavy();
    let began = Instant::now();
    let rx = Receiver::ok();
    let t = TempDb::new();
    prepare(&t.db, &rx);
    let stop_dir = tempfile::tempdir().unwrap();
    let stop = stop_dir.path().join("stop");
    let mut children: Vec<ChildProc> = (0..3u64)
        .map(|n| {
            ChildProc::spawn(
                "emit_deliver",
                &[
                    (DB_VAR, t.locator()),
                    (START_VAR, (n * PER_CHILD).to_string()),
                    (STOP_VAR, stop.to_str().unwrap().to_owned()),
                ],
            )
        })
        .collect();
    for child in &mut children {
        child.wait_ready();
    }
    let total = 3 * PER_CHILD as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut expected: HashSet<String> = HashSet::new();
    loop {
        for child in &children {
            expected.extend(child.take_lines().into_iter().filter_map(|l| {
                l.strip_prefix(ACK)
                    .and_then(|rest| rest.split_once(' '))
                    .map(|(_, id)| id.to_owned())
            }));
        }
        let seen: HashSet<String> = webhook_ids(&rx).into_iter().collect();
        if expected.len() == total && expected.iter().all(|id| seen.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} emits acknowledged, {} arrived within 120 s",
            expected.len(),
            expected.iter().filter(|id| seen.contains(*id)).count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all_arrived = began.elapsed();
    // Room for a late duplicate to show up.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&stop, b"stop").unwrap();
    for child in &mut children {
        let status = child.wait(Duration::from_secs(20));
        assert!(status.success(), "a child failed: {status:?}");
    }
    let ids = webhook_ids(&rx);
    let per_id = counts(&ids);
    let duplicated = per_id.values().filter(|n| **n > 1).count();
    println!(
        "three processes: {total} events, {} requests, {duplicated} duplicated, all arrived at {all_arrived:.1?}",
        ids.len()
    );
    assert_eq!(duplicated, 0, "events arrived more than once");
    assert!(
        per_id.keys().all(|id| expected.contains(*id)),
        "a stray request"
    );
    assert_eq!(ids.len(), total);
}

/// A key verified (and so kept in verify's memory) in this process, then
/// revoked by another process: the very next verify here rejects it, on
/// SQLite (the cache watches the file's commits) and on PostgreSQL.
#[test]
fn a_key_revoked_by_another_process_fails_the_next_verify() {
    let t = TempDb::new();
    let store = keyhook::ApiKeyStore::new(&t.db);
    store.set_api_keys_enabled(ORG, true).unwrap();
    let created = store
        .create(ORG, "hot", keyhook::KeySettings::default())
        .unwrap();
    let key = created.secret.expose().to_owned();
    for _ in 0..3 {
        store.verify(&key).unwrap();
    }
    let mut child = ChildProc::spawn(
        "revoke",
        &[(DB_VAR, t.locator()), (START_VAR, created.key.id.clone())],
    );
    let status = child.wait(Duration::from_secs(30));
    assert!(status.success(), "the revoking child failed: {status:?}");
    assert_eq!(
        store.verify(&key).unwrap_err().rejection(),
        Some(keyhook::Rejection::Revoked)
    );
}
