//! The fake model server (`fake-ollama`, built next to `bothost`) as tests
//! drive it: start one, set its faults, read what it saw, stop it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The `fake-ollama` binary next to the binaries under test.
pub fn fake_binary() -> PathBuf {
    std::path::Path::new(super::BOTHOST)
        .parent()
        .expect("bin dir")
        .join("fake-ollama")
}

/// A free TCP port on 127.0.0.1 (for a server the host itself starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub struct FakeServer {
    pub url: String,
    child: Child,
    args: Vec<String>,
}

impl FakeServer {
    /// Starts `fake-ollama --name NAME ARGS...` on a free port.
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut all = vec!["--name".to_owned(), name.to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        Self::spawn("0", all)
    }

    /// Starts it again, on the same port, after [`FakeServer::kill`].
    pub fn restart(&mut self) {
        let port = self.url.rsplit(':').next().expect("port").to_owned();
        *self = Self::spawn(&port, std::mem::take(&mut self.args));
    }

    fn spawn(port: &str, args: Vec<String>) -> Self {
        let mut child = Command::new(fake_binary())
            .args(["--port", port])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-ollama (cargo build --workspace builds it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("fake-ollama prints its address");
        let url = line
            .trim()
            .strip_prefix("fake-ollama listening on ")
            .unwrap_or_else(|| panic!("fake-ollama did not start: {line}"))
            .to_owned();
        Self { url, child, args }
    }

    /// `POST /_fault` with `fault` (see fake-ollama's docs).
    pub fn fault(&self, fault: Value) {
        let res = super::web::client()
            .post(format!("{}/_fault", self.url))
            .json(&fault)
            .send()
            .expect("set fault");
        assert!(res.status().is_success(), "fault {fault} refused");
    }

    pub fn chat_requests(&self) -> u64 {
        let (_, body) = super::http_get(&self.url, "/_stats");
        let stats: Value = serde_json::from_str(&body).expect("stats JSON");
        stats["chat_requests"].as_u64().expect("chat_requests")
    }

    /// The body of the last chat request it received.
    pub fn last_request(&self) -> Value {
        let (_, body) = super::http_get(&self.url, "/_last");
        serde_json::from_str(&body).expect("last request JSON")
    }

    /// Stops it: from now on its port refuses connections.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.kill();
    }
}
