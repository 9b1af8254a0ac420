//! bothost: a bot host with process-per-bot isolation.
//!
//! See ARCHITECTURE.md for the map. Entry points: [`cli`] parses the command
//! line, [`startup::Host`] builds and runs the host, [`control`] is how the
//! other commands reach a running host.

pub mod backoff;
pub mod backup;
pub mod ceiling;
pub mod chat;
pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod fleet;
pub mod inference;
pub mod lease;
pub mod memory;
pub mod metrics;
mod names;
pub mod orphans;
pub mod process;
pub mod schedule;
pub mod startup;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod turn;
pub mod view;
pub mod web;
pub mod worker;
