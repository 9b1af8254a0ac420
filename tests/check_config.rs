//! `bothost check-config`, run as an operator would before a deploy: a
//! prepared machine passes every check, and each check fails (or warns) for
//! the real thing it guards: an expired certificate, a port in use, a
//! read-only database, an unknown migration, a world-readable secret…

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bothost_testkit::PgDatabase;
use common::fake::{free_port, FakeServer};
use common::*;
use serde_json::Value;

const GOOD_SECRET: &str = "q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1";

/// A machine prepared for production: a migrated SQLite database with an
/// admin, a fresh backup, monitoring whose receiver secrets exist (0600),
/// and a playbook for every alert.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let site = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        site.write_config("");
        let monitoring = site.path("monitoring");
        copy_dir(&repo("monitoring"), &monitoring);
        let secrets = site.path("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let am = monitoring.join("alertmanager/alertmanager.yml");
        let text = std::fs::read_to_string(&am)
            .unwrap()
            .replace("/etc/alertmanager/secrets", secrets.to_str().unwrap());
        std::fs::write(&am, text).unwrap();
        for name in ["slack_webhook_url", "pagerduty_routing_key"] {
            let file = secrets.join(name);
            std::fs::write(&file, "https://hooks.example.invalid/x").unwrap();
            chmod(&file, 0o600);
        }
        let playbooks = site.path("playbooks");
        std::fs::create_dir(&playbooks).unwrap();
        let alerts =
            std::fs::read_to_string(monitoring.join("prometheus/rules/alerts.yml")).unwrap();
        for name in bothost::checks::runbooks(&alerts) {
            std::fs::write(playbooks.join(name), "# playbook\n").unwrap();
        }
        site.cli_ok(&["migrate"]);
        site.add_admin();
        site.cli_ok(&["backup"]);
        site
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("supervisor.toml")
    }

    /// The site's configuration with `extra` TOML sections added.
    fn write_config(&self, extra: &str) {
        let text = format!(
            "[server]\nbind = \"127.0.0.1:0\"\n\n[auth]\njwt_secret = \"{GOOD_SECRET}\"\n\n\
             [supervisor]\nruntime_dir = \"run\"\nworker_binary = \"{}\"\n\n{extra}\n{}",
            bothost_testkit::binary_dir()
                .unwrap()
                .join("bot-worker")
                .display(),
            bots(&["helper"])
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_env(args, &[])
    }

    fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        std::process::Command::new(BOTHOST)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .output()
            .expect("run bothost")
    }

    /// The site's configuration with `lines` added to `[supervisor]`.
    fn write_supervisor(&self, lines: &str) {
        self.write_config("");
        let text = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(
            self.config(),
            text.replacen("[supervisor]\n", &format!("[supervisor]\n{lines}\n"), 1),
        )
        .unwrap();
    }

    fn cli_ok(&self, args: &[&str]) {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn add_admin(&self) {
        use std::io::Write;
        let mut child = std::process::Command::new(BOTHOST)
            .arg("--config")
            .arg(self.config())
            .args(["user", "add", "root", "--admin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"correct horse battery\n")
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// `check-config --json`: exit success and each check's (status, detail).
    fn check(&self) -> (bool, BTreeMap<String, (String, String)>) {
        self.check_env(&[])
    }

    fn check_env(&self, env: &[(&str, &str)]) -> (bool, BTreeMap<String, (String, String)>) {
        let out = self.cli_env(&["check-config", "--json"], env);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let checks = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    (
                        c["status"].as_str().unwrap().to_owned(),
                        c["detail"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        (out.status.success(), checks)
    }

    /// Asserts check `name` has `status`, its detail containing `needle`.
    fn expect(&self, name: &str, status: &str, needle: &str) {
        let (ok, checks) = self.check();
        let (got, detail) = checks
            .get(name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:?}"));
        assert_eq!(got, status, "{name}: {detail}");
        assert!(
            detail.contains(needle),
            "{name}: {detail:?} lacks {needle:?}"
        );
        assert_eq!(
            ok,
            !checks.values().any(|(s, _)| s == "fail"),
            "exit 1 exactly when a check fails: {checks:?}"
        );
    }
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_prepared_site_passes_every_check() {
    let site = Site::new();
    let (ok, checks) = site.check();
    let names: Vec<&str> = checks.keys().map(String::as_str).collect();
    assert_eq!(checks.len(), 23, "{names:?}");
    // Whether the kernel can enforce memory ceilings is the machine's, not
    // the site's: the check says what a host here reports.
    let host = TestHost::start(&bots(&["helper"]));
    let enforcement = host.status().memory_enforcement;
    let (ceiling_status, ceiling) = &checks["memory_ceiling"];
    match ceiling_status.as_str() {
        "pass" => assert_eq!(ceiling, &enforcement, "the kernel enforces"),
        "warn" => assert!(
            ["user space only", "rlimit"]
                .iter()
                .any(|e| ceiling.starts_with(e) && enforcement.starts_with(e)),
            "{ceiling} vs {enforcement}"
        ),
        other => panic!("memory_ceiling {other}: {ceiling}"),
    }
    for (name, (status, detail)) in checks.iter().filter(|(n, _)| *n != "memory_ceiling") {
        assert_eq!(status, "pass", "{name}: {detail}");
    }
    assert!(ok);
    // The table for people says the same.
    let out = site.cli(&["check-config"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(" 0 failed"), "{table}");
}

#[test]
fn a_configuration_that_does_not_load_fails_naming_the_key() {
    let site = Site::new();
    site.write_config("[limits]\nmessages_per_minute_per_user = 0\n");
    let (ok, checks) = site.check();
    assert!(!ok);
    assert_eq!(checks.len(), 1);
    let (status, detail) = &checks["configuration"];
    assert_eq!(status, "fail");
    assert!(
        detail.contains("limits.messages_per_minute_per_user"),
        "{detail}"
    );
    site.write_supervisor("restart_schedule = \"at three\"");
    site.expect("configuration", "fail", "supervisor.restart_schedule");
    site.write_config("[logging]\nlevel = \"info,bothost=[\"\n");
    site.expect("configuration", "fail", "logging.level");
}

#[test]
fn secrets_tls_and_registration() {
    let site = Site::new();
    site.write_config("");
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(site.config()).unwrap();
        std::fs::write(site.config(), text.replace(from, to)).unwrap();
    };
    edit(GOOD_SECRET, "short");
    site.expect("configuration", "fail", "auth.jwt_secret");
    // No secret at all: refused on a public address, a warning on loopback.
    edit("jwt_secret = \"short\"", "");
    site.expect("jwt_secret", "warn", "not set");
    edit("127.0.0.1:0", "0.0.0.0:0");
    site.expect("configuration", "fail", "reachable from other machines");
    // A public address with a secret: plain HTTP and open registration warn.
    site.write_config("");
    edit("127.0.0.1:0", "0.0.0.0:0");
    site.expect("jwt_secret", "pass", "set (35 bytes)");
    site.expect("tls", "warn", "plain HTTP on a public address");
    site.expect("registration", "warn", "open registration");

    // Certificates: expired, a week left, three weeks left, a stranger's key.
    let day = chrono::Duration::days(1);
    let now = chrono::Utc::now();
    for (from, until, status, needle) in [
        (now - day * 60, now - day * 2, "fail", "expired"),
        (now - day * 60, now + day * 3, "fail", "expires in"),
        (now - day * 60, now + day * 20, "warn", "expires in"),
        (now - day, now + day * 90, "pass", "matches its key"),
    ] {
        let (cert, key) = certificate(&site, from, until);
        site.write_config(&format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
        site.expect("tls", status, needle);
    }
    // A chain in the wrong order: the issuer first.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let stranger_ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let (chain, key) = (site.path("chain.pem"), site.path("leaf-key.pem"));
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    for (order, status, needle) in [
        ([leaf.pem(), ca.pem()], "pass", "matches its key"),
        ([ca.pem(), leaf.pem()], "fail", "does not belong"),
        ([leaf.pem(), stranger_ca.pem()], "fail", "is not signed by"),
    ] {
        std::fs::write(&chain, order.concat()).unwrap();
        site.write_config(&format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            chain.display(),
            key.display()
        ));
        site.expect("tls", status, needle);
    }
    let (cert, _) = certificate(&site, now - day, now + day * 90);
    let stranger = site.path("stranger.pem");
    std::fs::write(
        &stranger,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    site.write_config(&format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        stranger.display()
    ));
    site.expect("tls", "fail", "does not belong");
}

/// A self-signed certificate for localhost valid from `from` to `until`.
fn certificate(
    site: &Site,
    from: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
) -> (PathBuf, PathBuf) {
    use chrono::Datelike;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let ymd = |t: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8)
    };
    params.not_before = ymd(from);
    params.not_after = ymd(until);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let stamp = until.timestamp();
    let (cert_path, key_path) = (
        site.path(&format!("cert-{stamp}.pem")),
        site.path(&format!("key-{stamp}.pem")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn limits_logging_and_the_schedule() {
    let site = Site::new();
    site.write_config(
        "[limits]\nmessages_per_minute_per_user = 900\nmessages_per_minute_per_ip = 600\n",
    );
    site.expect("rate_limits", "warn", "can never be reached");
    site.write_config("");
    let (_, checks) = site.check_env(&[("RUST_LOG", "debug")]);
    assert_eq!(checks["logging"].0, "warn", "{:?}", checks["logging"]);
    assert!(checks["logging"].1.contains("RUST_LOG='debug'"));
    site.write_supervisor("restart_schedule = \"30 4 * * 1\"");
    let (_, checks) = site.check();
    let detail = &checks["restart_schedule"].1;
    assert_eq!(detail.matches("Mon ").count(), 3, "{detail}");
    assert!(detail.contains("04:30"), "{detail}");
    assert!(
        !detail.contains("daylight saving"),
        "UTC has none: {detail}"
    );
    // The 3 AM default, in a zone that changes its clocks at night.
    site.write_config("");
    let (_, checks) = site.check_env(&[("TZ", "Europe/Berlin")]);
    let detail = &checks["restart_schedule"].1;
    assert!(detail.contains("daylight saving"), "{detail}");
}

#[test]
fn the_machine_address_runtime_dir_worker_and_memory() {
    let site = Site::new();
    // A port some other program holds.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    site.write_config("");
    let with_port = |port: u16| {
        std::fs::write(
            site.config(),
            std::fs::read_to_string(site.config())
                .unwrap()
                .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        )
        .unwrap()
    };
    with_port(port);
    site.expect("bind_address", "fail", "in use by another program");
    drop(holder);
    site.expect("bind_address", "pass", "is free");

    // The runtime directory open to others.
    std::fs::create_dir_all(site.path("run")).unwrap();
    chmod(&site.path("run"), 0o755);
    site.write_config("");
    site.expect("runtime_dir", "fail", "chmod 700");
    chmod(&site.path("run"), 0o700);
    site.expect("runtime_dir", "pass", "0700");

    // A host already serving on the address: said so, not a failure.
    let port = free_port();
    let host = TestHost::start_with_config(&format!(
        "[server]\nbind = \"127.0.0.1:{port}\"\n[supervisor]\nruntime_dir = \"{}\"\n{}",
        site.path("run").display(),
        bots(&["helper"])
    ));
    with_port(port);
    site.expect("bind_address", "warn", "a bothost already running");
    drop(host);

    // Not a worker, and no worker at all.
    std::fs::write(
        site.config(),
        std::fs::read_to_string(site.config()).unwrap().replace(
            &bothost_testkit::binary_dir()
                .unwrap()
                .join("bot-worker")
                .display()
                .to_string(),
            "/bin/true",
        ),
    )
    .unwrap();
    site.expect("worker_binary", "fail", "is not a bot-worker");
    // A worker from another build, speaking another protocol.
    let old_worker = site.path("old-bot-worker");
    std::fs::write(&old_worker, "#!/bin/sh\necho 1\n").unwrap();
    chmod(&old_worker, 0o755);
    let text = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        text.replace("/bin/true", old_worker.to_str().unwrap()),
    )
    .unwrap();
    site.expect("worker_binary", "fail", "speaks protocol 1");

    // Budgets the machine cannot hold: one bot plus its handover need twice
    // its budget, here twice what is free, so memory freed between this
    // reading and the check's cannot turn the failure into a warning.
    let budget = sysinfo_available() / 1_000_000 + 1;
    site.write_supervisor(&format!("memory_budget = \"{budget}MB\""));
    site.expect("memory_headroom", "fail", "lower memory budgets");

    // The kernel ceiling the operator chose, whatever the machine allows.
    site.write_supervisor("memory_ceiling = \"rlimit\"");
    site.expect(
        "memory_ceiling",
        "warn",
        "rlimit: each worker's data segment",
    );
    site.write_supervisor("memory_ceiling = \"off\"");
    site.expect(
        "memory_ceiling",
        "warn",
        "supervisor.memory_ceiling is \"off\"",
    );
    site.write_supervisor("memory_ceiling = \"cgroups\"");
    site.expect("configuration", "fail", "memory_ceiling");
}

fn sysinfo_available() -> u64 {
    bothost::checks::available_memory().expect("available memory")
}

#[test]
fn model_servers_their_models_and_keys() {
    let site = Site::new();
    let fake = FakeServer::start("primary", &["--models", "llama3.2:latest"]);
    let remote = |url: &str, model: &str, key: &str| {
        format!(
            "[[inference]]\nname = \"primary\"\nurl = \"{url}\"\n{key}\n\
             [[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"{model}\"\n"
        )
    };
    site.write_config(&remote(&fake.url, "llama3.2", ""));
    site.expect("inference", "pass", "every bot's model present");
    site.expect("api_keys", "pass", "no model server needs");
    site.write_config(&remote(&fake.url, "mistral", ""));
    site.expect("inference", "fail", "model 'mistral' is on none");
    let down = format!("http://127.0.0.1:{}", free_port());
    site.write_config(&remote(&down, "llama3.2", ""));
    site.expect("inference", "fail", "has no model server up");
    site.write_config(&remote(
        &fake.url,
        "llama3.2",
        "api_key_env = \"BOTHOST_TEST_UNSET_KEY\"",
    ));
    site.expect("api_keys", "fail", "BOTHOST_TEST_UNSET_KEY");
}

#[test]
fn the_sqlite_database_migrations_and_admin() {
    let site = Site::new();
    site.expect("migrations", "pass", "current");
    // Created private: the file 0600 (its -wal and -shm follow it), the
    // directory 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let db = site.path("data/bothost.db");
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&site.path("data")), 0o700);
    site.expect("database", "pass", "readable by its owner only");
    chmod(&db, 0o644);
    site.expect("database", "warn", "chmod 600");
    chmod(&db, 0o600);
    // A newer build ran here.
    sqlite(
        &db,
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('29991231000000')",
    );
    site.expect("migrations", "fail", "29991231000000");
    sqlite(
        &db,
        "DELETE FROM __diesel_schema_migrations WHERE version = '29991231000000'",
    );
    sqlite(&db, "UPDATE users SET role = 'user'");
    site.expect("admin_user", "warn", "no admin user");
}

fn sqlite(db: &Path, sql: &str) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut conn = diesel::SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    conn.batch_execute(sql).unwrap();
}

#[test]
fn postgres_reachability_writability_and_pool() {
    let site = Site::new();
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    site.write_config(&format!(
        "[database]\nurl = \"{closed}\"\nconnect_timeout = \"1s\"\n"
    ));
    site.expect("database", "fail", "cannot reach database.url");
    let Some(base) = bothost_testkit::test_database_url() else {
        return;
    };
    let rt = runtime();
    let db = rt.block_on(PgDatabase::create(&base, "check")).unwrap();
    site.write_config(&format!("[database]\nurl = \"{}\"\n", db.url));
    site.cli_ok(&["migrate"]);
    site.expect("database", "pass", "PostgreSQL answers");
    site.expect("database_writable", "pass", "takes writes");
    site.expect("pool_size", "pass", "within the server's");
    site.write_config(&format!(
        "[database]\nurl = \"{}\"\npool_size = 20\npool_max = 5000\n",
        db.url
    ));
    site.expect("pool_size", "fail", "lower database.pool_max");
    rt.block_on(async {
        use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
        let mut admin = AsyncPgConnection::establish(&base).await.unwrap();
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                db.name
            ))
            .await
            .unwrap();
    });
    site.write_config(&format!("[database]\nurl = \"{}\"\n", db.url));
    site.expect("database_writable", "fail", "read_only");
    rt.block_on(db.drop_database()).unwrap();
}

#[test]
fn monitoring_receivers_playbooks_and_backups() {
    let site = Site::new();
    site.write_config("");
    // A receiver's secret readable by everyone, then gone.
    let slack = site.path("secrets/slack_webhook_url");
    chmod(&slack, 0o644);
    site.expect("alert_receivers", "fail", "world-readable");
    std::fs::remove_file(&slack).unwrap();
    site.expect("alert_receivers", "fail", "slack_webhook_url");

    // An alert whose playbook is missing.
    let playbook = site.path("playbooks/memory-leak.md");
    std::fs::remove_file(&playbook).unwrap();
    site.expect("playbooks", "fail", "memory-leak.md");

    // Broken Alertmanager configuration (amtool), when installed.
    if which("amtool") {
        let am = site.path("monitoring/alertmanager/alertmanager.yml");
        let text = std::fs::read_to_string(&am).unwrap();
        std::fs::write(&am, text.replace("receiver: slack", "receiver: nobody")).unwrap();
        site.expect("monitoring", "fail", "amtool rejects");
    }

    // Backups: damaged, then old, then none.
    let newest = bothost::backup::list(&site.path("data/backups"))
        .unwrap()
        .remove(0);
    let good = std::fs::read(&newest).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(&newest, &bad).unwrap();
    site.expect("backups", "fail", "fails verification");
    std::fs::write(&newest, &good).unwrap();
    let manifest_path = bothost::backup::manifest_of(&newest);
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["created_at"] = (chrono::Utc::now() - chrono::Duration::hours(3))
        .to_rfc3339()
        .into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    site.expect("backups", "fail", "3 h old");
    std::fs::remove_file(&manifest_path).unwrap();
    site.expect("backups", "warn", "no backup");
}

fn which(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
}

#[test]
fn serve_logs_what_the_quick_checks_warn_about() {
    let host = TestHost::start_with_config(&format!(
        "{}\n[auth]\njwt_secret = \"{GOOD_SECRET}\"\n{}",
        FAST_SUPERVISOR.replace("127.0.0.1:0", "0.0.0.0:0"),
        bots(&["helper"])
    ));
    let log = host.log();
    let warned = |check: &str, needle: &str| {
        log.lines().any(|l| {
            l.contains(&format!("\"check\":\"{check}\""))
                && l.contains(needle)
                && l.contains("WARN")
        })
    };
    assert!(warned("tls", "plain HTTP on a public address"), "{log}");
    assert!(warned("registration", "open registration"), "{log}");
    assert!(warned("backups", "no backup"), "{log}");
    assert!(
        !log.contains("\"check\":\"jwt_secret\""),
        "a set secret is not news: {log}"
    );
}
