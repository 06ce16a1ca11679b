//! A real browser for the console's tests: Debian's headless Chromium driven over WebDriver by
//! `fantoccini`, through the `chromedriver` of the `chromium-driver` package, started on a free
//! port for each [`Browser`] and killed with it. Nothing is downloaded: a missing chromedriver
//! fails the test with how to install it.

use super::process::{dying_with_us, free_port};
use super::temp::TempDir;
use super::wait::poll_until;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

/// Where Debian's `chromium-driver` puts chromedriver (`CHROMEDRIVER` overrides it).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium (`CHROMIUM` overrides it).
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a page may take to show what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// One headless Chromium with its chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// chromedriver's port and the session's id, to end the session from `Drop`.
    port: u16,
    session: Option<String>,
    /// Chromium's profile, removed with the browser.
    _profile: TempDir,
}

/// What the test needs to know when the browser is missing.
fn install_hint(what: &str, path: &str) -> String {
    format!(
        "{what} not found at {path}: the console's browser tests need Debian's Chromium and its \
         driver: `apt-get install -y chromium chromium-driver` (`just test` installs them \
         when missing, through `scripts/services.sh --with-browser`)"
    )
}

impl Browser {
    /// A browser whose viewport is `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let driver_path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
        assert!(
            Path::new(&driver_path).exists(),
            "{}",
            install_hint("chromedriver", &driver_path)
        );
        assert!(
            Path::new(&chromium).exists(),
            "{}",
            install_hint("chromium", &chromium)
        );
        let port = free_port();
        let driver = dying_with_us(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {driver_path}: {e}"));
        let profile = TempDir::new("chromium");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-extensions".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--hide-scrollbars".into(),
            "--lang=en-US".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": args,
                // The viewport itself, whatever the smallest window the platform allows.
                "mobileEmulation": {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}},
            }),
        );
        // Prompts are the page's to handle: none may be dismissed behind a test's back.
        capabilities.insert("unhandledPromptBehavior".into(), json!("ignore"));
        let url = format!("http://127.0.0.1:{port}");
        let mut browser = None;
        let mut last_error = String::new();
        let builder = {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(capabilities);
            builder
        };
        let started = poll_until(
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || match builder.connect(&url).await {
                Ok(client) => {
                    browser = Some(client);
                    true
                }
                Err(e) => {
                    last_error = e.to_string();
                    false
                }
            },
        )
        .await;
        let client = match (started, browser) {
            (true, Some(client)) => client,
            _ => panic!("chromedriver on port {port} gave no session in 20 s: {last_error}"),
        };
        let session = client.session_id().await.ok().flatten();
        Browser {
            client,
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    /// Opens `url` and waits for the console's script to have drawn its first state.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The first element that matches `css`, once there is one.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {PATIENCE:?}: {e}"))
    }

    /// Clicks the element `css` (once it is there).
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the field `css`, replacing what it held.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Runs `script` in the page (its `arguments` are `args`) and returns what it returns.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs asynchronous `script`: it ends by calling `arguments[arguments.length - 1]` with its
    /// result.
    pub async fn eval_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The text of the first element `css`, or `None` when there is none.
    pub async fn text_of(&self, css: &str) -> Option<String> {
        let value = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await;
        value.as_str().map(str::to_string)
    }

    /// Whether an element `css` is on the page and takes room (not `display: none`, not hidden).
    pub async fn shown(&self, css: &str) -> bool {
        self.eval(
            "const e = document.querySelector(arguments[0]);
             return !!e && e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';",
            vec![json!(css)],
        )
        .await
            == json!(true)
    }

    /// Waits until `check` of the page's state holds; panics naming `what` otherwise.
    pub async fn wait_for(&self, what: &str, check: impl AsyncFnMut() -> bool) {
        assert!(
            poll_until(PATIENCE, Duration::from_millis(100), check).await,
            "timed out after {PATIENCE:?} waiting for {what}; the page said: {}",
            self.banners().await
        );
    }

    /// Waits until the element `css` shows `expected` as its text.
    pub async fn wait_for_text(&self, css: &str, expected: &str) {
        let mut last = None;
        let held = poll_until(PATIENCE, Duration::from_millis(100), async || {
            last = self.text_of(css).await;
            last.as_deref().map(str::trim) == Some(expected)
        })
        .await;
        assert!(
            held,
            "{css} shows {last:?}, not {expected:?}, after {PATIENCE:?}; the page said: {}",
            self.banners().await
        );
    }

    /// What the page's error and notice banners say (for failure messages).
    pub async fn banners(&self) -> String {
        let value = self
            .eval(
                "return ['error-banner', 'notice', 'paused-banner']
                   .map((id) => document.getElementById(id))
                   .filter((e) => e && !e.hidden)
                   .map((e) => e.id + ': ' + e.textContent.trim().replace(/\\s+/g, ' '))
                   .join(' | ') || '(no banner)';",
                vec![],
            )
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    /// Goes to a view of the console by its hash (`overview`, `order/<id>`, …).
    pub async fn view(&self, hash: &str) {
        self.eval("location.hash = arguments[0];", vec![json!(hash)])
            .await;
        let name = hash.split('/').next().unwrap_or(hash);
        let section = format!("section[data-view='{name}']");
        self.wait_for(&format!("the {name} view"), || async {
            self.shown(&section).await
        })
        .await;
    }

    /// Pastes the admin token into the header's form, as an operator would.
    pub async fn use_token(&self, token: &str) {
        self.type_into("#token-input", token).await;
        self.click("#token-save").await;
        self.wait_for("the console to take the token", || async {
            self.text_of("#auth-state").await.as_deref() == Some("admin")
        })
        .await;
    }

    /// Confirms the open confirmation dialog, after checking it asks about `about`.
    pub async fn confirm(&self, about: &str) {
        self.wait_for("the confirmation dialog", || async {
            self.eval(
                "return document.getElementById('confirm-dialog').open;",
                vec![],
            )
            .await
                == json!(true)
        })
        .await;
        let question = self.text_of("#confirm-text").await.unwrap_or_default();
        assert!(
            question.contains(about),
            "the dialog asks {question:?}, not about {about:?}"
        );
        self.click("#confirm-ok").await;
    }

    /// The action controls (`data-action`) that take room on the page, as `action#id`.
    pub async fn visible_actions(&self) -> Vec<String> {
        let value = self
            .eval(
                "return [...document.querySelectorAll('[data-action]')]
                   .filter((e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden')
                   .map((e) => e.getAttribute('data-action') + '#' + e.id);",
                vec![],
            )
            .await;
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Saves a PNG of the page as `target/console-screenshots/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Ends the session (Chromium quits) and the driver.
    pub async fn close(mut self) {
        if self.client.clone().close().await.is_ok() {
            self.session = None;
        }
    }
}

impl Drop for Browser {
    /// Also after a test panicked, when no async code runs any more: the session is ended with a
    /// plain blocking `DELETE /session/{id}` (so that Chromium quits), then the driver is killed.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = end_session(self.port, &session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` to chromedriver on `port`, waiting for its answer (at most 10 s).
fn end_session(port: u16, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// `target/console-screenshots/` (under `CARGO_TARGET_DIR` when it is set).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(target)
    } else {
        target
    };
    target.join("console-screenshots")
}
