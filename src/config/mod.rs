//! Typed, validated configuration: `supervisor.toml` plus the environment.
//!
//! Owns the file format, its defaults and every rule about what a valid value
//! is. Loading is three steps, each a plain function unit tests can call:
//!
//! 1. parse the TOML text (a syntax error names the line);
//! 2. lay environment overrides over it: `BOTHOST_<SECTION>__<KEY>=value`
//!    (for example `BOTHOST_SERVER__BIND=0.0.0.0:80`), so secrets and
//!    per-host values need not live in the file;
//! 3. deserialize with unknown keys refused, then validate what types cannot
//!    say (unique bot names, ranges, path lengths).
//!
//! Files: `schema` (the types and defaults), `load` (the pipeline and its
//! errors), `env` (step 2), `validate` (step 3's rules), `derived` (values
//! computed from a loaded configuration).
//!
//! Every error names the file, the key and the reason. This module never
//! touches the runtime: it only reads and checks.

mod derived;
mod duration;
mod env;
mod load;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

pub use derived::{millis, parse_schedule, worker_socket_stem};
pub use load::{ConfigError, DEFAULT_PATH};
pub use schema::*;
pub use validate::{MAX_BOTS, MIN_SECRET_BYTES};
