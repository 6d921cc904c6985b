//! One measured run against one system: connect the dashboards, connect the agents, send the
//! schedule, wait for the stragglers, and turn what was recorded into a result.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dashboard::{self, Live, Outcome};
use crate::load::{self, Plan};
use crate::progress::Progress;
use crate::record::{DashRecorder, LatencyPair, LoadRecorder};
use crate::report::SystemResult;
use crate::schedule::Schedule;
use crate::tally::Recorded;
use crate::transport::Endpoint;
use crate::workload::Workload;

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

/// Runs `f(0)` to `f(n - 1)` on `handle`, at most `concurrency` at a time, and returns their
/// values; any failure fails the whole, naming how many failed and the first reason.
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
    // Dashboards first, so nothing sent is missed.
    let mut dashboards = Dashboards::connect(t, w, &rts.dash).await?;
    // Held, never read, until the run ends (the system may cut them off before).
    let stalled = dashboard::connect_stalled(&t.endpoint, w.stalled_dashboards)
        .await
        .with_context(|| format!("{}: connecting the stalled dashboards", t.name))?;
    let seconds = seconds_recorded(w);
    let rec = Arc::new(LoadRecorder::new(schedule.total() * w.batch, seconds));
    let conns = connect_agents(t, w, &rts.load, &rec).await?;
    let plan = Arc::new(plan(schedule, w));
    // The plan (with the run's start time) reaches the dashboards once the agents are ready.
    dashboards.plan.send_replace(Some(plan.clone()));
    let cpu = CpuClock::start(t);

    let sending = Sending::start(conns, t, &plan, &rec, &rts.load, cancel)?;
    let mut progress = Progress::new(show_progress, &t.label, w);
    let sent_end = sending
        .agents_done(&plan, &rec, &dashboards.live, &mut progress)
        .await;
    wait_for_stragglers(w, &rec, &dashboards.live, cancel, &progress).await;

    dashboards.stop.cancel();
    drop(stalled);
    progress.finish();
    let pacer_cpu = sending.pacer.join().unwrap_or(0.0);
    let outcomes = dashboards.outcomes().await?;
    let cpu = cpu
        .usage(t, pacer_cpu)
        .per_sample(rec.sent_all.load(Relaxed));
    let dash = dashboards.rec.lock().expect("lock");
    let recorded = Recorded {
        w,
        plan: &plan,
        load: &rec,
        dash: &dash,
        outcomes: &outcomes,
        seconds,
        sent_end,
        stopped_early: cancel.is_cancelled(),
    };
    Ok(recorded.measured(t, cpu))
}

/// The CPU time counters at the start of the sending, to take the run's usage from.
struct CpuClock {
    before: crate::cpu::Sample,
    wall: Instant,
}

impl CpuClock {
    fn start(t: &Target) -> Self {
        Self {
            before: crate::cpu::sample(t.redis_pid),
            wall: Instant::now(),
        }
    }

    /// The usage since the start; `pacer_s` is the ended pacer thread's time, which is no
    /// longer listed.
    fn usage(&self, t: &Target, pacer_s: f64) -> crate::cpu::Usage {
        let mut after = crate::cpu::sample(t.redis_pid);
        after.load += pacer_s;
        let wall_s = self.wall.elapsed().as_secs_f64();
        crate::cpu::usage(&self.before, &after, wall_s, t.embedded)
    }
}

/// A tag for this run's server ids, so dashboards pick out this run's samples.
fn run_tag() -> String {
    format!(
        "{:06x}",
        (metrics_model::now_us() ^ u64::from(std::process::id()) << 20) & 0xff_ffff
    )
}

/// Seconds of the timeline recorded: the measured period, the grace period and a margin.
fn seconds_recorded(w: &Workload) -> usize {
    (w.duration_s + w.grace_s).ceil() as usize + 3
}

/// The plan of a run that starts shortly (the lead gives every agent time to get its first
/// message).
fn plan(schedule: Schedule, w: &Workload) -> Plan {
    let lead = Duration::from_millis(200);
    let start = Instant::now() + lead;
    let start_us = metrics_model::now_us() + lead.as_micros() as u64;
    let first_measured = schedule.count_before(w.warmup_s);
    Plan {
        schedule,
        batch: w.batch,
        metrics: w.metrics,
        agents: w.agents,
        dashboard_parse: w.dashboard_parse,
        first_measured,
        server_prefix: format!("bench-{}-", run_tag()),
        start,
        start_us,
        measure_us: start_us + (w.warmup_s * 1e6) as u64,
    }
}

/// The connected dashboards: their tasks, what they record, and how to stop them.
struct Dashboards {
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    rec: Arc<Mutex<DashRecorder>>,
    live: Arc<Live>,
    stop: CancellationToken,
    /// Hands the dashboards the plan once the run starts.
    plan: watch::Sender<Option<Arc<Plan>>>,
}

impl Dashboards {
    /// Connects `w.dashboards` dashboards to `t`, each registered with the system on return.
    async fn connect(t: &Target, w: &Workload, rt: &Handle) -> anyhow::Result<Self> {
        let rec = Arc::new(Mutex::new(DashRecorder::default()));
        let live = Arc::new(Live::default());
        let stop = CancellationToken::new();
        let (plan, plan_rx) = watch::channel::<Option<Arc<Plan>>>(None);
        let tasks = {
            let (ep, rec, live, stop) =
                (t.endpoint.clone(), rec.clone(), live.clone(), stop.clone());
            gather(rt, w.dashboards, 64, move |_| {
                let (ep, rec, live, stop) = (ep.clone(), rec.clone(), live.clone(), stop.clone());
                let rx = plan_rx.clone();
                Box::pin(async move { dashboard::start(&ep, rx, rec, live, stop).await })
            })
            .await
            .with_context(|| format!("{}: connecting the dashboards", t.name))?
        };
        Ok(Self {
            tasks,
            rec,
            live,
            stop,
            plan,
        })
    }

    /// What each dashboard saw, once they have stopped.
    async fn outcomes(&mut self) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(self.tasks.len());
        for d in self.tasks.drain(..) {
            outcomes.push(d.await.context("a dashboard task failed")?);
        }
        Ok(outcomes)
    }
}

/// Connects `w.agents` agents to `t`, each with its connection.
async fn connect_agents(
    t: &Target,
    w: &Workload,
    rt: &Handle,
    rec: &Arc<LoadRecorder>,
) -> anyhow::Result<Vec<load::Conn>> {
    let (ep, rec, batch) = (t.endpoint.clone(), rec.clone(), w.batch);
    gather(rt, w.agents, 256, move |_| {
        let (ep, rec) = (ep.clone(), rec.clone());
        Box::pin(async move { load::connect(&ep, batch, &rec).await })
    })
    .await
    .with_context(|| format!("{}: connecting {} agents", t.name, w.agents))
}

/// The agents sending the schedule, and the pacer thread handing them their messages.
struct Sending {
    agents: TaskTracker,
    /// Returns the pacer thread's CPU seconds.
    pacer: std::thread::JoinHandle<f64>,
}

impl Sending {
    /// Starts an agent per connection and the pacer.
    fn start(
        conns: Vec<load::Conn>,
        t: &Target,
        plan: &Arc<Plan>,
        rec: &Arc<LoadRecorder>,
        rt: &Handle,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let agents = TaskTracker::new();
        let mut dues = Vec::with_capacity(conns.len());
        for (a, conn) in conns.into_iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            dues.push(tx);
            let (ep, plan, rec) = (t.endpoint.clone(), plan.clone(), rec.clone());
            agents.spawn_on(load::run_agent(a as u64, conn, ep, plan, rec, rx), rt);
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
        Ok(Self { agents, pacer })
    }

    /// Waits until every agent has sent its share (or the run was cancelled), showing the
    /// progress meanwhile; returns when the sending ended.
    async fn agents_done(
        &self,
        plan: &Plan,
        rec: &LoadRecorder,
        live: &Live,
        progress: &mut Progress,
    ) -> Instant {
        loop {
            tokio::select! {
                _ = self.agents.wait() => return Instant::now(),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            progress.show(
                plan.start.elapsed().as_secs_f64(),
                rec.sent_all.load(Relaxed),
                live.seen.load(Relaxed),
            );
        }
    }
}

/// Grace: waits until every dashboard saw every acknowledged sample, or the grace period is
/// over (at most 2 s after a Ctrl-C).
async fn wait_for_stragglers(
    w: &Workload,
    rec: &LoadRecorder,
    live: &Live,
    cancel: &CancellationToken,
    progress: &Progress,
) {
    let grace = if cancel.is_cancelled() {
        w.grace_s.min(2.0)
    } else {
        w.grace_s
    };
    let grace_end = Instant::now() + Duration::from_secs_f64(grace);
    progress.say("waiting for stragglers");
    while Instant::now() < grace_end {
        let want = rec.acked.load(Relaxed) * w.dashboards;
        if live.seen.load(Relaxed) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
