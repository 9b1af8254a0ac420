//! Supervisor: the one actor that knows every bot and decides about workers.
//!
//! It owns, per bot: the state, the generation serving turns (`current`),
//! the generation starting to replace it (`pending`), the old generations
//! still draining, the crash history, restart counts and the memory watch.
//! It routes new turns to `current`, restarts crashed and hung workers with
//! backoff, replaces leaking or oversized workers, and gives up on a bot
//! that crashes too often.
//!
//! Parts: `actor` (the actor: messages in, effects out), `lifecycle` (one
//! bot's generations as a state machine, plain functions), `policy` (the
//! crash rule), `endpoints` (its view of the model servers), `bot` (what it
//! keeps per bot), `board` (each bot's state as the web lists and watches
//! it, read without a message), `messages`, `turns` ([`start_turn`]) and
//! `rolling` (restarting many bots, and the restart schedule).
//!
//! It never touches a process or a socket itself (WorkerHandles do), and it
//! ignores events from generations it no longer tracks, so a late report can
//! never undo a newer decision.
//!
//! # Handover
//!
//! Every restart that is not a crash (memory, leak, schedule, operator) is a
//! handover: spawn the next generation as `pending`; when it is Ready, it
//! becomes `current` (so new turns go to it) and the old one is told to
//! drain, finishing its in-flight turns before it exits. If the pending
//! generation never becomes Ready, the current one keeps serving and the
//! failure is reported to whoever asked. A crash has nothing left to hand
//! over from: the next generation is spawned after the backoff.

mod actor;
mod board;
mod bot;
mod endpoints;
mod lifecycle;
mod messages;
mod policy;
mod rolling;
mod turns;

pub use actor::Supervisor;
pub use board::{Board, BotLine};
pub use messages::{AwaitSettled, GetStatus, RestartBot, Shutdown};
pub use rolling::{restart_all, rolling_restart};
pub use turns::start_turn;
