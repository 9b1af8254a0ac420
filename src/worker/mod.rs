//! Workers as the host sees them: one [`WorkerHandle`] actor per worker
//! generation, owning its child process and its socket.
//!
//! `handle` is the actor and its lifecycle, `messages` what it and the
//! Supervisor say to each other, `child` the process and socket plumbing.
//! A WorkerHandle reports to the Supervisor and never decides about
//! restarts: that is the Supervisor's job.

mod child;
mod handle;
mod messages;

pub use handle::WorkerHandle;
pub use messages::{Cause, Drain, Kill, SetEndpointsDown, StartTurn, WorkerEvent, WorkerSettings};
