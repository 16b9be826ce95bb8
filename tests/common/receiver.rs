//! A real HTTP/1.1 receiver on 127.0.0.1 for tests and benches: keep-alive,
//! one thread per connection, records every request, answers as told.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        self.body = b.into();
        self
    }
}

type Behaviour = dyn Fn(&Received) -> Reply + Send + Sync;

struct State {
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    behaviour: Box<Behaviour>,
    stop: AtomicBool,
    in_flight: AtomicUsize,
    record: bool,
}

pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Answers 204 to everything.
    pub fn ok() -> Receiver {
        Receiver::start(|_| Reply::status(204))
    }

    pub fn start(behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        Receiver::start_inner(Box::new(behaviour), true)
    }

    /// Does not keep requests (for benchmarks); counts them.
    pub fn counting(behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Receiver {
        Receiver::start_inner(Box::new(behaviour), false)
    }

    /// Listens on a given address (to bring a receiver back on the same port).
    pub fn start_on(
        addr: SocketAddr,
        behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind(addr).expect("bind receiver");
        Receiver::run(listener, Box::new(behaviour), true)
    }

    fn start_inner(behaviour: Box<Behaviour>, record: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        Receiver::run(listener, behaviour, record)
    }

    fn run(listener: TcpListener, behaviour: Box<Behaviour>, record: bool) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            behaviour,
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            record,
        });
        let st = Arc::clone(&state);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || serve(conn, st));
            }
        });
        Receiver {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut got = self.state.received.lock().unwrap();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            got = self
                .state
                .arrived
                .wait_timeout(got, deadline - now)
                .unwrap()
                .0;
        }
        true
    }

    /// Stops accepting; open connections are closed after their current request.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(conn: TcpStream, st: Arc<State>) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let req = match read_request(&mut reader, &st) {
            Some(r) => r,
            None => return,
        };
        st.in_flight.fetch_add(1, Ordering::SeqCst);
        let reply = (st.behaviour)(&req);
        let mut v = st.received.lock().unwrap();
        if st.record {
            v.push(req);
        } else {
            // Benchmarks only count: keep the timing, drop headers and body.
            v.push(Received {
                headers: Vec::new(),
                body: Vec::new(),
                ..req
            });
        }
        drop(v);
        st.arrived.notify_all();
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&reply.body).is_err() {
            return;
        }
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>, st: &State) -> Option<Received> {
    let mut line = String::new();
    // Wait for the next request on a kept-alive connection, checking for stop.
    if read_line_patiently(reader, &mut line, st)? == 0 {
        return None;
    }
    let at = Instant::now();
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if read_line_patiently(reader, &mut h, st)? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_owned();
        if k == "content-length" {
            content_length = v.parse().ok()?;
        }
        headers.push((k, v));
    }
    let mut body = vec![0u8; content_length];
    let mut filled = 0;
    while filled < content_length {
        match patiently(st, || reader.read(&mut body[filled..]))? {
            0 => return None,
            n => filled += n,
        }
    }
    Some(Received {
        method,
        path,
        headers,
        body,
        at,
    })
}

fn read_line_patiently(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    st: &State,
) -> Option<usize> {
    patiently(st, || reader.read_line(line))
}

/// Retries `op` through read timeouts (which let the loop notice `stop`);
/// `None` on stop or any other error.
fn patiently<T>(st: &State, mut op: impl FnMut() -> std::io::Result<T>) -> Option<T> {
    loop {
        match op() {
            Ok(v) => return Some(v),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if st.stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}
