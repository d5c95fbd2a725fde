//! Spawns the real `authkit-host` binary on a free loopback port, with a clean
//! environment, and talks to it over HTTP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::db::TestDb;
use crate::workos::{Emulator, now_ms};

/// The secret test servers are started with unless told otherwise.
pub const TEST_SECRET: &str = "whsec_integration_test";

/// The `authkit-host` binary: `AUTHKIT_HOST_BIN`, else beside this test binary's
/// directory (`target/<profile>/authkit-host`), which `tests/run.sh` builds first.
pub fn host_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("AUTHKIT_HOST_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("authkit-host");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p authkit-host` (tests/run.sh does this)",
        bin.display()
    );
    bin
}

/// How to start a server.
#[derive(Clone)]
pub struct ServerOptions {
    pub secret: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Pass `--database-url` (off to test the default database).
    pub database: bool,
    /// `serve`, or `dev` (which needs `--watch FILE` in `args`).
    pub command: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            secret: Some(TEST_SECRET.to_string()),
            env: Vec::new(),
            args: Vec::new(),
            database: true,
            command: "serve".to_string(),
        }
    }
}

impl ServerOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }
}

pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    pub emulator: Emulator,
    /// Everything the server wrote to stderr so far.
    log: Arc<Mutex<String>>,
    client: reqwest::Client,
}

/// A response: status and parsed JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The stable error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        TestServer::start_with(db, ServerOptions::default()).await
    }

    pub async fn start_with(db: &TestDb, options: ServerOptions) -> TestServer {
        let mut cmd = Command::new(host_binary());
        cmd.current_dir(db.dir.path()).env_clear().env("AUTHKIT_LOG", "info,authkit_host=debug");
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        if options.database {
            cmd.arg("--database-url").arg(&db.url);
        }
        cmd.arg(&options.command).arg("--listen").arg("127.0.0.1:0").args(&options.args);
        if let Some(secret) = &options.secret {
            cmd.env("WORKOS_WEBHOOK_SECRET", secret);
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn authkit-host");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        // What the server prints for people (`dev` does) joins the log.
        let out_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut log = out_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = addr_tx.send(addr);
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr =
            match tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(60))).await.unwrap() {
                Ok(addr) => addr.parse().expect("listening address"),
                Err(_) => {
                    let _ = child.kill();
                    panic!("authkit-host did not start; its log:\n{}", log.lock().unwrap());
                }
            };
        let secret = options.secret.unwrap_or_else(|| TEST_SECRET.to_string());
        TestServer { child, addr, emulator: Emulator::new(&secret), log, client: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POSTs `body` to the webhook route with the given headers.
    pub async fn post_webhook_raw(&self, body: Vec<u8>, headers: &[(&str, String)]) -> Reply {
        let mut req =
            self.client.post(self.url("/workos/webhook")).header("content-type", "application/json").body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("webhook request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        Reply { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    /// POSTs raw bytes to `path` with the given headers; returns the status, the
    /// exact body bytes and how long the round trip took.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Vec<u8>, Duration) {
        let started = std::time::Instant::now();
        let (status, bytes) = self.try_post(path, body, headers).await.expect("request");
        (status, bytes, started.elapsed())
    }

    /// Like [`TestServer::post_raw`], but a failed connection is returned, not
    /// a panic, and nothing is timed.
    pub async fn try_post(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> Result<(u16, Vec<u8>), reqwest::Error> {
        let mut req = self.client.post(self.url(path)).header("content-type", "application/json").body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    /// POSTs `body` signed now by the emulator, as WorkOS would.
    pub async fn deliver(&self, body: &[u8]) -> Reply {
        let signature = self.emulator.signature(now_ms(), body);
        self.post_webhook_raw(body.to_vec(), &[("WorkOS-Signature", signature)]).await
    }

    /// Like [`TestServer::deliver`], but a connection failure is returned, not a panic.
    pub async fn try_deliver(&self, body: &[u8]) -> Result<Reply, reqwest::Error> {
        let signature = self.emulator.signature(now_ms(), body);
        let resp = self
            .client
            .post(self.url("/workos/webhook"))
            .header("WorkOS-Signature", signature)
            .body(body.to_vec())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok(Reply { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    /// Sends an event and requires a 200; returns the event id.
    pub async fn send(&self, event_type: &str, data: Value, created_at: &str) -> String {
        let (id, body) = self.emulator.event(event_type, data, created_at);
        let reply = self.deliver(&body).await;
        assert_eq!(reply.status, 200, "{event_type} was not accepted: {reply:?}");
        id
    }

    pub async fn get(&self, path: &str) -> Reply {
        let resp = self.client.get(self.url(path)).send().await.expect("GET");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        Reply { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    /// A request with an `Authorization` header value (if any): the status,
    /// the JSON body (`Null` if not JSON) and the `WWW-Authenticate` header.
    pub async fn authorized(
        &self,
        method: &str,
        path: &str,
        authorization: Option<String>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value, Option<String>) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self.client.request(method, self.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let resp = request.send().await.expect("the request");
        let status = resp.status().as_u16();
        let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let body = serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
        (status, body, challenge)
    }

    /// Calls the admin API with `token` (`None`: no Authorization header).
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/wasm").body(body);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let www = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = resp.bytes().await.unwrap_or_default();
        let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let (Some(www), Value::Object(map)) = (www, &mut body) {
            map.insert("www-authenticate".into(), Value::String(www));
        }
        Reply { status, body }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(ok.success());
    }

    /// SIGKILL: the process dies without any chance to clean up (a crash).
    pub fn crash(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits for the process to exit (up to 30 s).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `authkit-host` CLI against a test database; returns (exit ok, stdout, stderr).
pub fn cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(host_binary())
        .current_dir(db.dir.path())
        .env_clear()
        .arg("--database-url")
        .arg(&db.url)
        .args(args)
        .output()
        .expect("run authkit-host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
