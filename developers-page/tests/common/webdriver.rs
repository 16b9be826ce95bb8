//! A minimal synchronous W3C WebDriver client for chromedriver: just what
//! the browser test needs, over the `ureq` client keyhook already builds
//! (a crate such as fantoccini would bring its own async HTTP stack).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session driven through chromedriver. Dropping it
/// ends the session and stops chromedriver.
pub struct Browser {
    agent: ureq::Agent,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    ///
    /// # Panics
    ///
    /// With an install hint if chromium or chromedriver is missing.
    pub fn launch(width: u32, height: u32) -> Browser {
        for binary in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the browser test needs Debian's chromium and \
                 chromium-driver packages (apt-get install -y chromium chromium-driver; \
                 .ci/page installs them)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            agent,
            session: base.clone(),
            driver,
            _profile: tempfile::tempdir().expect("profile dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .agent
                .get(format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready in 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = browser._profile.path().display().to_string();
        // No internet here: Chromium's background connections would fail
        // (and slow it down), so they are all turned off.
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={profile}"),
            format!("--window-size={width},{height}"),
        ];
        let created = browser.call(
            "POST",
            &format!("{base}/session"),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}})),
        );
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {created}"));
        browser.session = format!("{base}/session/{id}");
        // Elements are looked for up to 5 s (pages load after clicks).
        browser.cmd("POST", "/timeouts", Some(json!({"implicit": 5000})));
        browser
    }

    fn call(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let response = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self
                .agent
                .post(url)
                .content_type("application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .expect("WebDriver answer");
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            status == 200,
            "WebDriver {method} {url} answered {status}: {}",
            value["value"]["message"].as_str().unwrap_or(&text)
        );
        value
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut answer = self.call(method, &format!("{}{path}", self.session), body);
        answer["value"].take()
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element matching `css` (waiting up to 5 s for it).
    pub fn find(&self, css: &str) -> String {
        let found = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element for {css}: {found}"))
            .to_owned()
    }

    /// How many elements match `css` now (no waiting beyond the implicit wait
    /// when there are none).
    pub fn count(&self, css: &str) -> usize {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Replaces the text of the field matching `css`.
    pub fn fill(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    /// A DOM property of the element matching `css` (`value`, `checked`).
    pub fn property(&self, css: &str, name: &str) -> Value {
        let id = self.find(css);
        self.cmd("GET", &format!("/element/{id}/property/{name}"), None)
    }

    /// The visible text of the element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.cmd("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let data = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Calls `ready` until it is true, reloading `url` between tries.
    pub fn wait_until(&self, url: &str, timeout: Duration, ready: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.goto(url);
            if ready(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not show what was expected within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.contains("/session/") {
            let _ = self.agent.delete(&self.session).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
