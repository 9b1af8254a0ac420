//! `monitoring/` is real: Prometheus and Alertmanager load it, every alert
//! has a rule unit test, and a live Prometheus scraping a real host
//! evaluates every rule and every dashboard query and raises the memory and
//! degraded alerts for the right bots.
//!
//! The tools come from Debian (`prometheus`, `prometheus-alertmanager`;
//! `.ci/run` installs them). Without them these tests skip with a message,
//! except under `CI=true`, where they fail.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fake::free_port;
use common::{eventually, TestHost, FAST_SUPERVISOR};
use serde_json::{json, Value};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The tool's path, or `None` (skip) when it is not installed.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {name} is not installed (.ci/run installs it)");
        }
        eprintln!("{name} is not installed: skipping");
    }
    found
}

/// Runs a tool; panics with its output unless it succeeds. Returns stdout.
fn run(tool: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stdout}\n{}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn rule_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo("monitoring/prometheus/rules"))
        .expect("rules dir")
        .map(|e| e.expect("entry").path().display().to_string())
        .filter(|p| p.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = repo("monitoring/prometheus");
    run(&promtool, &["check", "config", "prometheus.yml"], &dir);
    let files = rule_files();
    let mut args = vec!["check", "rules"];
    args.extend(files.iter().map(String::as_str));
    run(&promtool, &args, &dir);
    let out = run(&promtool, &["test", "rules", "tests/alerts.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every alert in the rule files has a unit test that expects it to fire.
#[test]
fn every_alert_has_a_rule_test_that_fires_it() {
    let tests = std::fs::read_to_string(repo("monitoring/prometheus/tests/alerts.yml")).unwrap();
    let alerts = std::fs::read_to_string(repo("monitoring/prometheus/rules/alerts.yml")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 19, "{names:?}");
    for name in names {
        let firing = tests.split("- eval_time:").any(|check| {
            check.contains(&format!("alertname: {name}\n")) && check.contains("exp_labels:")
        });
        let silent = tests.split("- eval_time:").any(|check| {
            check.contains(&format!("alertname: {name}\n")) && check.contains("exp_alerts: []")
        });
        assert!(firing, "no rule test expects {name} to fire");
        assert!(
            silent,
            "no rule test expects {name} to stay silent (before its `for:`)"
        );
    }
}

#[test]
fn alertmanager_config_is_valid_and_routes_pages_and_tickets() {
    let Some(amtool) = tool("amtool") else {
        return;
    };
    let dir = repo("monitoring/alertmanager");
    run(&amtool, &["check-config", "alertmanager.yml"], &dir);
    let route = |labels: &[&str]| {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend(labels);
        run(&amtool, &args, &dir).trim().to_owned()
    };
    assert_eq!(
        route(&["severity=page", "alertname=BothostBotFailed", "bot=a"]),
        "pagerduty,slack"
    );
    assert_eq!(
        route(&[
            "severity=ticket",
            "alertname=BothostWorkerMemoryHigh",
            "bot=a"
        ]),
        "slack"
    );
    // An alert inhibited while its host is down still routes like a page
    // when it fires alone (the live test below shows the inhibition).
    assert_eq!(
        route(&["severity=page", "alertname=BothostDbPoolExhausted"]),
        "pagerduty,slack"
    );
}

/// A process killed when the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http() -> reqwest::blocking::Client {
    common::web::client()
}

/// A real Alertmanager with the shipped configuration (secrets in temp
/// files): a host that is down inhibits its bots' alerts, not another
/// host's.
#[test]
fn a_real_alertmanager_inhibits_a_bots_alert_while_its_host_is_down() {
    let Some(alertmanager) = tool("prometheus-alertmanager") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(
        secrets.join("slack_webhook_url"),
        "http://127.0.0.1:9/slack",
    )
    .unwrap();
    std::fs::write(secrets.join("pagerduty_routing_key"), "test-routing-key").unwrap();
    let shipped =
        std::fs::read_to_string(repo("monitoring/alertmanager/alertmanager.yml")).unwrap();
    let config = shipped
        .replace("/etc/alertmanager/secrets", &secrets.display().to_string())
        .replace(
            "templates/*.tmpl",
            &repo("monitoring/alertmanager/templates/*.tmpl")
                .display()
                .to_string(),
        );
    assert_ne!(config, shipped);
    std::fs::write(tmp.path().join("alertmanager.yml"), &config).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _am = Daemon(
        Command::new(alertmanager)
            .arg(format!(
                "--config.file={}",
                tmp.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start alertmanager"),
    );
    let c = http();
    eventually("alertmanager to be ready", Duration::from_secs(30), || {
        c.get(format!("{base}/-/ready"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
    })
    .unwrap();
    let alert = |name: &str, labels: Value| {
        let mut l = json!({"alertname": name, "severity": "page", "job": "bothost"});
        l.as_object_mut()
            .unwrap()
            .extend(labels.as_object().unwrap().clone());
        json!({"labels": l, "annotations": {"summary": name}})
    };
    let posted = c
        .post(format!("{base}/api/v2/alerts"))
        .json(&json!([
            alert("BothostDown", json!({"instance": "h1:8080"})),
            alert(
                "BothostBotFailed",
                json!({"instance": "h1:8080", "bot": "a"})
            ),
            alert(
                "BothostBotFailed",
                json!({"instance": "h2:8080", "bot": "a"})
            ),
        ]))
        .send()
        .unwrap();
    assert!(posted.status().is_success(), "{:?}", posted.text());
    // Alertmanager learns of an inhibiting alert asynchronously: a target
    // can be listed `active` for a moment after both were posted. Wait for
    // the suppression (a broken rule never gets there), then check all three.
    let mut seen = Vec::new();
    let states = eventually(
        "three alerts, the bot's on the down host suppressed",
        Duration::from_secs(10),
        || {
            let alerts: Vec<Value> = c
                .get(format!("{base}/api/v2/alerts"))
                .send()
                .ok()?
                .json()
                .ok()?;
            let states: Vec<(String, String, String)> = alerts
                .iter()
                .map(|a| {
                    (
                        a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                        a["labels"]["instance"].as_str().unwrap_or("").to_owned(),
                        a["status"]["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let suppressed = states.iter().any(|(n, i, s)| {
                (n.as_str(), i.as_str(), s.as_str())
                    == ("BothostBotFailed", "h1:8080", "suppressed")
            });
            seen.clone_from(&states);
            (states.len() == 3 && suppressed).then_some(states)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {seen:?}"));
    let state_of = |name: &str, instance: &str| {
        states
            .iter()
            .find(|(n, i, _)| n == name && i == instance)
            .map(|(_, _, s)| s.as_str())
    };
    assert_eq!(
        state_of("BothostDown", "h1:8080"),
        Some("active"),
        "{states:?}"
    );
    assert_eq!(
        state_of("BothostBotFailed", "h1:8080"),
        Some("suppressed"),
        "{states:?}"
    );
    assert_eq!(
        state_of("BothostBotFailed", "h2:8080"),
        Some("active"),
        "{states:?}"
    );
}

/// Every panel query of every dashboard, with the template variables set
/// as Grafana would set them for "All".
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(repo("monitoring/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let concrete = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".*")
                    .replace("$bot", ".*");
                queries.push((format!("{} / {}", dash["title"], panel["title"]), concrete));
            }
        }
    }
    queries
}

#[test]
fn dashboards_are_valid_provisioning_json_with_a_query_in_every_panel() {
    let dir = repo("monitoring/grafana/dashboards");
    let mut titles = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            titles.insert(dash["title"].to_string()),
            "{}",
            path.display()
        );
        assert!(uids.insert(dash["uid"].to_string()), "{}", path.display());
        let vars: Vec<&str> = dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(vars.contains(&"datasource"), "{}: {vars:?}", path.display());
        let mut ids = BTreeSet::new();
        for panel in dash["panels"].as_array().unwrap() {
            let what = format!("{} / {}", path.display(), panel["title"]);
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "duplicate id: {what}"
            );
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{what}");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "no query: {what}");
            for t in targets {
                assert!(!t["expr"].as_str().unwrap().trim().is_empty(), "{what}");
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{what}");
            }
            let uses_bot = targets
                .iter()
                .any(|t| t["expr"].as_str().unwrap().contains("$bot"));
            assert!(!uses_bot || vars.contains(&"bot"), "{what} uses $bot");
        }
    }
    assert_eq!(
        uids.len(),
        4,
        "Overview, Bots & memory, Chat & latency, Database & inference"
    );
}

/// The `bothost` metric and recording-rule names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("bothost") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // `job="bothost"` is a label value, not a name.
        if name.starts_with("bothost_") || name.starts_with("bothost:") {
            names.push(name.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Runs `query` on Prometheus; the result vector (panics if it does not
/// parse).
fn query(c: &reqwest::blocking::Client, prom: &str, query: &str) -> Vec<Value> {
    let res: Value = c
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .expect("query Prometheus")
        .json()
        .expect("JSON answer");
    assert_eq!(res["status"], "success", "{query}: {res}");
    res["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_live_prometheus_evaluates_every_query_and_raises_the_memory_and_degraded_alerts() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    // A host with a healthy bot, a bot that leaks 1 MB a turn against a
    // 20 MB budget, and a bot whose two model servers are not there.
    let (down1, down2) = (free_port(), free_port());
    let host = TestHost::start_with_config(&format!(
        "{FAST_SUPERVISOR}
[[inference]]
name = \"gone1\"
url = \"http://127.0.0.1:{down1}\"
health_interval_down = \"1s\"
[[inference]]
name = \"gone2\"
url = \"http://127.0.0.1:{down2}\"
health_interval_down = \"1s\"

[[bots]]
name = \"healthy\"
[bots.builtin]
token_delay = \"0s\"

[[bots]]
name = \"leaky\"
memory_budget = \"20MB\"
[bots.builtin]
token_delay = \"0s\"
leak_per_message = \"1MB\"

[[bots]]
name = \"remote\"
engine = \"ollama\"
model = \"m\"
"
    ));
    for i in 0..5 {
        let (ok, out, err) = host.chat("healthy", &format!("hello {i}"));
        assert!(ok, "{out}{err}");
    }
    // One megabyte at a time, each time waiting for the next reading, so
    // it stops between 80 % and the budget (where it would be replaced).
    let rss = || host.bot("leaky").rss_bytes;
    let budget = host.bot("leaky").budget_bytes as f64;
    let mut last = host.wait_for("a first reading", Duration::from_secs(10), rss);
    while (last as f64) < 0.82 * budget {
        let (ok, out, err) = host.chat("leaky", "leak a little");
        assert!(ok, "{out}{err}");
        last = host.wait_for("the leak to show", Duration::from_secs(10), || {
            rss().filter(|&r| r > last)
        });
    }
    assert!((last as f64) < budget, "overshot the budget: {last}");

    // Prometheus with the shipped configuration, pointed at this host and
    // sped up from 15 s to 1 s.
    let tmp = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo("monitoring/prometheus/prometheus.yml")).unwrap();
    let rules = repo("monitoring/prometheus/rules/*.yml");
    let config = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("rules/*.yml", &rules.display().to_string())
        .replace("127.0.0.1:8080", host.addr());
    for (from, what) in [
        ("15s", "intervals"),
        ("- rules/", "rule files"),
        ("8080", "target"),
    ] {
        assert!(
            !config.contains(from),
            "the {what} were not rewritten:\n{config}"
        );
    }
    std::fs::write(tmp.path().join("prometheus.yml"), &config).unwrap();
    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let _prometheus = Daemon(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                tmp.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    let c = http();
    eventually("the host scraped", Duration::from_secs(60), || {
        let r = c
            .get(format!("{prom}/api/v1/query"))
            .query(&[("query", "up{job=\"bothost\"} == 1")])
            .send()
            .ok()?
            .json::<Value>()
            .ok()?;
        r["data"]["result"]
            .as_array()
            .filter(|v| !v.is_empty())
            .map(drop)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; prometheus log:\n{}",
            std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default()
        )
    });

    // Every rule Prometheus loaded from the files: as shipped (a severity,
    // words for people, a playbook), and its expression evaluates.
    let groups: Value = c
        .get(format!("{prom}/api/v1/rules"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let rules: Vec<Value> = groups["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    let alerts: Vec<&Value> = rules.iter().filter(|r| r["type"] == "alerting").collect();
    assert!(alerts.len() >= 19, "{} alerting rules loaded", alerts.len());
    for rule in &rules {
        assert_ne!(rule["health"], "err", "{rule}");
        query(&c, &prom, rule["query"].as_str().unwrap());
    }
    for alert in &alerts {
        let name = &alert["name"];
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            matches!(severity, "page" | "ticket"),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            assert!(
                alert["annotations"][key]
                    .as_str()
                    .is_some_and(|s| s.len() > 10),
                "{name}: {key}"
            );
        }
        let runbook = alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let file = runbook
            .strip_prefix("playbooks/")
            .and_then(|f| f.strip_suffix(".md"));
        assert!(
            file.is_some_and(
                |f| !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            ),
            "{name}: runbook_url {runbook:?} is not a playbooks/*.md file"
        );
    }

    // No typo in a metric name: every series a rule reads exists on this
    // host, and every recording rule it reads is defined.
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r["type"] == "recording")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let exported: BTreeSet<String> = rules
        .iter()
        .flat_map(|r| metric_names(r["query"].as_str().unwrap()))
        .collect();
    for name in &exported {
        if name.contains(':') {
            assert!(
                recorded.contains(name.as_str()),
                "{name} is read but never recorded"
            );
        } else {
            eventually(&format!("series {name}"), Duration::from_secs(30), || {
                (!query(&c, &prom, name).is_empty()).then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}: a rule reads {name}, which the host does not export"));
        }
    }

    // Every dashboard query returns data from this host.
    for (panel, expr) in dashboard_queries() {
        eventually(
            &format!("data for {panel}"),
            Duration::from_secs(30),
            || (!query(&c, &prom, &expr).is_empty()).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}: {expr}"));
    }

    // The memory alert for the leaky bot (only), the degraded and
    // all-endpoints-down alerts for the remote bot (only).
    let active = |alert: &str, bot: &str| {
        let alerts: Value = c
            .get(format!("{prom}/api/v1/alerts"))
            .send()
            .ok()?
            .json()
            .ok()?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == alert
                    && a["labels"]["bot"] == bot
                    && matches!(a["state"].as_str(), Some("pending" | "firing"))
            })
            .map(drop)
    };
    for (alert, bot) in [
        ("BothostWorkerMemoryHigh", "leaky"),
        ("BothostBotDegraded", "remote"),
        ("BothostBotInferenceAllDown", "remote"),
    ] {
        eventually(
            &format!("{alert} for {bot}"),
            Duration::from_secs(30),
            || active(alert, bot),
        )
        .unwrap();
    }
    assert!(active("BothostWorkerMemoryHigh", "healthy").is_none());
    assert!(active("BothostBotDegraded", "healthy").is_none());
}
