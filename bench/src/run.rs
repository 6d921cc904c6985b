//! One measured run against one system: connect the dashboards, connect the agents, send the
//! schedule, wait for the stragglers, and turn what was recorded into a result.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dashboard::{self, Live};
use crate::load::{self, Plan};
use crate::record::{differences, DashRecorder, LatencyPair, LoadRecorder};
use crate::report::{Counts, LatencySummary, SystemResult, Throughput, TimelinePoint};
use crate::schedule::Schedule;
use crate::transport::Endpoint;

/// The shape of the load.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    /// Samples per second offered (during bursts: the base rate).
    pub rate_per_s: f64,
    /// Samples per message (request or frame).
    pub batch: u64,
    pub agents: u64,
    pub dashboards: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub grace_s: f64,
    /// Bursts: peak rate, and how long a burst lasts in each period.
    pub burst: Option<Burst>,
    pub metrics: crate::agent::MetricSet,
    pub metrics_per_sample: usize,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Burst {
    pub peak_per_s: f64,
    pub period_s: f64,
    pub burst_s: f64,
}

impl Workload {
    /// The schedule of messages for the whole run, warm-up included.
    pub fn schedule(&self) -> anyhow::Result<Schedule> {
        let per_msg = self.batch as f64;
        let secs = self.warmup_s + self.duration_s;
        let s = match self.burst {
            None => Schedule::steady(self.rate_per_s / per_msg, secs),
            Some(b) => Schedule::burst(
                self.rate_per_s / per_msg,
                b.peak_per_s / per_msg,
                b.period_s,
                b.burst_s,
                secs,
            ),
        };
        s.context("the load schedule")
    }
}

/// The bench's own runtimes: agents and dashboards on separate, named threads.
pub struct Runtimes {
    pub load: Handle,
    pub dash: Handle,
}

/// What to run against.
pub struct Target {
    pub name: String,
    pub label: String,
    pub description: String,
    /// `embedded` or the URL.
    pub target: String,
    pub endpoint: Arc<Endpoint>,
    pub redis_pid: Option<u32>,
    pub embedded: bool,
}

/// A run's result and its histograms.
pub struct Measured {
    pub result: SystemResult,
    pub latency: LatencyPair,
    pub ack: Option<LatencyPair>,
}

async fn gather<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    handle: &Handle,
    n: u64,
    concurrency: usize,
    f: impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>,
) -> anyhow::Result<Vec<T>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let sem = sem.clone();
        let fut = f(i);
        tasks.push(handle.spawn(async move {
            let _permit = sem.acquire().await;
            fut.await.map_err(|e| e.to_string())
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    let mut first = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                failed += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert(e.to_string());
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {n} connections failed; the first: {}",
            first.unwrap_or_default()
        );
    }
    Ok(out)
}

/// Runs `w` against `t`. `cancel` (Ctrl-C) ends the sending early; the result still covers
/// what was sent.
pub async fn run(
    t: &Target,
    w: &Workload,
    rts: &Runtimes,
    cancel: &CancellationToken,
    show_progress: bool,
) -> anyhow::Result<Measured> {
    let schedule = w.schedule()?;
    let tag = format!(
        "{:06x}",
        (metrics_model::now_us() ^ u64::from(std::process::id()) << 20) & 0xff_ffff
    );
    let server_prefix = format!("bench-{tag}-");
    let ep = t.endpoint.clone();

    // Dashboards first, so nothing sent is missed.
    let dash_rec = Arc::new(Mutex::new(DashRecorder::default()));
    let live = Arc::new(Live::default());
    let stop_dash = CancellationToken::new();
    // The plan (with the run's start time) reaches the dashboards once the agents are ready.
    let (plan_tx, plan_rx) = watch::channel::<Option<Arc<Plan>>>(None);
    let dashboards = {
        let (ep, rec, live, stop) = (
            ep.clone(),
            dash_rec.clone(),
            live.clone(),
            stop_dash.clone(),
        );
        gather(&rts.dash, w.dashboards, 64, move |_| {
            let (ep, rec, live, stop) = (ep.clone(), rec.clone(), live.clone(), stop.clone());
            let rx = plan_rx.clone();
            Box::pin(async move { dashboard::start(&ep, rx, rec, live, stop).await })
        })
        .await
        .with_context(|| format!("{}: connecting the dashboards", t.name))?
    };

    // Agents, each with its connection.
    let secs_len = (w.duration_s + w.grace_s).ceil() as usize + 3;
    let rec = Arc::new(LoadRecorder::new(schedule.total() * w.batch, secs_len));
    let conns = {
        let (ep, rec, batch) = (ep.clone(), rec.clone(), w.batch);
        gather(&rts.load, w.agents, 256, move |_| {
            let (ep, rec) = (ep.clone(), rec.clone());
            Box::pin(async move { load::connect(&ep, batch, &rec).await })
        })
        .await
        .with_context(|| format!("{}: connecting {} agents", t.name, w.agents))?
    };

    let lead = Duration::from_millis(200);
    let start = Instant::now() + lead;
    let start_us = metrics_model::now_us() + lead.as_micros() as u64;
    let first_measured = schedule.count_before(w.warmup_s);
    let plan = Arc::new(Plan {
        schedule,
        batch: w.batch,
        metrics: w.metrics,
        agents: w.agents,
        first_measured,
        server_prefix,
        start,
        start_us,
        measure_us: start_us + (w.warmup_s * 1e6) as u64,
    });
    plan_tx.send_replace(Some(plan.clone()));
    let cpu_a = crate::cpu::sample(t.redis_pid);
    let wall = Instant::now();

    let agents = TaskTracker::new();
    let mut dues = Vec::with_capacity(conns.len());
    for (a, conn) in conns.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        dues.push(tx);
        let fut = load::run_agent(a as u64, conn, ep.clone(), plan.clone(), rec.clone(), rx);
        agents.spawn_on(fut, &rts.load);
    }
    agents.close();
    // The name makes its CPU time count as the load generator's.
    let pacer = {
        let (plan, cancel) = (plan.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("bench-load-pace".into())
            .spawn(move || load::pace(&plan, dues, &cancel))
            .context("starting the pacer thread")?
    };

    let total_s = w.warmup_s + w.duration_s;
    let bar = if show_progress {
        let b = ProgressBar::new((total_s * 1000.0) as u64);
        b.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:20}] {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(t.label.clone());
        b
    } else {
        ProgressBar::hidden()
    };
    let mut last = (Instant::now(), 0u64, 0u64);
    let sent_end;
    loop {
        tokio::select! {
            _ = agents.wait() => { sent_end = Instant::now(); break; }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let el = start.elapsed().as_secs_f64();
        bar.set_position((el * 1000.0) as u64);
        let (sent, seen) = (rec.sent_all.load(Relaxed), live.seen.load(Relaxed));
        let dt = last.0.elapsed().as_secs_f64().max(1e-3);
        let phase = if el < w.warmup_s { " warm-up" } else { "" };
        let rate = |n: u64| {
            let r = n as f64 / dt;
            if r >= 1e6 {
                format!("{:.2}M", r / 1e6)
            } else if r >= 1e3 {
                format!("{:.1}k", r / 1e3)
            } else {
                format!("{r:.0}")
            }
        };
        bar.set_message(format!(
            "{el:.0}/{total_s:.0} s{phase}  sent {}/s  seen {}/s",
            rate(sent - last.1),
            rate((seen - last.2) / w.dashboards.max(1)),
        ));
        last = (Instant::now(), sent, seen);
    }
    // Grace: wait until every dashboard saw every acknowledged sample, or the grace period
    // is over.
    let grace = if cancel.is_cancelled() {
        w.grace_s.min(2.0)
    } else {
        w.grace_s
    };
    let grace_end = Instant::now() + Duration::from_secs_f64(grace);
    bar.set_message("waiting for stragglers");
    while Instant::now() < grace_end {
        let want = rec.acked.load(Relaxed) * w.dashboards;
        if live.seen.load(Relaxed) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_dash.cancel();
    bar.finish_and_clear();
    let pacer_cpu = pacer.join().unwrap_or(0.0);
    let mut outcomes = Vec::with_capacity(dashboards.len());
    for d in dashboards {
        outcomes.push(d.await.context("a dashboard task failed")?);
    }
    let mut cpu_b = crate::cpu::sample(t.redis_pid);
    cpu_b.load += pacer_cpu; // the pacer thread has ended: its time is no longer listed
    let cpu = crate::cpu::usage(&cpu_a, &cpu_b, wall.elapsed().as_secs_f64(), t.embedded);

    // Counts.
    let acked_words = rec.acked_set.snapshot();
    let (mut lost, mut unacked_seen, mut dup, mut unique, mut dropped) = (0, 0, 0, 0, 0);
    let mut dash_errors = Vec::new();
    for o in &outcomes {
        let (l, u) = differences(&acked_words, &o.seen.0);
        lost += l;
        unacked_seen += u;
        dup += o.duplicates;
        unique += o.unique;
        dropped += o.dropped;
        if let Some(e) = &o.error {
            dash_errors.push(e.clone());
        }
    }
    let measured_s = if cancel.is_cancelled() {
        (sent_end.duration_since(start).as_secs_f64() - w.warmup_s).max(0.001)
    } else {
        w.duration_s
    };
    let d = w.dashboards.max(1) as f64;
    let sent = rec.sent.load(Relaxed);
    let acked = rec.acked.load(Relaxed);
    let offered = (plan.schedule.total() - plan.first_measured) * w.batch;
    let rejected = rec.rejected.lock().expect("lock").clone();
    let reasons = rec.reasons.lock().expect("lock").clone();
    let dash = dash_rec.lock().expect("lock");
    let sent_ps = rec.sent_per_sec.values();
    // Per dashboard: differences of the rounded running total, so the seconds add up to the
    // total exactly.
    let mut running = (0u64, 0u64);
    let timeline = (0..secs_len)
        .map(|s| {
            let (seen, p99) = dash.per_sec.get(s).map_or((0, None), |(n, h)| {
                (*n, (!h.is_empty()).then(|| h.value_at_quantile(0.99)))
            });
            let all = running.0 + seen;
            let per_dashboard = (all as f64 / d).round() as u64;
            let this = per_dashboard - running.1;
            running = (all, per_dashboard);
            TimelinePoint {
                t: s as u64 + 1,
                sent: sent_ps.get(s).copied().unwrap_or(0),
                seen: this,
                p99_us: p99,
            }
        })
        .filter(|p| p.sent > 0 || p.seen > 0)
        .collect();
    let ack = t
        .endpoint
        .transport
        .acks()
        .then(|| rec.ack_latency.lock().expect("lock").clone());
    let latency = dash.latency.clone();
    drop(dash);
    let result = SystemResult {
        name: t.name.clone(),
        label: t.label.clone(),
        description: t.description.clone(),
        target: t.target.clone(),
        transport: t.endpoint.transport.label().to_string(),
        stopped_early: cancel.is_cancelled(),
        duration_s: measured_s,
        throughput: Throughput {
            offered_per_s: offered as f64 / w.duration_s,
            sent_per_s: sent as f64 / measured_s,
            acked_per_s: acked as f64 / measured_s,
            seen_per_s: unique as f64 / d / measured_s,
        },
        counts: Counts {
            offered,
            sent,
            acked,
            rejected,
            errors: rec.errors.load(Relaxed),
            seen: unique,
            expected_seen: acked * w.dashboards,
            lost,
            duplicated: dup,
            unacked_seen,
            dropped_by_system: dropped,
            dashboards: w.dashboards,
        },
        reasons,
        dashboard_errors: dash_errors,
        latency_us: crate::report::LatencyBlock {
            corrected: LatencySummary::of(&latency.corrected),
            uncorrected: LatencySummary::of(&latency.uncorrected),
        },
        ack_latency_us: ack.as_ref().map(|a| crate::report::LatencyBlock {
            corrected: LatencySummary::of(&a.corrected),
            uncorrected: LatencySummary::of(&a.uncorrected),
        }),
        timeline,
        cpu,
    };
    Ok(Measured {
        result,
        latency,
        ack,
    })
}
