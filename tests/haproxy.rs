//! Two hosts behind the real HAProxy (Debian's package, the shipped
//! `deploy/haproxy/haproxy.cfg`), on one PostgreSQL: a host that shuts down
//! leaves the rotation before it stops accepting, users keep being served
//! through HAProxy all along, and a WebSocket closed by the draining host
//! reconnects through HAProxy to the other one.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bothost_testkit::{test_database_url, PgSchema};
use common::fake::free_port;
use common::web::{login, register};
use common::*;
use nix::sys::signal::Signal;

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy() -> Option<&'static str> {
    let found = Command::new("haproxy").arg("-v").output().is_ok();
    if !found {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but haproxy is missing (.ci/run installs it)"
        );
        eprintln!("haproxy is not installed: skipping");
        return None;
    }
    Some("haproxy")
}

#[test]
fn a_host_leaving_haproxys_rotation_drops_nobody() {
    let (Some(base), Some(haproxy)) = (test_database_url(), haproxy()) else {
        return;
    };
    let rt = runtime();
    let schema = rt.block_on(PgSchema::create(&base, "haproxy")).unwrap();
    let config = format!(
        "{}\n[database]\nurl = \"{}\"\n[backup]\nschedule = \"off\"\n\
         [auth]\njwt_secret = \"behind-haproxy-with-a-32-byte-key\"\n\
         [limits]\nmessages_per_minute_per_user = 100000\nmessages_per_minute_per_ip = 100000\n\
         [[bots]]\nname = \"echo\"\n[bots.builtin]\ntoken_delay = \"5ms\"\n",
        FAST_SUPERVISOR.replace(
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\ndrain_delay = \"3s\""
        ),
        schema.url
    );
    let mut one = TestHost::start_with_config(&config);
    let two = TestHost::start_with_config(&config);
    let port = free_port();
    let front = format!("http://127.0.0.1:{port}");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
    let _proxy = Haproxy(
        Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("HAPROXY_BIND", format!("127.0.0.1:{port}"))
            .env("BOTHOST_1", one.addr())
            .env("BOTHOST_2", two.addr())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    two.wait_for("HAProxy serving", Duration::from_secs(15), || {
        let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        (listening && http_get(&front, "/readyz").0 == 200).then_some(())
    });
    let alice = register(&front, "alice");
    let conv = alice.conversation("echo");

    // A WebSocket through HAProxy; then host one shuts down while a client
    // keeps asking through HAProxy.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (errors, answered) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let me = login(&front, "alice").expect("log in through haproxy");
            let (mut errors, mut answered, mut i) = (Vec::new(), 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let res = me.post(
                    &format!("/api/v1/conversations/{conv}/messages"),
                    serde_json::json!({"client_msg_id": format!("p{i}"), "content": "still there?"}),
                );
                if res.status() == 200 {
                    answered += 1;
                } else {
                    errors.push(res.status().as_u16());
                }
            }
            (errors, answered)
        });
        let started = Instant::now();
        one.signal(Signal::SIGTERM);
        one.wait_exit(Duration::from_secs(30))
            .expect("host one stops");
        // And a little after, on host two alone.
        while started.elapsed() < Duration::from_secs(6) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().unwrap()
    });
    assert!(
        errors.is_empty(),
        "{} requests failed: {errors:?}",
        errors.len()
    );
    assert!(answered >= 5, "{answered} answered");
    assert!(
        one.log().contains("out of rotation"),
        "host one left the rotation first"
    );

    // A WebSocket opened now lands on host two and is answered.
    rt.block_on(async {
        let mut ws = alice.ws().await;
        ws.chat(conv, "after", "who answers now?").await;
        let (_, _, done) = ws.turn().await;
        assert_eq!(done["status"], "complete");
    });
    drop(two);
    rt.block_on(schema.drop_schema()).unwrap();
}
