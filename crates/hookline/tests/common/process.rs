//! Real `hookline` processes for the tests that kill them: the binary, free ports, a child
//! that is SIGKILLed when dropped, and the CLI's account creation.

use super::eventually;
use std::process::{Child, Command};

/// The `hookline` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_hookline");

/// The `hookline` binary, without the `HOOKLINE_*` variables of the shell the tests run
/// in (but `HOOKLINE_LOG`): a test says what it runs with, and a `HOOKLINE_DATABASE_URL`
/// left in a developer's shell cannot take a test's server to that database.
pub fn hookline() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("HOOKLINE_") && text != "HOOKLINE_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is SIGKILLed when dropped, so a failing test leaves none behind.
pub struct Serve(pub Child);

impl Serve {
    /// SIGKILL (std's `Child::kill` sends SIGKILL on Unix) and reap.
    pub fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Waits until the server at `base` answers its health check.
pub async fn wait_healthy(http: &reqwest::Client, base: &str) {
    eventually("a server to start", || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
}

/// Sends one valid click to the server at `base` with `key`; the answer's status.
pub async fn post_click(http: &reqwest::Client, base: &str, key: &str) -> u16 {
    http.post(format!("{base}/v1/events"))
        .bearer_auth(key)
        .json(&serde_json::json!({
            "type": "click",
            "data": super::valid("click", serde_json::json!({}))
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Asks the server at `base` (a process of its own) to create an endpoint at `url`
/// subscribed to `types`, with API key `key`; the status and the JSON body.
pub async fn post_endpoint(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    url: &str,
    types: &[&str],
) -> (u16, serde_json::Value) {
    let resp = http
        .post(format!("{base}/v1/endpoints"))
        .bearer_auth(key)
        .json(&serde_json::json!({"url": url, "event_types": types}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Creates the account `acme` with the real CLI (`storage`: `--data-dir …` or
/// `--database-url …`); returns its key, the last line the command printed.
pub fn cli_account(storage: &[&str]) -> String {
    let out = hookline()
        .args(["account", "create", "--name", "acme", "--plan", "pro"])
        .args(storage)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("hk_"), "{stdout}");
    key
}

/// The storage flags of the CLI for `location`.
pub fn storage_args(location: &hookline::store::Location) -> Vec<String> {
    match location {
        hookline::store::Location::Sqlite(dir) => {
            vec!["--data-dir".into(), dir.display().to_string()]
        }
        hookline::store::Location::Postgres(url) => vec!["--database-url".into(), url.clone()],
    }
}

/// Runs the CLI with `args` and `env`; returns whether it succeeded, its stdout and stderr.
pub fn cli(args: &[String], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = hookline();
    cmd.args(args)
        .env_remove("HOOKLINE_DATABASE_URL")
        .env_remove("HOOKLINE_ENCRYPTION_KEY")
        .env_remove("HOOKLINE_NEW_ENCRYPTION_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET url` with API key `key`: the JSON body, whatever the status.
pub async fn get_json(http: &reqwest::Client, url: String, key: &str) -> serde_json::Value {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
