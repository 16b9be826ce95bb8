//! The app on a real socket, for tests: its own runtime thread, a temporary
//! database, stopped (dispatcher included) on drop.
#![allow(dead_code)]

pub mod webdriver;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use developers_page::{AppState, Config};

/// A running app.
pub struct App {
    pub base: String,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl App {
    /// Starts the app on 127.0.0.1, an ephemeral port, with `workers` delivery threads.
    pub fn start(workers: usize) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            database: dir.path().join("developers-page.sqlite3"),
            workers,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(SocketAddr, AppState)>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let state = tokio::task::spawn_blocking(move || AppState::open(&config, addr))
                    .await
                    .expect("open joined")
                    .expect("open");
                ready_tx.send((addr, state.clone())).expect("ready");
                developers_page::serve(listener, state, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            });
        });
        let (addr, state) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the app did not start");
        App {
            base: format!("http://{addr}"),
            state,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A plain HTTP client that returns every status as an answer.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET url` with a Bearer key: status and JSON body.
pub fn api_get(url: &str, key: &str) -> (u16, serde_json::Value) {
    let mut response = http()
        .get(url)
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .expect("API request");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("API body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}
