//! A password in `REDIS_URL` never shows: not in `--help`, not in the start-up log.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const URL: &str = "redis://:hunter2@127.0.0.1:1/0";

#[test]
fn help_does_not_show_the_redis_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .arg("--help")
        .env("REDIS_URL", URL)
        .output()
        .expect("run ingest --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("REDIS_URL"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn the_start_up_log_redacts_the_redis_password() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["worker", "--listen", "off"])
        .env("REDIS_URL", URL)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ingest worker");
    // The worker cannot reach this Redis; it logs its start and keeps retrying until killed.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    for mut pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let _ = pipe.read_to_string(&mut log);
    }
    assert!(log.contains("redis://:***@127.0.0.1:1/0"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}
