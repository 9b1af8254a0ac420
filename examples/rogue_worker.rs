//! A worker that breaks the protocol on purpose, for the host's tests.
//!
//! It completes the handshake like a real worker, then misbehaves as its
//! bot's name says:
//! - `rogue-oversized`, `rogue-truncated`, `rogue-garbage`, `rogue-unknown`:
//!   one bad frame, then wait to be killed. The host must log a clear error,
//!   replace it, and keep serving everyone else.
//! - `rogue-stubborn`: answers heartbeats but ignores `Drain` and SIGTERM, so
//!   only the host's SIGKILL after the grace period can stop it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bot_worker::{HostMessage, WorkerMessage, PROTOCOL_VERSION};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let socket = args.get(2).ok_or("usage: rogue_worker --socket PATH")?;
    let mut stream = UnixStream::connect(socket)?;

    let hello = read_frame(&mut stream)?;
    let HostMessage::Hello { spec, .. } = serde_json::from_slice(&hello)? else {
        return Err("expected Hello".into());
    };
    let ready = serde_json::to_vec(&WorkerMessage::Ready {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    })?;
    write_frame(&mut stream, &ready)?;

    match spec.name.as_str() {
        "rogue-oversized" => stream.write_all(&(2u32 * 1024 * 1024).to_be_bytes())?,
        "rogue-truncated" => {
            stream.write_all(&100u32.to_be_bytes())?;
            stream.write_all(b"{\"type\":")?;
            stream.shutdown(Shutdown::Write)?;
        }
        "rogue-garbage" => write_frame(&mut stream, b"\x00\x01 not json at all")?,
        "rogue-unknown" => write_frame(&mut stream, br#"{"type":"launch_missiles","id":1}"#)?,
        "rogue-stubborn" => return stubborn(stream),
        other => return Err(format!("no misbehaviour defined for bot '{other}'").into()),
    }
    // Stay alive: the host must act on the frame, not on our exit.
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

fn stubborn(mut stream: UnixStream) -> Result<(), Box<dyn std::error::Error>> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the ignore disposition; no handler code runs.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn)? };
    while let Ok(frame) = read_frame(&mut stream) {
        if let Ok(HostMessage::Ping { seq }) = serde_json::from_slice(&frame) {
            write_frame(
                &mut stream,
                &serde_json::to_vec(&WorkerMessage::Pong { seq })?,
            )?;
        }
    }
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

fn read_frame(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body)?;
    Ok(body)
}

fn write_frame(stream: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(body.len() as u32).to_be_bytes())?;
    stream.write_all(body)
}
