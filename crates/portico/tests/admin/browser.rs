//! The web console in Debian's headless Chromium, driven through ChromeDriver's W3C WebDriver
//! protocol (plain JSON over HTTP). Screenshots go to `target/test-artifacts/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::common::admin::AdminEnv;
use crate::common::support::{get, send, Backend};
use crate::common::{free_port, Proc};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: SocketAddr,
    session: String,
    _chromedriver: Proc,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let chromedriver = Proc::spawn_program("chromedriver", &[&format!("--port={port}")], &[]);
        let driver = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = wd(driver, "GET", "/status", None)
                .await
                .is_ok_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready after 30 s (apt-get install chromium chromium-driver):\n{}",
                chromedriver.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--no-first-run", "--no-proxy-server"],
            }
        }}});
        let v = wd(driver, "POST", "/session", Some(caps))
            .await
            .unwrap_or_else(|e| panic!("cannot start Chromium: {e}\n{}", chromedriver.output()));
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            driver,
            session,
            _chromedriver: chromedriver,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        wd(self.driver, method, &p, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The element for a CSS selector, waiting for it to appear.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let p = format!("/session/{}/element", self.session);
            let found = wd(
                self.driver,
                "POST",
                &p,
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()
            .and_then(|v| v["value"][ELEMENT].as_str().map(str::to_string));
            if let Some(id) = found {
                return id;
            }
            assert!(Instant::now() < deadline, "no element {css:?} after 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    /// The text of `css`; found again when the console redrew it in between (stale element).
    async fn text(&self, css: &str) -> String {
        for _ in 0..10 {
            let id = self.find(css).await;
            let p = format!("/session/{}/element/{id}/text", self.session);
            if let Ok(v) = wd(self.driver, "GET", &p, None).await {
                return v["value"].as_str().unwrap_or("").to_string();
            }
        }
        panic!("{css}: element keeps going stale");
    }

    async fn displayed(&self, css: &str) -> bool {
        let id = self.find(css).await;
        self.cmd("GET", &format!("/element/{id}/displayed"), None)
            .await["value"]
            == true
    }

    /// Waits until the text of `css` contains `needle` (the console refreshes every 2 s).
    async fn wait_text(&self, css: &str, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let t = self.text(css).await;
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < end,
                "{css} does not show {needle:?} after {deadline:?}; it shows:\n{t}\nmessage: {}",
                self.text("#msg").await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap_or(""))
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("console-{name}.png"));
        std::fs::write(&p, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        p
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver itself is killed by its Proc.
        let (driver, path) = (self.driver, format!("/session/{}", self.session));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    wd(driver, "DELETE", &path, None),
                )
                .await;
            });
        })
        .join();
    }
}

async fn wd(
    driver: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", driver.to_string());
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&b).unwrap())
        }
        None => Bytes::new(),
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        send(driver, req.body(Full::new(bytes)).unwrap()),
    )
    .await
    .map_err(|_| "no answer from chromedriver in 60 s".to_string())??;
    let v: Value = serde_json::from_str(&reply.body).map_err(|e| format!("{e}: {}", reply.body))?;
    if reply.status >= 400 {
        return Err(format!("{}: {v}", reply.status));
    }
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_creates_a_record_registers_a_target_requests_a_certificate() {
    let env = AdminEnv::start("console").await;
    let browser = Browser::start().await;
    let console = format!("http://{}/", env.admin);

    // Sign in with a wrong token first: refused, then with the real one.
    browser.goto(&console).await;
    browser.type_into("#token", "wrong").await;
    browser.click("#signin-button").await;
    browser
        .wait_text("#msg", "not valid", Duration::from_secs(10))
        .await;
    browser.type_into("#token", &env.token).await;
    browser.click("#signin-button").await;
    browser
        .wait_text("#zones", "example.test.", Duration::from_secs(10))
        .await;
    assert!(
        !browser.displayed("#signin").await,
        "the sign-in form is hidden once signed in"
    );

    // Create a record; dig sees it.
    browser.type_into("#rec-name", "web").await;
    browser.type_into("#rec-value", "192.0.2.44").await;
    browser.click("#rec-save").await;
    browser
        .wait_text("#records", "web.example.test.", Duration::from_secs(10))
        .await;
    browser
        .wait_text("#msg", "INSYNC", Duration::from_secs(10))
        .await;
    assert_eq!(env.dig("web.example.test", "A"), "192.0.2.44");
    // A change made elsewhere (the API) shows up without reloading the page.
    let (s, _) = env
        .call(
            "POST",
            "/api/v1/zones/example.test/changes",
            Some(json!({"changes": [{"action": "UPSERT", "name": "elsewhere", "type": "TXT", "values": ["\"made by the API\""]}]})),
        )
        .await;
    assert_eq!(s, 200);
    browser
        .wait_text("#records", "made by the API", Duration::from_secs(10))
        .await;
    // A record set with a routing policy, made in the console: shown with its policy and
    // health, and answered.
    browser.type_into("#rec-name", "canary").await;
    browser.type_into("#rec-value", "192.0.2.61").await;
    browser.click("#rec-routing option:nth-child(2)").await;
    browser.type_into("#rec-set", "blue").await;
    browser.type_into("#rec-weight", "5").await;
    browser.click("#rec-save").await;
    browser
        .wait_text(
            "tr[data-set=blue]",
            "blue: weighted 5",
            Duration::from_secs(10),
        )
        .await;
    browser
        .wait_text("tr[data-set=blue]", "healthy", Duration::from_secs(10))
        .await;
    assert_eq!(env.dig("canary.example.test", "A"), "192.0.2.61");
    let shot = browser.screenshot("zones").await;
    println!("screenshot: {}", shot.display());

    // Register a target; it turns healthy and the load balancer forwards to it.
    let backend = Backend::start("console-target").await;
    browser.click("nav button[data-page=targets]").await;
    browser
        .type_into("#tg-address", &backend.addr.to_string())
        .await;
    browser.click("#target-form button[type=submit]").await;
    let row = format!("tr[data-target=\"{}\"]", backend.addr);
    browser
        .wait_text(&row, "healthy", Duration::from_secs(20))
        .await;
    let r = get(SocketAddr::from(([127, 0, 0, 1], env.http)), "x", "/").await;
    assert_eq!(r.backend(), "console-target", "{}", r.body);
    // The group's attributes are shown beside its targets.
    browser
        .wait_text("#tg-attributes td.dereg", "300 s", Duration::from_secs(10))
        .await;
    browser.screenshot("targets").await;

    // Request a certificate from the internal CA; it becomes ISSUED.
    browser.click("nav button[data-page=certificates]").await;
    browser.type_into("#cert-name", "from-console").await;
    browser
        .type_into("#cert-domains", "console.example.test")
        .await;
    browser.click("#cert-issuer option:nth-child(2)").await;
    browser.click("#cert-form button[type=submit]").await;
    browser
        .wait_text(
            "tr[data-cert=from-console]",
            "ISSUED",
            Duration::from_secs(30),
        )
        .await;
    // When it renews, as the record says.
    let (_, rec) = env
        .call("GET", "/api/v1/certificates/from-console", None)
        .await;
    let renews = rec["renew_after"].as_str().unwrap_or_default().to_string();
    assert!(!renews.is_empty(), "{rec}");
    browser.click("nav button[data-page=certificates]").await;
    browser
        .wait_text(
            "tr[data-cert=from-console] td.renews",
            &renews,
            Duration::from_secs(10),
        )
        .await;
    browser.screenshot("certificates").await;

    // Listeners and their rules.
    browser.click("nav button[data-page=listeners]").await;
    let t = browser
        .wait_text("#listeners", "http", Duration::from_secs(10))
        .await;
    assert!(t.contains(&format!("127.0.0.1:{}", env.http)), "{t}");
    browser.screenshot("listeners").await;
    drop(browser);
    drop(backend);
}

/// The console's Lock CAA button on a certificate ordered from Pebble: the server takes the
/// CA's CAA domain from the directory's `meta.caaIdentities` (the fault-injecting proxy, a test
/// double, adds it: Pebble names none), writes the lock with Portico's account and method, and
/// the console says what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_locks_caa_for_an_acme_certificate() {
    let env = crate::common::acme_env("", &[("PEBBLE_WFE_NONCEREJECT", "0")], "").await;
    let admin_port = free_port();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"));
    std::fs::write(&env.config, text).unwrap();
    let proxy = crate::common::through_fault_proxy(&env).await;
    proxy.state().caa_identities = vec!["pebble.example".into()];
    let (portico, _client) = env.serve_until_issued().await;
    let state = env.dir.path().join("state");
    let token = std::fs::read_to_string(state.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();

    let browser = Browser::start().await;
    browser
        .goto(&format!("http://127.0.0.1:{admin_port}/"))
        .await;
    browser.type_into("#token", &token).await;
    browser.click("#signin-button").await;
    browser
        .wait_text("#zones", "example.test.", Duration::from_secs(10))
        .await;
    browser.click("nav button[data-page=certificates]").await;
    browser
        .wait_text("tr[data-cert=app]", "ISSUED", Duration::from_secs(10))
        .await;
    browser.click("button[data-lock=app]").await;
    let uri = crate::common::acme_account_uri(&state);
    let msg = browser
        .wait_text(
            "#msg",
            "CAA locked for app.example.test.: only pebble.example",
            Duration::from_secs(10),
        )
        .await;
    assert!(msg.contains(&uri), "{msg}\n{}", portico.output());
    assert!(msg.contains("http-01"), "{msg}");
    browser.screenshot("certificate-locked").await;
    drop(browser);
}
