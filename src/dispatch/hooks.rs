//! The host's callbacks ([`on_attempt`](super::DispatcherBuilder::on_attempt),
//! [`on_notice`](super::DispatcherBuilder::on_notice)), run in order on a
//! thread of their own: host code that is slow, blocks, or waits on a thread
//! that emits never holds up the pump, which writes every emit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::http::AttemptError;
use super::queue::Next;
use super::{AttemptReport, Notice};

pub(crate) type Observer = Arc<dyn Fn(&AttemptReport<'_>) + Send + Sync>;
pub(crate) type NoticeHook = Arc<dyn Fn(&Notice) + Send + Sync>;

/// One call to make.
enum Call {
    Attempt(Attempted),
    Notice(Notice),
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
    observer: Option<Observer>,
    notices: Option<NoticeHook>,
    /// `None` before [`start`](Self::start) and after [`close`](Self::close):
    /// calls are then made on the calling thread.
    queue: Mutex<Option<Sender<Call>>>,
}

impl Hooks {
    pub fn new(observer: Option<Observer>, notices: Option<NoticeHook>) -> Hooks {
        Hooks {
            observer,
            notices,
            queue: Mutex::new(None),
        }
    }

    /// Starts the callbacks thread, if there is any callback.
    pub fn start(&self) -> std::io::Result<Option<JoinHandle<()>>> {
        if self.observer.is_none() && self.notices.is_none() {
            return Ok(None);
        }
        let (tx, rx) = channel();
        let (observer, notices) = (self.observer.clone(), self.notices.clone());
        let handle = std::thread::Builder::new()
            .name("keyhook-callbacks".into())
            .spawn(move || run(&rx, observer.as_ref(), notices.as_ref()))?;
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

    pub fn notice(&self, notice: &Notice) {
        let Some(hook) = &self.notices else {
            return;
        };
        if let Err(Call::Notice(n)) = self.send(Call::Notice(notice.clone())) {
            hook(&n);
        }
    }

    /// Queues `call` for the thread, or gives it back if it does not run.
    fn send(&self, call: Call) -> Result<(), Call> {
        match &*self.lock() {
            Some(tx) => tx.send(call).map_err(|e| e.0),
            None => Err(call),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Sender<Call>>> {
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

fn run(rx: &Receiver<Call>, observer: Option<&Observer>, notices: Option<&NoticeHook>) {
    for call in rx {
        // A panicking callback must not end the others.
        let result = catch_unwind(AssertUnwindSafe(|| match &call {
            Call::Attempt(a) => {
                if let Some(observer) = observer {
                    observer(&a.report());
                }
            }
            Call::Notice(n) => {
                if let Some(hook) = notices {
                    hook(n);
                }
            }
        }));
        if result.is_err() {
            log::error!("keyhook: a callback (on_attempt or on_notice) panicked");
        }
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
        let hooks = Hooks::new(None, Some(hook));
        let thread = hooks.start().unwrap().unwrap();
        for n in 1..=4 {
            hooks.notice(&notice(n));
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
        hooks.notice(&notice(5));
        assert_eq!(seen.lock().unwrap().last().unwrap().0, 5);
        assert_ne!(
            seen.lock().unwrap().last().unwrap().1.as_deref(),
            Some("keyhook-callbacks")
        );
    }

    #[test]
    fn without_callbacks_there_is_no_thread() {
        let hooks = Hooks::new(None, None);
        assert!(hooks.start().unwrap().is_none());
        assert!(!hooks.observes_attempts());
        hooks.notice(&notice(1));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let observer: Observer = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let hooks = Hooks::new(Some(observer), None);
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
