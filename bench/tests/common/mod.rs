//! What the bench's end-to-end tests share: the binary as a user runs it, fresh output
//! folders, the load flags of a short run, and the report it writes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bench"));
    // The bench starts its own redis-server unless REDIS_URL says otherwise.
    c.env_remove("REDIS_URL").env("NO_COLOR", "1");
    c
}

pub fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bench-test-{name}-{}-{}",
        std::process::id(),
        metrics_model::now_us()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the bench binary runs");
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The load flags of a short run: `rate` samples/s in messages of `batch` from `agents`
/// agents, `duration` s measured after `warmup` s, then `grace` s for stragglers.
pub struct Load {
    pub rate: u32,
    pub batch: u32,
    pub agents: u32,
    pub duration: f64,
    pub warmup: f64,
    pub grace: f64,
}

impl Load {
    /// 200 samples/s in pairs from 3 agents, 1 s after 0.2 s of warm-up, 5 s of grace.
    pub const SMALL: Load = Load {
        rate: 200,
        batch: 2,
        agents: 3,
        duration: 1.0,
        warmup: 0.2,
        grace: 5.0,
    };

    pub fn args(&self) -> [String; 12] {
        [
            "--rate".into(),
            self.rate.to_string(),
            "--batch".into(),
            self.batch.to_string(),
            "--agents".into(),
            self.agents.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
            "--grace".into(),
            self.grace.to_string(),
        ]
    }
}

/// Runs `cmd` to the end with `--out` a new folder named for `name`; returns the folder, the
/// output and the report written there.
pub fn run_to_report(name: &str, cmd: &mut Command) -> (PathBuf, Output, Value) {
    let dir = out_dir(name);
    let out = run_ok(cmd.arg("--out").arg(&dir));
    let r = report(&dir);
    (dir, out, r)
}

pub fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

pub fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}
