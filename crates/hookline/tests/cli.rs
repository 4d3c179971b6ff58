//! The real `hookline` binary configured by its environment alone, as the contract allows
//! ("every flag has its environment variable"): the switches take `1`/`0` as well as
//! `true`/`false`, a value that is neither is refused by name, and the account and key
//! commands work from the environment too; `hookline --help` lists every variable; and the
//! server's log names an endpoint it turns off.

mod common;

use common::process::{Serve, cli, free_port, post_click, post_endpoint, wait_healthy};
use common::{Receiver, verify_with_standardwebhooks};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;

/// `hookline serve` with no arguments at all: everything from `env`.
fn serve_from_env(dir: &Path, port: u16, env: &[(&str, &str)]) -> Serve {
    let log = std::fs::File::create(dir.join(format!("serve-{port}.log"))).unwrap();
    let mut cmd = common::process::hookline();
    cmd.arg("serve")
        .env_remove("HOOKLINE_DATABASE_URL")
        .env_remove("HOOKLINE_ENCRYPTION_KEY")
        .env("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))
        .env("HOOKLINE_DATA_DIR", dir.join("data"))
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map(Serve).unwrap()
}

/// [`serve_from_env`] on a free port, once it answers; the process and its base URL.
async fn serving(http: &reqwest::Client, dir: &Path, env: &[(&str, &str)]) -> (Serve, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = serve_from_env(dir, port, env);
    wait_healthy(http, &base).await;
    (server, base)
}

fn account_from_env(dir: &Path, name: &str) -> String {
    let data = dir.join("data").display().to_string();
    let (ok, out, err) = cli(
        &["account".into(), "create".into()],
        &[
            ("HOOKLINE_DATA_DIR", &data),
            ("HOOKLINE_ACCOUNT_NAME", name),
            ("HOOKLINE_ACCOUNT_PLAN", "business"),
        ],
    );
    assert!(ok, "{out}{err}");
    let key = out.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("hk_"), "{out}");
    key
}

#[tokio::test]
async fn serve_takes_every_switch_from_its_environment_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = account_from_env(dir, "acme");
    // A second key for the same account, by the CLI (the account's name from the argument).
    let data = dir.join("data").display().to_string();
    let (ok, out, err) = cli(
        &["account".into(), "key".into(), "acme".into()],
        &[("HOOKLINE_DATA_DIR", &data)],
    );
    assert!(ok, "{out}{err}");
    let second = out.lines().last().unwrap().trim().to_owned();
    assert!(second.starts_with("hk_") && second != key, "{out}");

    let rx = Receiver::start().await;
    let http = reqwest::Client::new();
    let (mut server, base) = serving(
        &http,
        dir,
        &[
            // As the contract writes it.
            ("HOOKLINE_ALLOW_PRIVATE_TARGETS", "1"),
            ("HOOKLINE_ALLOW_INSECURE_URLS", "1"),
            ("HOOKLINE_RETRY_SCHEDULE", "100ms,100ms"),
            ("HOOKLINE_ADMIN_TOKEN", "admin-token-for-the-test"),
        ],
    )
    .await;

    // A loopback `http://` endpoint is taken: both switches are on.
    let (status, ep) = post_endpoint(&http, &base, &second, &rx.url("env"), &["click"]).await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_owned();
    // The first answer fails: the schedule from the environment retries it at once.
    rx.script("env", vec![common::Reply::Status(500)]);
    assert_eq!(post_click(&http, &base, &key).await, 202);
    let got = rx.wait_for("env", 2).await;
    verify_with_standardwebhooks(&secret, &got[1]);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));

    // The admin API is on, with the token from the environment.
    let resp = http
        .get(format!("{base}/admin/v1/accounts"))
        .bearer_auth("admin-token-for-the-test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.sigkill();

    // `0` turns a switch off: the same endpoint is now refused, and nothing is stored.
    let (mut server, base) = serving(
        &http,
        dir,
        &[
            ("HOOKLINE_ALLOW_PRIVATE_TARGETS", "0"),
            ("HOOKLINE_ALLOW_INSECURE_URLS", "1"),
        ],
    )
    .await;
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("env"), &["*"]).await;
    assert_eq!(status, 422, "{ep}");
    let list: Value = http
        .get(format!("{base}/v1/endpoints"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    // And without the admin token, the admin API is off.
    let resp = http
        .get(format!("{base}/admin/v1/accounts"))
        .bearer_auth("admin-token-for-the-test")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 200);
    server.sigkill();
}

/// `hookline --help` lists every flag's variable, as the contract says: each one a
/// command's own help names, and those the contract names.
#[test]
fn the_help_lists_every_variable() {
    let help = |args: &[&str]| {
        let (ok, out, err) = cli(
            &args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
            &[],
        );
        assert!(ok, "{out}{err}");
        out
    };
    let top = help(&["--help"]);
    let mut seen = 0;
    for command in [
        "serve",
        "migrate",
        "bench",
        "account create",
        "account key",
        "account keys",
        "account revoke",
        "secrets reencrypt",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let own = help(&args);
        for var in own.split("[env: ").skip(1) {
            let name: String = var
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                top.contains(&format!("  {name} ")),
                "{name} of `{command}`:\n{top}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 40, "{seen} variables in the commands' help");
    for name in [
        "HOOKLINE_LISTEN",
        "HOOKLINE_DATA_DIR",
        "HOOKLINE_DATABASE_URL",
        "HOOKLINE_RETRY_SCHEDULE",
        "HOOKLINE_ALLOW_PRIVATE_TARGETS",
        "HOOKLINE_ALLOW_INSECURE_URLS",
        "HOOKLINE_ENCRYPTION_KEY",
        "HOOKLINE_ADMIN_TOKEN",
    ] {
        assert!(top.contains(&format!("  {name} ")), "{name}:\n{top}");
    }
}

/// Runs `hookline serve` with `var` set to `value` and a data directory that cannot be
/// made: had the value been taken, the server would stop there, with another error, rather
/// than run. It must fail; what it wrote to stderr.
fn serve_refuses(var: &str, value: &str) -> String {
    let (ok, out, err) = cli(
        &["serve".into(), "--listen".into(), "127.0.0.1:0".into()],
        &[
            ("HOOKLINE_DATA_DIR", "/dev/null/hookline-data"),
            (var, value),
        ],
    );
    assert!(!ok, "{out}");
    err
}

#[test]
fn a_connection_time_of_zero_is_refused_by_name() {
    for (var, flag) in [
        ("HOOKLINE_HEADER_READ_TIMEOUT", "--header-read-timeout"),
        ("HOOKLINE_BODY_READ_TIMEOUT", "--body-read-timeout"),
        ("HOOKLINE_WRITE_TIMEOUT", "--write-timeout"),
    ] {
        let err = serve_refuses(var, "0s");
        assert!(
            err.contains(&format!("{flag} must be more than zero")),
            "{err}"
        );
    }
}

/// An endpoint that answers `410 Gone` is turned off, and the server's log says which.
#[tokio::test]
async fn an_endpoint_turned_off_by_410_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = account_from_env(dir, "acme");
    let rx = Receiver::start().await;
    rx.always("gone", common::Reply::Status(410));
    let http = reqwest::Client::new();
    let (mut server, base) = serving(
        &http,
        dir,
        &[
            ("HOOKLINE_ALLOW_PRIVATE_TARGETS", "1"),
            ("HOOKLINE_ALLOW_INSECURE_URLS", "1"),
            ("HOOKLINE_LOG", "warn"),
        ],
    )
    .await;
    let (status, ep) = post_endpoint(&http, &base, &key, &rx.url("gone"), &["click"]).await;
    assert_eq!(status, 201, "{ep}");
    let id = ep["id"].as_str().unwrap().to_owned();
    assert_eq!(post_click(&http, &base, &key).await, 202);
    let port = base.rsplit(':').next().unwrap();
    let log = dir.join(format!("serve-{port}.log"));
    common::eventually("the log to name the endpoint turned off", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .any(|l| l.contains("410 Gone") && l.contains(&id) && l.contains("WARN"))
            .then_some(())
    })
    .await;
    // Its outcome is written after the log line.
    common::eventually("the endpoint turned off", || async {
        let ep: Value = http
            .get(format!("{base}/v1/endpoints/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (ep["enabled"] == false).then_some(())
    })
    .await;
    server.sigkill();
}

#[test]
fn a_switch_that_is_neither_on_nor_off_is_refused_by_name() {
    for (var, flag) in [
        ("HOOKLINE_ALLOW_PRIVATE_TARGETS", "--allow-private-targets"),
        ("HOOKLINE_ALLOW_INSECURE_URLS", "--allow-insecure-urls"),
    ] {
        let err = serve_refuses(var, "maybe");
        assert!(err.contains("'maybe'") && err.contains(flag), "{err}");
    }
}

#[test]
fn reencrypt_takes_its_choice_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    account_from_env(dir, "acme");
    let data = dir.join("data").display().to_string();
    let args: Vec<String> = ["secrets", "reencrypt"].map(String::from).to_vec();

    // `hookline keygen` prints a key the server takes.
    let (ok, out, err) = cli(&["keygen".into()], &[]);
    assert!(ok, "{err}");
    let new_key = out.trim().to_owned();
    assert!(
        hookline::store::Sealer::from_base64(&new_key).is_ok(),
        "{out}"
    );

    // Both choices at once: refused before anything is opened.
    let (ok, _, err) = cli(
        &args,
        &[
            ("HOOKLINE_DATA_DIR", &data),
            ("HOOKLINE_DECRYPT_SECRETS", "1"),
            ("HOOKLINE_NEW_ENCRYPTION_KEY", &new_key),
        ],
    );
    assert!(!ok && err.contains("not both"), "{err}");
    // Neither: refused, saying what to give.
    let (ok, _, err) = cli(
        &args,
        &[
            ("HOOKLINE_DATA_DIR", &data),
            ("HOOKLINE_DECRYPT_SECRETS", "0"),
        ],
    );
    assert!(!ok && err.contains("--new-key"), "{err}");
    // `0` is off: the new key is used.
    let (ok, out, err) = cli(
        &args,
        &[
            ("HOOKLINE_DATA_DIR", &data),
            ("HOOKLINE_DECRYPT_SECRETS", "0"),
            ("HOOKLINE_NEW_ENCRYPTION_KEY", &new_key),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("re-encrypted"), "{out}");
    // `1` is on: back in clear.
    let (ok, out, err) = cli(
        &args,
        &[
            ("HOOKLINE_DATA_DIR", &data),
            ("HOOKLINE_ENCRYPTION_KEY", &new_key),
            ("HOOKLINE_DECRYPT_SECRETS", "1"),
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("in clear"), "{out}");
}

/// The schema version of the SQLite database in `data`.
fn user_version(data: &str) -> i64 {
    let conn = rusqlite::Connection::open(Path::new(data).join("hookline.db")).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn set_user_version(data: &str, version: i64) {
    let conn = rusqlite::Connection::open(Path::new(data).join("hookline.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {version}"))
        .unwrap();
}

/// A data directory's schema changes only while no server runs on it: a server of an older
/// build would fail on the new schema (`500`s, while its health check says all is well). A
/// database newer than the build is refused untouched. `migrate` says what it did.
#[tokio::test]
async fn migrations_wait_for_no_server_and_newer_databases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data").display().to_string();
    let env = [("HOOKLINE_DATA_DIR", data.as_str())];
    let migrate = || cli(&["migrate".into()], &env);
    let (ok, out, err) = migrate();
    assert!(ok, "{out}{err}");
    let version = user_version(&data);
    assert!(version >= 14, "{version}");
    assert!(
        out.contains(&format!(
            "migrated the schema at {data} from version 0 to {version}"
        )),
        "{out}"
    );
    let (ok, out, err) = migrate();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("is up to date (version {version})")),
        "{out}"
    );

    let key = account_from_env(dir, "acme");
    let http = reqwest::Client::new();
    let (mut server, base) = serving(&http, dir, &[]).await;
    // As if the server running were of the build before: its schema one version back.
    set_user_version(&data, version - 1);
    let other_account = || {
        cli(
            &["account".into(), "create".into()],
            &[
                ("HOOKLINE_DATA_DIR", data.as_str()),
                ("HOOKLINE_ACCOUNT_NAME", "other"),
            ],
        )
    };
    for (command, (ok, out, err)) in [("migrate", migrate()), ("account create", other_account())] {
        assert!(!ok, "{command}: {out}{err}");
        assert!(
            err.contains(&format!(
                "the database is at schema version {} and this build needs {version}, but \
                 another hookline process holds",
                version - 1
            )) && err.contains("nothing was changed"),
            "{command}: {err}"
        );
        assert_eq!(user_version(&data), version - 1, "{command}");
    }
    // The server goes on as it was; the account was not created.
    assert_eq!(post_click(&http, &base, &key).await, 202);
    server.sigkill();

    // A database newer than the build: refused by every command, and left as it is.
    set_user_version(&data, version + 1);
    for (command, (ok, out, err)) in [("migrate", migrate()), ("account create", other_account())] {
        assert!(!ok, "{command}: {out}{err}");
        assert!(
            err.contains(&format!(
                "the database is at schema version {}, newer than this build knows \
                 ({version}); run a newer hookline",
                version + 1
            )),
            "{command}: {err}"
        );
        assert_eq!(user_version(&data), version + 1, "{command}");
    }
    // Back at its own version, and with no server, the account is created.
    set_user_version(&data, version);
    let (ok, out, err) = other_account();
    assert!(ok, "{out}{err}");
}

/// A command that fails says so on one line, each cause once, in words rather than a
/// driver's: an unreachable PostgreSQL, a database that is not there (without the line of
/// PostgreSQL's own source the driver appends), a mistyped data directory.
#[test]
fn errors_are_one_line_with_each_cause_once() {
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (ok, out, err) = cli(&args, &[]);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: "), "{err}");
        err
    };
    let refused = run(&[
        "account",
        "keys",
        "acme",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert_eq!(
        refused.matches("Connection refused").count(),
        1,
        "{refused}"
    );
    assert!(refused.contains("connecting to PostgreSQL"), "{refused}");

    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("mistyped");
    let dir = missing.display().to_string();
    let err = run(&["account", "keys", "acme", "--data-dir", &dir]);
    assert!(err.contains("there is no Hookline database at"), "{err}");

    // A database that does not exist, on the test server when there is one.
    let Some(url) = std::env::var("HOOKLINE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return;
    };
    let (server, _) = url.rsplit_once('/').unwrap();
    let err = run(&[
        "account",
        "keys",
        "acme",
        "--database-url",
        &format!("{server}/hookline_no_such_database"),
    ]);
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(err.contains("(SQLSTATE 3D000)"), "{err}");
    assert!(!err.contains(" at line "), "{err}");
}
