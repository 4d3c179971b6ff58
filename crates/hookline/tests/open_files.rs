//! A real `hookline serve` started with a low soft limit of open files (as services often
//! are: 1,024, here 256) raises it to its hard limit, so that hundreds of connections do not
//! shut the API out. (Linux: the test reads the limit back from `/proc`.)
#![cfg(target_os = "linux")]

mod common;

use common::process::{Serve, free_port, wait_healthy};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

/// The soft limit the server starts with.
const SOFT: u64 = 256;
/// Idle connections held open to the server: more than `SOFT`.
const CONNECTIONS: usize = 600;

#[tokio::test]
async fn a_low_soft_limit_of_open_files_is_raised_to_the_hard_one() {
    let hard = getrlimit(Resource::Nofile)
        .maximum
        .unwrap_or(4_096)
        .min(4_096);
    assert!(
        hard > CONNECTIONS as u64 + 100,
        "this machine allows only {hard} open files"
    );
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = common::process::hookline();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", &tmp.path().display().to_string()])
        .env_remove("HOOKLINE_DATABASE_URL")
        .env_remove("HOOKLINE_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("serve.log")).unwrap());
    // SAFETY: the closure only makes the `setrlimit` system call, which is async-signal-safe,
    // and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(SOFT),
                    maximum: Some(hard),
                },
            )
            .map_err(std::io::Error::from)
        });
    }
    let child = Serve(command.spawn().unwrap());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&http, &base).await;

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        numbers,
        [hard.to_string(), hard.to_string()],
        "{open_files}"
    );

    // More connections than the soft limit the server started with, all held open.
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(stream)) => held.push(stream),
            outcome => panic!("connection {i} was not taken within 10 s: {outcome:?}"),
        }
    }
    // The server took them all and answers a new one. (With the soft limit of 256 it
    // accepted none past it: its backlog filled, and connecting hung.)
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = fresh.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let log = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap();
    assert!(log.contains("raised the open files limit"), "{log}");
    drop(held);
    drop(child);
}
