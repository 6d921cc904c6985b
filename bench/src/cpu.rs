//! CPU time by component, read from /proc: the load generator shares the machine with the
//! system it measures, so every report says how much of the CPU each side used.
//!
//! Threads are told apart by name: the bench's runtimes name theirs `bench-load` (agents) and
//! `bench-dash` (dashboards); an embedded system runs on threads of its own names (`sut`,
//! `aggregator`, ...), so its time is the process total minus the bench's.

use std::path::Path;

/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ on every Linux ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// `utime + stime` in ticks from a `stat` file, and the thread or process name.
fn stat(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// CPU seconds used so far, by component.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub process: f64,
    pub load: f64,
    pub dash: f64,
    /// A child process (redis-server), when there is one.
    pub child: Option<f64>,
}

/// Reads the counters now. `child` is the pid of a child process to account too.
pub fn sample(child: Option<u32>) -> Sample {
    let mut s = Sample {
        process: stat(Path::new("/proc/self/stat")).map_or(0.0, |(_, t)| t as f64 / TICKS_PER_SEC),
        ..Sample::default()
    };
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Some((name, t)) = stat(&e.path().join("stat")) {
                let secs = t as f64 / TICKS_PER_SEC;
                if name.starts_with("bench-load") {
                    s.load += secs;
                } else if name.starts_with("bench-dash") {
                    s.dash += secs;
                }
            }
        }
    }
    s.child = child
        .and_then(|pid| stat(&Path::new("/proc").join(pid.to_string()).join("stat")))
        .map(|(_, t)| t as f64 / TICKS_PER_SEC);
    s
}

/// CPU seconds the calling thread has used; a thread that ends before the run's last sample
/// reports its own time this way.
pub fn this_thread() -> f64 {
    stat(Path::new("/proc/thread-self/stat")).map_or(0.0, |(_, t)| t as f64 / TICKS_PER_SEC)
}

/// CPU used between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub wall_s: f64,
    pub load_generator_s: f64,
    pub dashboards_s: f64,
    /// The system under test, when it runs in this process (`None` for a URL target).
    pub system_s: Option<f64>,
    pub redis_s: Option<f64>,
    /// Load generator CPU over wall time times the cores: 0.25 is half a core of two.
    pub load_generator_share: f64,
    pub cores: usize,
    /// Samples sent while the CPU was counted (warm-up included), for the figures per sample.
    #[serde(default)]
    pub samples: u64,
    /// `system_s` per sample sent, in µs (Redis not included).
    #[serde(default)]
    pub system_us_per_sample: Option<f64>,
    /// `redis_s` per sample sent, in µs.
    #[serde(default)]
    pub redis_us_per_sample: Option<f64>,
}

impl Usage {
    /// The usage with the per-sample figures for `samples` sent while it was counted.
    pub fn per_sample(mut self, samples: u64) -> Self {
        let per = |s: Option<f64>| s.filter(|_| samples > 0).map(|x| x * 1e6 / samples as f64);
        self.samples = samples;
        self.system_us_per_sample = per(self.system_s);
        self.redis_us_per_sample = per(self.redis_s);
        self
    }
}

/// The usage between `a` and `b`, `wall_s` apart; `embedded` says whether the system under
/// test runs in this process.
pub fn usage(a: &Sample, b: &Sample, wall_s: f64, embedded: bool) -> Usage {
    let load = (b.load - a.load).max(0.0);
    let dash = (b.dash - a.dash).max(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Usage {
        wall_s,
        load_generator_s: load,
        dashboards_s: dash,
        system_s: embedded.then(|| (b.process - a.process - load - dash).max(0.0)),
        redis_s: match (a.child, b.child) {
            (Some(x), Some(y)) => Some((y - x).max(0.0)),
            _ => None,
        },
        load_generator_share: if wall_s > 0.0 {
            load / (wall_s * cores as f64)
        } else {
            0.0
        },
        cores,
        samples: 0,
        system_us_per_sample: None,
        redis_us_per_sample: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_a_busy_named_thread_are_counted() {
        let a = sample(Some(std::process::id()));
        let before = a.load;
        let t = std::thread::Builder::new()
            .name("bench-load-t".into())
            .spawn(move || {
                // Spin until the thread has used 0.15 s of CPU (on a busy machine that takes
                // longer than 0.15 s of wall time), or give up after 20 s.
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_secs(20) {
                    let slice = std::time::Instant::now();
                    while slice.elapsed() < std::time::Duration::from_millis(10) {
                        x = x.wrapping_mul(31).wrapping_add(7);
                    }
                    if sample(None).load - before >= 0.15 {
                        break;
                    }
                }
                std::hint::black_box(x);
                // Read while the thread is still alive (its time leaves the task list after).
                sample(None)
            })
            .expect("spawn");
        let b = t.join().expect("join");
        assert!(b.load - a.load >= 0.1, "{a:?} {b:?}");
        assert!(b.process >= b.load);
        assert!(a.child.is_some());
        let u = usage(&a, &b, 0.3, true);
        assert!(u.load_generator_share > 0.0);
        // The load thread's time is not counted as the system's.
        assert!(
            u.system_s.expect("in-process") <= b.process - a.process - u.load_generator_s + 1e-9
        );
        // A system reached by URL is not this process: no figure for it.
        assert_eq!(usage(&a, &b, 0.3, false).system_s, None);
        let per = u.per_sample(1000);
        assert_eq!(
            per.system_us_per_sample,
            u.system_s.map(|s| s * 1e6 / 1000.0)
        );
        assert_eq!(u.per_sample(0).system_us_per_sample, None);
    }
}
