//! The IPC protocol between the bothost host and its `bot-worker` processes.
//!
//! This library is the only thing the host depends on from the worker crate:
//! the message types ([`protocol`]) and the frame codec ([`frame`]). Keeping
//! the protocol in one place means the two sides cannot drift apart.
//!
//! # Wire format
//!
//! One Unix stream connection per worker. Every message is a frame: a 4-byte
//! big-endian length, then that many bytes of JSON. A frame larger than
//! [`MAX_FRAME_BYTES`] is refused by both sides with a clear error.
//!
//! # Conversation
//!
//! ```text
//! host                                   worker
//!  |  (listens on <runtime_dir>/w-<bot>-<gen>.sock, spawns the worker)
//!  |  <-------------------------------- connect
//!  |  Hello{version, spec, heartbeat} -->
//!  |  <------------------------------ Ready{version, pid}   (or Refused{reason})
//!  |  Chat{id, messages} ------------->
//!  |  <------------------------------ Delta{id, text} ...
//!  |  <------------------------------ Done{id, usage} | Failed{id, code, message}
//!  |  Cancel{id} --------------------->   (the caller went away)
//!  |  Ping{seq} <--------------------> Pong{seq}   (both directions)
//!  |  Drain -------------------------->   finish in-flight turns, then exit
//! ```
//!
//! Requests are multiplexed by `id`, chosen by the host, so one worker serves
//! many chats at once. A peer that sends a frame it cannot decode has broken
//! the protocol: the receiver logs the error and closes the connection.

pub mod frame;
pub mod protocol;

pub use frame::{FrameCodec, FrameError, MAX_FRAME_BYTES};
pub use protocol::*;
