//! The `fake-ollama` model server as a child process of a benchmark,
//! stopped when dropped.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

pub struct FakeOllama {
    child: std::process::Child,
    pub url: String,
}

impl FakeOllama {
    /// The release `fake-ollama` on `port` (0: any free one) answering as
    /// `name`, a token every `token_delay_ms`; returns once it listens.
    pub fn start(port: u16, name: &str, token_delay_ms: u64) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(crate::release_binaries()?.join("fake-ollama"))
            .args(["--port", &port.to_string(), "--name", name])
            .args(["--token-delay-ms", &token_delay_ms.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("run `cargo build --release --workspace` first")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("fake-ollama listening on ")
            .context("fake-ollama did not start")?
            .to_owned();
        Ok(Self { child, url })
    }

    /// Stops it outright: to its clients, a server gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeOllama {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One chat straight to the model server at `url` (`POST /api/chat`,
/// NDJSON): (time to the first chunk, time to the `done` line).
pub async fn direct_chat(
    http: &reqwest::Client,
    url: &str,
    text: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut response = http
        .post(format!("{url}/api/chat"))
        .json(&json!({"model": "llama3.2", "stream": true,
                      "messages": [{"role": "user", "content": text}]}))
        .send()
        .await?
        .error_for_status()?;
    let mut first = None;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        first.get_or_insert_with(|| started.elapsed());
        body.extend_from_slice(&chunk);
        if body.ends_with(b"\n") && body.windows(11).any(|w| w == b"\"done\":true") {
            break;
        }
    }
    let done = started.elapsed();
    Ok((first.unwrap_or(done), done))
}
