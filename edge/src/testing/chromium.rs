//! A headless Chromium for the browser tests: found (`$CHROMIUM`, `/usr/bin/chromium`, then
//! `chromium` on `PATH`; a missing browser fails the test naming the Debian package), started
//! with a fresh profile and a DevTools port, and killed with its profile removed however the
//! test ends.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `$CHROMIUM`, `/usr/bin/chromium`, or `chromium` on `PATH`; panics naming the package.
pub fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CHROMIUM={} is not a file; unset it to use /usr/bin/chromium from the Debian \
             package `chromium` (apt-get install -y chromium)",
            p.display()
        );
        return p;
    }
    let default = PathBuf::from("/usr/bin/chromium");
    if default.is_file() {
        return default;
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
    {
        return p;
    }
    panic!(
        "headless Chromium is needed for this test and was not found: install the Debian \
         package `chromium` (apt-get install -y chromium), or set CHROMIUM to its binary"
    );
}

/// A headless Chromium with a fresh profile; killed (and its profile removed) on drop.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// A whole browser test, browser start-up included, must finish within this.
pub const TEST_BUDGET: Duration = Duration::from_secs(90);

impl Chromium {
    pub fn launch(binary: &Path) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let profile = std::env::temp_dir().join(format!(
            "dashboard-browser-test-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).expect("create the profile directory");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--no-proxy-server",
                "--mute-audio",
                // Pages must keep animating and running timers while the test watches them.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Drain stderr so Chromium never blocks on it; keep the tail for failure messages.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut t) = tail.lock() {
                        t.push(line);
                        if t.len() > 40 {
                            t.remove(0);
                        }
                    }
                }
            });
        }
        Self {
            child,
            profile,
            stderr,
        }
    }

    /// The browser's DevTools endpoint, from the `DevToolsActivePort` file Chromium writes.
    pub async fn devtools_url(&self) -> Result<(SocketAddr, String), String> {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines().map(str::trim);
                let (port, path) = (lines.next(), lines.next());
                // The second line whole (`/devtools/browser/<uuid>`): the file may be read while
                // Chromium is still writing it.
                let whole = path.is_some_and(|p| p.len() >= "/devtools/browser/".len() + 36);
                if let (Some(port), Some(path), true) = (port, path, whole) {
                    let port: u16 = port.parse().map_err(|e| format!("{file:?}: {e}"))?;
                    return Ok((SocketAddr::from(([127, 0, 0, 1], port)), path.to_string()));
                }
            }
            if Instant::now() > deadline {
                return Err("Chromium did not open its DevTools port within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `limit` for the browser to exit by itself (after `Browser.close`).
    pub fn wait_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends a test run in this browser: fails with `outcome`'s error, or with [`TEST_BUDGET`] passed,
    /// showing the tail of the browser's stderr; then lets the browser exit.
    pub fn finish(mut self, outcome: Result<Result<(), String>, tokio::time::error::Elapsed>) {
        let budget = TEST_BUDGET;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!(
                "{e}\n--- chromium stderr (tail) ---\n{}",
                self.stderr_tail()
            ),
            Err(_) => panic!(
                "browser test still running after {budget:?}\n--- chromium stderr (tail) ---\n{}",
                self.stderr_tail()
            ),
        }
        self.wait_exit(Duration::from_secs(5));
    }

    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().map(|t| t.join("\n")).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still be writing there for a moment.
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
