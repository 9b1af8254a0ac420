//! `bot-worker`: one bot, one process. Started by the bothost Supervisor as
//! `bot-worker --socket PATH`; everything else arrives in the handshake.
//!
//! Logs go to stderr as `LEVEL message` lines, which the host re-logs under
//! the bot's name; the host adds timestamps.

mod alloc;
mod engine;
mod serve;

#[global_allocator]
static ALLOCATOR: alloc::ExitWhenRefused = alloc::ExitWhenRefused;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
    // A panic is one log line with where it happened, never a backtrace:
    // resolving one reads the binary's debug info, tens of MB of memory
    // that the supervisor would (rightly) count against the bot.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        tracing::error!("panic{location}: {message}");
    }));

    // For `bothost check-config`: which protocol this build speaks.
    if std::env::args().nth(1).as_deref() == Some("--protocol-version") {
        println!("{}", bot_worker::PROTOCOL_VERSION);
        return ExitCode::SUCCESS;
    }
    let Some(socket) = socket_arg(std::env::args().skip(1)) else {
        eprintln!("usage: bot-worker --socket PATH   (started by `bothost serve`, not by hand)");
        return ExitCode::from(2);
    };
    // One thread: a worker serves one bot, and its work is I/O and timers.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(&socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn socket_arg(mut args: impl Iterator<Item = String>) -> Option<PathBuf> {
    match (args.next()?.as_str(), args.next()) {
        ("--socket", Some(path)) => Some(PathBuf::from(path)),
        _ => None,
    }
}
