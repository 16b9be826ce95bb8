//! Panics on the dispatcher's threads are contained. Host code runs on
//! them (the `log` facade's logger, for one), so this test binary installs a
//! logger that panics on cue, on the thread and message it is told.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{builder, endpoint, loopback_setup, wait_until};
use keyhook::{AttemptError, DeliveryState, DispatcherHealth, Error};
use receiver::Receiver;
use serde_json::json;

const TYPE: &str = "conversion.created";
const ORG: &str = "org_panics";
const WAIT: Duration = Duration::from_secs(20);

/// (thread-name prefix, text in the message): the next log call that
/// matches one panics, once.
static CUES: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

struct PanickingLogger;

impl log::Log for PanickingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        let message = record.args().to_string();
        let cue = {
            let mut cues = CUES.lock().unwrap_or_else(|e| e.into_inner());
            let hit = cues
                .iter()
                .position(|(prefix, text)| name.starts_with(prefix) && message.contains(text));
            hit.map(|i| cues.remove(i))
        };
        if let Some((_, text)) = cue {
            panic!("the host's logger panicked on cue {text:?}");
        }
    }
    fn flush(&self) {}
}

fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&PanickingLogger).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn cue(thread: &'static str, text: &str) {
    CUES.lock().unwrap().push((thread, text.to_owned()));
}

#[test]
fn a_panic_in_an_attempt_is_recorded_and_the_worker_goes_on() {
    install_logger();
    let (t, registry) = loopback_setup(&[(TYPE, "An event")]);
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/panic-in-worker"), &[TYPE]);
    // ureq logs the URL it sends to, on the worker thread.
    cue("keyhook-worker", "/panic-in-worker");
    let d = builder(&t, &registry).workers(1).start().unwrap();
    let id = d.emit(ORG, TYPE, &json!({})).unwrap();
    assert!(wait_until(WAIT, || {
        d.event_deliveries(ORG, &id).unwrap()[0].state == DeliveryState::Delivered
    }));
    let delivery = &d.event_deliveries(ORG, &id).unwrap()[0];
    assert_eq!(delivery.attempts.len(), 2, "{:?}", delivery.attempts);
    // Oldest first: the contained panic, then the retry that succeeded.
    assert_eq!(delivery.attempts[0].error, Some(AttemptError::Panic));
    assert_eq!(delivery.attempts[1].status_code, Some(204));
    assert_eq!(rx.count(), 1);
    // The same worker delivers more.
    d.emit(ORG, TYPE, &json!({ "more": true })).unwrap();
    assert!(rx.wait_for(2, WAIT));
    assert!(matches!(d.health(), DispatcherHealth::Running));
    let started = Instant::now();
    d.shutdown(Duration::from_secs(5)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = ep;
}

#[test]
fn a_pump_that_panics_stops_the_dispatcher_and_says_so() {
    install_logger();
    let (t, registry) = loopback_setup(&[(TYPE, "An event")]);
    let rx = Receiver::ok();
    let ep = endpoint(&registry, ORG, &rx.url("/hook"), &[TYPE]);
    let d = builder(&t, &registry).workers(2).start().unwrap();
    // The pump logs each delivery at DEBUG with the endpoint's id.
    cue("keyhook-pump", &ep.endpoint.id);
    d.emit(ORG, TYPE, &json!({})).unwrap();
    assert!(rx.wait_for(1, WAIT));
    assert!(
        wait_until(WAIT, || !matches!(d.health(), DispatcherHealth::Running)),
        "still running"
    );
    match d.health() {
        DispatcherHealth::Failed { thread, cause } => {
            assert_eq!(thread, "keyhook-pump");
            assert!(cause.contains("panicked on cue"), "{cause}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // Emits are still stored (by the caller), for a later dispatcher.
    let id = d.emit(ORG, TYPE, &json!({ "after": true })).unwrap();
    assert_eq!(
        d.event_deliveries(ORG, &id).unwrap()[0].state,
        DeliveryState::Pending
    );
    let started = Instant::now();
    match d.shutdown(Duration::from_secs(5)) {
        Err(Error::DispatcherFailed { thread, .. }) => assert_eq!(thread, "keyhook-pump"),
        other => panic!("expected DispatcherFailed, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
