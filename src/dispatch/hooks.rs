//! The host's callbacks ([`on_attempt`](super::DispatcherBuilder::on_attempt),
//! [`on_notice`](super::DispatcherBuilder::on_notice)), run in order on a
//! thread of their own: host code that is slow, blocks, or waits on a thread
//! that emits never holds up the pump, which writes every emit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::db::{CommitMark, Database};

use super::http::AttemptError;
use super::queue::Next;
use super::{AttemptReport, Notice};

pub(crate) type Observer = Arc<dyn Fn(&AttemptReport<'_>) + Send + Sync>;
pub(crate) type NoticeHook = Arc<dyn Fn(&Notice) + Send + Sync>;

/// Calls queued for the callbacks thread at most; past that (callbacks
/// stuck or far too slow) further calls are dropped and counted in the log,
/// rather than let memory grow without bound.
pub(crate) const CALLBACK_QUEUE: usize = 10_000;

/// One call to make.
enum Call {
    Attempt(Attempted),
    /// Made once the commit that recorded the change is on disk.
    Notice(Notice, CommitMark),
}

/// An [`AttemptReport`] that owns its strings, to cross threads.
struct Attempted {
    event_id: String,
    endpoint_id: String,
    org: String,
    attempt: u32,
    status: Option<u16>,
    error: Option<AttemptError>,
    outcome: Next,
}

impl Attempted {
    fn report(&self) -> AttemptReport<'_> {
        AttemptReport {
            event_id: &self.event_id,
            endpoint_id: &self.endpoint_id,
            org: &self.org,
            attempt: self.attempt,
            status: self.status,
            error: self.error,
            outcome: self.outcome,
        }
    }
}

/// The callbacks, and the queue to their thread.
pub(crate) struct Hooks {
    db: Database,
    observer: Option<Observer>,
    notices: Option<NoticeHook>,
    /// `None` before [`start`](Self::start) and after [`close`](Self::close):
    /// calls are then made on the calling thread.
    queue: Mutex<Option<SyncSender<Call>>>,
    /// Calls dropped because the queue was full.
    dropped: AtomicU64,
}

impl Hooks {
    pub fn new(db: Database, observer: Option<Observer>, notices: Option<NoticeHook>) -> Hooks {
        Hooks {
            db,
            observer,
            notices,
            queue: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts the callbacks thread, if there is any callback.
    pub fn start(&self) -> std::io::Result<Option<JoinHandle<()>>> {
        if self.observer.is_none() && self.notices.is_none() {
            return Ok(None);
        }
        let (tx, rx) = sync_channel(CALLBACK_QUEUE);
        let (observer, notices) = (self.observer.clone(), self.notices.clone());
        let db = self.db.clone();
        let handle = std::thread::Builder::new()
            .name("keyhook-callbacks".into())
            .spawn(move || run(&rx, &db, observer.as_ref(), notices.as_ref()))?;
        *self.lock() = Some(tx);
        Ok(Some(handle))
    }

    /// No more calls through the thread: it ends once it has made the ones
    /// queued. Later calls are made on the calling thread.
    pub fn close(&self) {
        self.lock().take();
    }

    /// Whether an observer wants every attempt.
    pub fn observes_attempts(&self) -> bool {
        self.observer.is_some()
    }

    pub fn attempt(&self, report: &AttemptReport<'_>) {
        let Some(observer) = &self.observer else {
            return;
        };
        let call = Call::Attempt(Attempted {
            event_id: report.event_id.to_owned(),
            endpoint_id: report.endpoint_id.to_owned(),
            org: report.org.to_owned(),
            attempt: report.attempt,
            status: report.status,
            error: report.error,
            outcome: report.outcome,
        });
        if let Err(Call::Attempt(a)) = self.send(call) {
            observer(&a.report());
        }
    }

    /// Tells the notice hook about `notice`, once `commit` is on disk.
    pub fn notice(&self, notice: &Notice, commit: CommitMark) {
        let Some(hook) = &self.notices else {
            return;
        };
        if let Err(Call::Notice(n, commit)) = self.send(Call::Notice(notice.clone(), commit)) {
            call_notice(&self.db, hook, &n, commit);
        }
    }

    /// Queues `call` for the thread, or gives it back if the thread does
    /// not run. Drops it if the queue is full.
    fn send(&self, call: Call) -> Result<(), Call> {
        let queue = self.lock();
        let Some(tx) = &*queue else {
            return Err(call);
        };
        match tx.try_send(call) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(call)) => Err(call),
            Err(TrySendError::Full(call)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped.is_multiple_of(1000) {
                    log::error!(
                        "keyhook: callbacks are {CALLBACK_QUEUE} calls behind; {dropped} dropped so far (latest: {})",
                        describe(&call)
                    );
                }
                Ok(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SyncSender<Call>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes the hooks when dropped (when the pump exits, or panics).
pub(crate) struct CloseOnDrop<'a>(pub &'a Hooks);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What a dropped call was about, for the log (ids only).
fn describe(call: &Call) -> String {
    match call {
        Call::Attempt(a) => format!("attempt {} of {}", a.attempt, a.event_id),
        Call::Notice(n, _) => format!("{n:?}"),
    }
}

/// Calls `hook` once `commit` is on disk; a notice whose change may not
/// survive power loss is logged, not told.
fn call_notice(db: &Database, hook: &NoticeHook, notice: &Notice, commit: CommitMark) {
    match db.sync(commit) {
        Ok(()) => hook(notice),
        Err(e) => log::error!("keyhook: notice not sent, its change could not be synced: {e}"),
    }
}

fn run(
    rx: &Receiver<Call>,
    db: &Database,
    observer: Option<&Observer>,
    notices: Option<&NoticeHook>,
) {
    for call in rx {
        // A panicking callback (or logger) must not end the others.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let result = catch_unwind(AssertUnwindSafe(|| match &call {
                Call::Attempt(a) => {
                    if let Some(observer) = observer {
                        observer(&a.report());
                    }
                }
                Call::Notice(n, commit) => {
                    if let Some(hook) = notices {
                        call_notice(db, hook, n, *commit);
                    }
                }
            }));
            if result.is_err() {
                log::error!("keyhook: a callback (on_attempt or on_notice) panicked");
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn notice(n: u32) -> Notice {
        Notice::DeliveryExhausted {
            org: "org_1".into(),
            endpoint_id: "ep_1".into(),
            event_id: format!("msg_{n}"),
            attempts: n,
        }
    }

    #[test]
    fn calls_run_in_order_on_their_own_thread_and_survive_a_panic() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let hook: NoticeHook = Arc::new(move |n: &Notice| {
            let Notice::DeliveryExhausted { attempts, .. } = n else {
                unreachable!()
            };
            if *attempts == 2 {
                panic!("host bug");
            }
            let name = std::thread::current().name().map(str::to_owned);
            log.lock().unwrap().push((*attempts, name));
        });
        let hooks = Hooks::new(Database::open_in_memory().unwrap(), None, Some(hook));
        let thread = hooks.start().unwrap().unwrap();
        for n in 1..=4 {
            hooks.notice(&notice(n), CommitMark::default());
        }
        hooks.close();
        thread.join().unwrap();
        let thread_name = Some("keyhook-callbacks".to_owned());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (1, thread_name.clone()),
                (3, thread_name.clone()),
                (4, thread_name)
            ]
        );
        // Closed: calls are made on the calling thread.
        hooks.notice(&notice(5), CommitMark::default());
        assert_eq!(seen.lock().unwrap().last().unwrap().0, 5);
        assert_ne!(
            seen.lock().unwrap().last().unwrap().1.as_deref(),
            Some("keyhook-callbacks")
        );
    }

    #[test]
    fn a_stuck_callback_costs_dropped_calls_not_memory_or_the_caller() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let hook: NoticeHook = Arc::new(move |_| {
            // The first call blocks until released.
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = wait.lock().unwrap().recv();
            }
        });
        let hooks = Hooks::new(Database::open_in_memory().unwrap(), None, Some(hook));
        let thread = hooks.start().unwrap().unwrap();
        // One call being made, a full queue, and 50 more: those are dropped
        // and the caller never blocks.
        for n in 0..CALLBACK_QUEUE as u32 + 51 {
            hooks.notice(&notice(n), CommitMark::default());
        }
        assert!(hooks.dropped.load(Ordering::SeqCst) >= 50);
        release.send(()).unwrap();
        hooks.close();
        thread.join().unwrap();
        let made = calls.load(Ordering::SeqCst) as u64;
        assert_eq!(
            made + hooks.dropped.load(Ordering::SeqCst),
            CALLBACK_QUEUE as u64 + 51
        );
    }

    #[test]
    fn a_notice_whose_change_could_not_be_synced_is_not_told() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("db.sqlite3")).unwrap();
        let ((), commit) = db.write_unsynced(|_| Ok(())).unwrap();
        db.fail_syncs();
        let told = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&told);
        let hook: NoticeHook = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let hooks = Hooks::new(db, None, Some(hook));
        // Not started: checked and (not) told right here.
        hooks.notice(&notice(1), commit);
        assert_eq!(told.load(Ordering::SeqCst), 0);
        hooks.notice(&notice(2), CommitMark::default());
        assert_eq!(told.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn without_callbacks_there_is_no_thread() {
        let db = Database::open_in_memory().unwrap();
        let hooks = Hooks::new(db.clone(), None, None);
        assert!(hooks.start().unwrap().is_none());
        assert!(!hooks.observes_attempts());
        hooks.notice(&notice(1), CommitMark::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let observer: Observer = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let hooks = Hooks::new(db, Some(observer), None);
        assert!(hooks.observes_attempts());
        // Not started: called here and now.
        hooks.attempt(&AttemptReport {
            event_id: "msg_1",
            endpoint_id: "ep_1",
            org: "org_1",
            attempt: 1,
            status: Some(204),
            error: None,
            outcome: Next::Delivered,
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
