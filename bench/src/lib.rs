//! The bench: drives System 1 and System 2 (or any service that speaks docs/API.md) with the
//! same open-loop load, measures ingest-to-dashboard latency in HDR histograms, and writes
//! side-by-side reports.
//!
//! Layout, from the bottom up: [`workload`] is the load the flags describe and [`schedule`]
//! fixes when every message is due; [`agent`] makes the samples; [`transport`] opens
//! connections; [`load`] runs the agents; [`dashboard`] runs the dashboards that see the
//! samples arrive; [`record`] holds what both record; [`run`] is one measured run (with
//! [`progress`] on the terminal), and [`tally`] turns its records into a result; [`systems`]
//! starts the systems in-process (and [`relay`], the reference relay they are measured
//! against) and [`setup`] sets them up from the flags; [`report`] writes
//! the results; [`commands`] is what the `bench` binary's subcommands do, [`max`] the rate
//! search of `bench max`, [`watch`] the soak test's recorder of memory and descriptors; [`diff`] compares saved runs.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod cpu;
pub mod dashboard;
pub mod diff;
pub mod load;
pub mod max;
pub mod progress;
pub mod record;
pub mod relay;
pub mod repeat;
pub mod report;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod systems;
pub mod tally;
pub mod transport;
pub mod watch;
pub mod workload;
