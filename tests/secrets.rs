//! The host's secrets stay in the host: a worker's environment holds the
//! basics and its own endpoints' API keys only, and a model server bothost
//! supervises gets neither the host's BOTHOST_* settings nor the other
//! servers' keys. Read from `/proc/PID/environ` of the real children.

mod common;

use std::time::Duration;

use common::fake::{fake_binary, free_port};
use common::*;

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("read environ")
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn has(env: &[String], name: &str) -> bool {
    env.iter().any(|v| v.starts_with(&format!("{name}=")))
}

#[test]
fn children_inherit_no_secret_of_the_host() {
    // This file's only test: the host it starts inherits these.
    std::env::set_var("BOTHOST_JWT_SECRET", "q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1");
    std::env::set_var("BOTHOST_TEST_PRIMARY_KEY", "primary-key");
    std::env::set_var("BOTHOST_TEST_CLOUD_KEY", "cloud-key");
    std::env::set_var("SOME_UNRELATED_TOKEN", "nobody-needs-this");
    let port = free_port();
    let host = TestHost::start(&format!(
        "[[inference]]\nname = \"primary\"\nurl = \"http://127.0.0.1:{port}\"\n\
         api_key_env = \"BOTHOST_TEST_PRIMARY_KEY\"\n\
         command = [\"{}\", \"--port\", \"{port}\"]\n\
         [[inference]]\nname = \"cloud\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:{}\"\n\
         api_key_env = \"BOTHOST_TEST_CLOUD_KEY\"\n\
         [[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n\
         {}",
        fake_binary().display(),
        free_port(),
        bots(&["plain"])
    ));
    let plain = environ(host.bot("plain").pid.expect("plain serving"));
    let llama = environ(host.bot("llama").pid.expect("llama serving"));
    assert!(has(&plain, "PATH"), "{plain:?}");
    for secret in [
        "BOTHOST_JWT_SECRET",
        "BOTHOST_TEST_PRIMARY_KEY",
        "BOTHOST_TEST_CLOUD_KEY",
        "SOME_UNRELATED_TOKEN",
    ] {
        assert!(!has(&plain, secret), "builtin worker has {secret}");
    }
    assert!(
        has(&llama, "BOTHOST_TEST_PRIMARY_KEY"),
        "its own key: {llama:?}"
    );
    for secret in [
        "BOTHOST_JWT_SECRET",
        "BOTHOST_TEST_CLOUD_KEY",
        "SOME_UNRELATED_TOKEN",
    ] {
        assert!(!has(&llama, secret), "ollama worker has {secret}");
    }

    let server = host.wait_for("the supervised server", Duration::from_secs(10), || {
        host.status()
            .inference
            .iter()
            .find(|e| e.name == "primary")
            .and_then(|e| e.pid)
    });
    let server_env = environ(server);
    assert!(
        has(&server_env, "SOME_UNRELATED_TOKEN"),
        "its own settings stay"
    );
    for secret in ["BOTHOST_JWT_SECRET", "BOTHOST_TEST_CLOUD_KEY"] {
        assert!(!has(&server_env, secret), "model server has {secret}");
    }
}
