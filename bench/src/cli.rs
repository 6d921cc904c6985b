//! The command line: subcommands and their flags (each with an environment variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::transport::Transport;

/// Load generator and comparison reports for the two telemetry systems.
///
/// With no URLs, the systems run inside the bench (System 1 with a redis-server child of its
/// own unless REDIS_URL is set). Reports go to a new folder under --results.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about, long_about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The same load against System 1, System 2 and the reference relay (once per transport
    /// the systems use), one after the other, and one report that states each system as a
    /// fraction of the relay.
    Compare(CompareArgs),
    /// The load against one system.
    Run(RunArgs),
    /// Per system, the highest rate dashboards keep up with: steps the rate up from --rate
    /// until fewer than 99.9 % of samples arrive or p99 goes over --p99-ms (down, when the
    /// first step already fails).
    Max(MaxArgs),
    /// Samples the memory (RSS) and open file descriptors of running processes every second
    /// until --seconds pass: a CSV, a page with the curves, and a verdict on growth (the soak
    /// test's recorder, see scripts/soak). Fails when a process grew past its allowance or exited.
    Watch(WatchArgs),
    /// Compares saved runs (results folders, .hgrm files of other tools): one report with
    /// every curve overlaid and a table of the differences; --fail-if makes it a regression
    /// gate for CI.
    Diff(crate::diff::DiffArgs),
}

/// The flags of `bench watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// A process to watch, as NAME=PID (repeat the flag for each).
    #[arg(long = "process", value_parser = crate::watch::parse_watched, required = true)]
    pub processes: Vec<crate::watch::Watched>,
    /// Seconds to watch.
    #[arg(long, env = "WATCH_SECONDS", default_value_t = 600.0)]
    pub seconds: f64,
    /// Milliseconds between readings.
    #[arg(long, env = "WATCH_INTERVAL_MS", default_value_t = 1000)]
    pub interval_ms: u64,
    /// Seconds from the start before the baseline is taken (start-up and warm-up).
    #[arg(long, env = "WATCH_SETTLE", default_value_t = 60.0)]
    pub settle: f64,
    /// Seconds over which the baseline and the end are each taken (their medians).
    #[arg(long, env = "WATCH_WINDOW", default_value_t = 60.0)]
    pub window: f64,
    /// Memory growth allowed from the baseline to the end, in percent of the baseline...
    #[arg(long, env = "WATCH_MAX_RSS_GROWTH_PCT", default_value_t = 10.0)]
    pub max_rss_growth_pct: f64,
    /// ...or in MiB, whichever is more.
    #[arg(long, env = "WATCH_MAX_RSS_GROWTH_MIB", default_value_t = 32.0)]
    pub max_rss_growth_mib: f64,
    /// Open file descriptors allowed to be added from the baseline to the end.
    #[arg(long, env = "WATCH_MAX_FD_GROWTH", default_value_t = 64)]
    pub max_fd_growth: u64,
    /// Folder for watch.csv, watch.json and watch.html.
    #[arg(long, env = "WATCH_OUT")]
    pub out: PathBuf,
}

impl Command {
    /// The flags every load command takes (`watch` runs no load).
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Compare(c) => Some(&c.common),
            Command::Run(a) => Some(&a.common),
            Command::Max(a) => Some(&a.common),
            Command::Watch(_) | Command::Diff(_) => None,
        }
    }
}

/// The load's shape.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Samples per second offered, in total over all agents.
    #[arg(long, env = "BENCH_RATE", default_value_t = 20_000.0)]
    pub rate: f64,
    /// Samples per message (HTTP request or WebSocket frame); 1 sends single samples.
    #[arg(long, env = "BENCH_BATCH", default_value_t = 10)]
    pub batch: u64,
    /// The metrics each sample carries: `full` (12, about 240 bytes) or `basic` (7, about
    /// 160 bytes).
    #[arg(long, env = "BENCH_METRICS", value_enum, default_value_t = crate::agent::MetricSet::Full)]
    pub metrics: crate::agent::MetricSet,
    /// How the dashboards read each frame: `full` parses every frame completely into JSON
    /// values, as a browser's JSON.parse does (the per-event cost a real dashboard pays);
    /// `scan` only finds the bench's fields by substring search (the cheapest dashboard).
    #[arg(long, env = "BENCH_DASHBOARD_PARSE", value_enum, default_value_t = crate::dashboard::ParseMode::Full)]
    pub dashboard_parse: crate::dashboard::ParseMode,
    /// Agents (fake servers), each with its own connection.
    #[arg(long, env = "BENCH_AGENTS", default_value_t = 100)]
    pub agents: u64,
    /// Dashboards watching the stream (fan-out); each must see every sample.
    #[arg(long, env = "BENCH_DASHBOARDS", default_value_t = 1)]
    pub dashboards: u64,
    /// Dashboards that connect and then never read (stalled): the system must cut them off
    /// without the others' latency suffering. They are not counted in the results.
    #[arg(long, env = "BENCH_STALLED_DASHBOARDS", default_value_t = 0)]
    pub stalled_dashboards: u64,
    /// Seconds measured (after the warm-up).
    #[arg(long, env = "BENCH_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, env = "BENCH_WARMUP", default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait after the last send for samples to reach the dashboards; what has not
    /// arrived by then counts as lost.
    #[arg(long, env = "BENCH_GRACE", default_value_t = 3.0)]
    pub grace: f64,
    /// Bursts: the peak rate (samples/s) of a burst; --rate is the rate between bursts.
    #[arg(long, env = "BENCH_BURST_RATE")]
    pub burst_rate: Option<f64>,
    /// Bursts: seconds from one burst to the next.
    #[arg(long, env = "BENCH_BURST_PERIOD", default_value_t = 5.0)]
    pub burst_period: f64,
    /// Bursts: seconds each burst lasts.
    #[arg(long, env = "BENCH_BURST_LENGTH", default_value_t = 1.0)]
    pub burst_length: f64,
}

/// Where results go and how the run looks.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Folder under which each run writes a new folder of reports.
    #[arg(long, env = "BENCH_RESULTS", default_value = "results")]
    pub results: PathBuf,
    /// Write the reports into exactly this folder instead of a new timestamped one.
    #[arg(long, env = "BENCH_OUT")]
    pub out: Option<PathBuf>,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// CA certificate (PEM) to trust for https:// and wss:// URLs.
    #[arg(long, env = "BENCH_CA")]
    pub ca: Option<PathBuf>,
    /// Bearer token for the systems under test, for agents and dashboards alike.
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Bearer token the agents send (a deployment with `--agent-token`); default: --token.
    #[arg(long, env = "BENCH_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,
    /// Bearer token the dashboards send (a deployment with `--dashboard-token`); default: --token.
    #[arg(long, env = "BENCH_DASHBOARD_TOKEN", hide_env_values = true)]
    pub dashboard_token: Option<String>,
    /// Threads of the load generator's runtime (agents).
    #[arg(long, env = "BENCH_LOAD_THREADS", default_value_t = 2)]
    pub load_threads: usize,
    /// Threads of the dashboards' runtime.
    #[arg(long, env = "BENCH_DASHBOARD_THREADS", default_value_t = 1)]
    pub dashboard_threads: usize,
    /// Threads of an embedded system's runtime.
    #[arg(long, env = "BENCH_SYSTEM_THREADS", default_value_t = 2)]
    pub system_threads: usize,
}

/// One system to measure: embedded, or a URL.
#[derive(Debug, Clone, Args)]
pub struct Side {
    /// System 1 at this URL (http:// or https://; POST /metrics, dashboards at /ws) instead
    /// of in-process.
    #[arg(long, env = "BENCH_SYSTEM1")]
    pub system1: Option<String>,
    /// System 1's dashboard stream URL, when not the same host's /ws.
    #[arg(long, env = "BENCH_SYSTEM1_DASHBOARD")]
    pub system1_dashboard: Option<String>,
    /// How agents reach System 1.
    #[arg(long, env = "BENCH_SYSTEM1_TRANSPORT", value_enum, default_value_t = Transport::H2c)]
    pub system1_transport: Transport,
    /// System 2 at this URL (ws:// or wss://; agents at /ingest, dashboards at /ws) instead
    /// of in-process.
    #[arg(long, env = "BENCH_SYSTEM2")]
    pub system2: Option<String>,
    /// System 2's dashboard stream URL, when not the same host's /ws.
    #[arg(long, env = "BENCH_SYSTEM2_DASHBOARD")]
    pub system2_dashboard: Option<String>,
    /// How agents reach System 2.
    #[arg(long, env = "BENCH_SYSTEM2_TRANSPORT", value_enum, default_value_t = Transport::Ws)]
    pub system2_transport: Transport,
    /// How agents reach the reference relay in `run relay` and `max relay` (ws, h1 or h2c;
    /// next to a system, the relay takes that system's transport).
    #[arg(long, env = "BENCH_RELAY_TRANSPORT", value_enum, default_value_t = Transport::Ws)]
    pub relay_transport: Transport,
}

/// What every command takes: the systems, the load, and where the results go.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub side: Side,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which system `run` and `max` measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    System1,
    System2,
    Both,
    /// The reference relay alone (the bench's own minimal relay, in-process).
    Relay,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Leave out the reference relay (halves the run time; no fractions of the relay).
    #[arg(long, env = "BENCH_NO_RELAY")]
    pub no_relay: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The system to measure (its URL and transport come from the --system1*/--system2*
    /// flags).
    #[arg(value_enum)]
    pub system: Which,
    /// Runs the load this many times per system and records each repetition's figures and
    /// their spread (the report's histograms are the repetition with the median p99), so that
    /// `bench diff` can tell a difference from noise.
    #[arg(long, env = "BENCH_REPEAT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Measure the reference relay too, with each system's transport, and state the system
    /// as a fraction of it.
    #[arg(long, env = "BENCH_WITH_RELAY")]
    pub with_relay: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MaxArgs {
    /// The systems to search.
    #[arg(value_enum, default_value_t = Which::Both)]
    pub system: Which,
    /// The p99 bound (corrected, ingest to dashboard) a step must stay under, in ms.
    #[arg(long, env = "BENCH_P99_MS", default_value_t = 5.0)]
    pub p99_ms: f64,
    /// Share of acknowledged samples the dashboards must see, in percent.
    #[arg(long, env = "BENCH_MIN_SEEN", default_value_t = 99.9)]
    pub min_seen: f64,
    /// Each step's rate is the previous one times this.
    #[arg(long, env = "BENCH_STEP_FACTOR", default_value_t = 1.5)]
    pub factor: f64,
    /// Most steps per system.
    #[arg(long, env = "BENCH_MAX_STEPS", default_value_t = 10)]
    pub max_steps: u32,
    /// Runs of a step before it counts as failed: a failing step is run again, up to this
    /// many runs in all, and passes when one of them does. On a shared machine a stall of the
    /// host can fail a single run that the system would pass; every run is reported.
    #[arg(long, env = "BENCH_MAX_TRIES", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub tries: u32,
    /// Search the reference relay's limit too, with each system's transport, and state each
    /// system's best rate as a fraction of it.
    #[arg(long, env = "BENCH_WITH_RELAY")]
    pub with_relay: bool,
    // The first step's rate is --rate; each step lasts --duration after --warmup.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl OutputArgs {
    /// The tokens agents and dashboards present: each role's own, else the shared one.
    pub fn tokens(&self) -> crate::transport::Tokens {
        crate::transport::Tokens {
            agent: self.agent_token.clone().or_else(|| self.token.clone()),
            dashboard: self.dashboard_token.clone().or_else(|| self.token.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_flag_overrides_an_earlier_one_so_scenario_scripts_take_extra_flags() {
        let cli = Cli::try_parse_from(["bench", "compare", "--rate", "1000", "--rate", "50000"])
            .expect("parses");
        let Command::Compare(a) = cli.command else {
            panic!("compare");
        };
        assert_eq!(a.common.load.rate, 50000.0);
        assert_eq!(a.common.side.system1_transport, Transport::H2c);
        assert!(!a.no_relay);
        assert_eq!(
            a.common.load.dashboard_parse,
            crate::dashboard::ParseMode::Full
        );
        let e = Cli::try_parse_from(["bench", "run", "system3"]).unwrap_err();
        assert!(e.to_string().contains("system3"), "{e}");
    }
}
