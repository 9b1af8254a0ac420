//! The configuration as an operator meets it: defaults, errors that name
//! the key, environment overrides, the shipped files.

use std::path::Path;
use std::time::Duration;

use bot_worker::EngineSpec;
use bytesize::ByteSize;
use secrecy::ExposeSecret;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/bothost/supervisor.toml"), Vec::new())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const ONE_BOT: &str = "[[bots]]\nname = \"helper\"\n";

const TWO_ENDPOINTS: &str = "[[inference]]\nname = \"primary\"\nurl = \"http://127.0.0.1:11434\"\n\
     [[inference]]\nname = \"vllm\"\nkind = \"openai\"\nurl = \"http://10.0.0.2:8000/v1\"\n\
     api_key_env = \"VLLM_KEY\"\n";

#[test]
fn remote_bots_get_their_endpoints_in_order_with_their_timeouts() {
    let c = parse(&format!(
        "{TWO_ENDPOINTS}[[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n\
         temperature = 0.2\nkeep_alive = \"5m\"\n\
         [[bots]]\nname = \"qwen\"\nengine = \"openai\"\nmodel = \"qwen\"\ninference = [\"vllm\"]\n"
    ))
    .unwrap();
    let EngineSpec::Ollama(llama) = c.spec_of(&c.bots[0]).engine else {
        panic!("an ollama spec")
    };
    assert_eq!(llama.endpoints.len(), 1, "only endpoints of its kind");
    assert_eq!(llama.endpoints[0].name, "primary");
    assert_eq!(llama.endpoints[0].first_token_timeout_ms, 60_000);
    assert_eq!(
        (llama.temperature, llama.keep_alive.as_deref()),
        (Some(0.2), Some("5m"))
    );
    let EngineSpec::Openai(qwen) = c.spec_of(&c.bots[1]).engine else {
        panic!("an openai spec")
    };
    assert_eq!(qwen.endpoints[0].api_key_env.as_deref(), Some("VLLM_KEY"));
    assert_eq!(c.inference[0].health_interval, Duration::from_secs(60));
}

#[test]
fn bad_inference_settings_are_named() {
    for (text, expected) in [
        (
            "[[bots]]\nname = \"a\"\nengine = \"ollama\"\nmodel = \"m\"\n".to_owned(),
            "bots[0].engine: no [[inference]] endpoint of kind \"ollama\" is configured",
        ),
        (
            format!("{TWO_ENDPOINTS}[[bots]]\nname = \"a\"\nengine = \"ollama\"\n"),
            "bots[0].model: an ollama bot needs the model",
        ),
        (
            format!("{TWO_ENDPOINTS}[[bots]]\nname = \"a\"\nengine = \"ollama\"\nmodel = \"m\"\ninference = [\"vllm\"]\n"),
            "bots[0].inference: endpoint 'vllm' speaks openai, the bot's engine is ollama",
        ),
        (
            format!("{TWO_ENDPOINTS}[[bots]]\nname = \"a\"\nengine = \"ollama\"\nmodel = \"m\"\ninference = [\"nope\"]\n"),
            "bots[0].inference: no [[inference]] endpoint is named 'nope'",
        ),
        (
            format!("[[inference]]\nname = \"p\"\nurl = \"127.0.0.1:11434\"\n{ONE_BOT}"),
            "inference[0].url: '127.0.0.1:11434' is not an http:// or https:// URL",
        ),
        (
            format!("{TWO_ENDPOINTS}[[inference]]\nname = \"primary\"\nurl = \"http://h\"\n{ONE_BOT}"),
            "inference[2].name: duplicate endpoint name 'primary'",
        ),
        (
            format!("[[inference]]\nname = \"p\"\nurl = \"http://h\"\nkind = \"llamafile\"\n{ONE_BOT}"),
            "inference[0].kind: unknown variant `llamafile`",
        ),
    ] {
        let e = err(&text);
        assert!(e.contains(expected), "{e}\n  expected: {expected}");
    }
}

#[test]
fn signing_secrets_must_be_long_and_not_an_example_and_set_on_a_public_bind() {
    for (text, needle) in [
        ("[auth]\njwt_secret = \"short\"\n", "at least 32"),
        (
            "[auth]\njwt_secret = \"please-change-me-please-change-me-now\"\n",
            "example value",
        ),
        (
            "[auth]\njwt_secret = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
            "one character",
        ),
        (
            "[server]\nbind = \"0.0.0.0:8080\"\n",
            "reachable from other machines",
        ),
    ] {
        let e = err(&format!("{text}[[bots]]\nname = \"a\"\n"));
        assert!(e.contains("auth.jwt_secret: "), "{e}");
        assert!(e.contains(needle), "{e}");
    }
    parse(
        "[server]\nbind = \"0.0.0.0:8080\"\n[auth]\njwt_secret = \"q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1\"\n\
         [[bots]]\nname = \"a\"\n",
    )
    .expect("a long random secret on a public bind");
    parse("[[bots]]\nname = \"a\"\n").expect("no secret on loopback: a random one per start");
}

#[test]
fn absurd_and_zero_values_are_refused_naming_the_key() {
    for (text, key, needle) in [
        (
            "[supervisor]\ndrain_timeout = \"500000000000y\"\n",
            "supervisor.drain_timeout",
            "longer than a year",
        ),
        (
            "[server]\nws_heartbeat = \"0s\"\n",
            "server.ws_heartbeat",
            "greater than 0",
        ),
        (
            "[server]\nrequest_header_timeout = \"0s\"\n",
            "server.request_header_timeout",
            "greater than 0",
        ),
        (
            "[limits]\nmax_body = \"0B\"\n",
            "limits.max_body",
            "greater than 0",
        ),
        (
            "[limits]\nmax_ws_frame = \"0B\"\n",
            "limits.max_ws_frame",
            "greater than 0",
        ),
        (
            "[limits]\nmax_message_chars = 0\n",
            "limits.max_message_chars",
            "at least 1",
        ),
    ] {
        let e = err(&format!("{text}{ONE_BOT}"));
        assert!(e.contains(&format!("{key}: ")), "{e}");
        assert!(e.contains(needle), "{e}");
    }
    let many: String = (0..=MAX_BOTS)
        .map(|i| format!("[[bots]]\nname = \"b{i}\"\n"))
        .collect();
    let e = err(&many);
    assert!(e.contains("bots: ") && e.contains("at most 256"), "{e}");
}

#[test]
fn an_empty_secret_in_the_environment_does_not_replace_the_files() {
    let file =
        "[auth]\njwt_secret = \"q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1\"\n[[bots]]\nname = \"a\"\n";
    let env = vec![("BOTHOST_JWT_SECRET".to_owned(), String::new())];
    let c = Config::parse(file, Path::new("x.toml"), env).unwrap();
    assert_eq!(
        c.auth.jwt_secret.expose_secret(),
        "q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1"
    );
}

#[test]
fn every_key_has_a_default_but_the_bot_name() {
    let c = parse(ONE_BOT).unwrap();
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(c.supervisor.memory_budget, ByteSize::mb(125));
    assert_eq!(c.budget_of(&c.bots[0]), ByteSize::mb(125));
    assert_eq!(c.bots[0].builtin.token_delay, Duration::from_millis(20));
    assert_eq!(c.runtime_dir(), Path::new("/etc/bothost/data/run"));
}

#[test]
fn durations_and_sizes_read_like_people_write_them() {
    let c = parse(
        "[supervisor]\nsample_interval = \"250ms\"\nmemory_budget = \"64MiB\"\n\
         [[bots]]\nname = \"a\"\nmemory_budget = \"10MB\"\n[bots.builtin]\ntoken_delay = \"0s\"\n",
    )
    .unwrap();
    assert_eq!(c.supervisor.sample_interval, Duration::from_millis(250));
    assert_eq!(c.supervisor.memory_budget, ByteSize::mib(64));
    assert_eq!(c.budget_of(&c.bots[0]), ByteSize::mb(10));
    assert_eq!(c.bots[0].builtin.token_delay, Duration::ZERO);
}

#[test]
fn unknown_key_is_named_with_its_section() {
    let e = err("[supervisor]\nsample_intervall = \"5s\"\n[[bots]]\nname = \"a\"\n");
    assert!(e.starts_with("/etc/bothost/supervisor.toml: supervisor.sample_intervall: unknown field `sample_intervall`, expected one of `sample_interval`"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn unknown_key_in_a_bot_names_the_bot_index() {
    let e = err("[[bots]]\nname = \"a\"\n[[bots]]\nname = \"b\"\n[bots.builtin]\nspeed = 3\n");
    assert!(
        e.contains("bots[1].builtin.speed: unknown field `speed`"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_key_and_reason() {
    let e = err("[supervisor]\nsample_interval = \"fast\"\n[[bots]]\nname = \"a\"\n");
    assert!(e.contains("supervisor.sample_interval: "), "{e}");
}

#[test]
fn bad_size_names_key_and_reason() {
    let e = err("[[bots]]\nname = \"a\"\nmemory_budget = \"lots\"\n");
    assert!(e.contains("bots[0].memory_budget: "), "{e}");
}

#[test]
fn duplicate_bot_names_are_refused() {
    let e = err("[[bots]]\nname = \"a\"\n[[bots]]\nname = \"a\"\n");
    assert!(e.ends_with("bots[1].name: duplicate bot name 'a'"), "{e}");
}

#[test]
fn impossible_values_are_refused() {
    let cases = [
        (
            "[supervisor]\nheartbeat_timeout = \"1s\"\nheartbeat_interval = \"2s\"\n",
            "supervisor.heartbeat_timeout",
        ),
        ("[supervisor]\ncrash_limit = 0\n", "supervisor.crash_limit"),
        (
            "[supervisor]\nmemory_budget = \"10KB\"\n",
            "supervisor.memory_budget",
        ),
        (
            "[supervisor]\nbackoff_initial = \"1m\"\nbackoff_max = \"1s\"\n",
            "supervisor.backoff_initial",
        ),
        (
            "[supervisor]\nmemory_warn_ratio = 1.5\n",
            "supervisor.memory_warn_ratio",
        ),
        (
            "[supervisor]\nover_budget_samples = 0\n",
            "supervisor.over_budget_samples",
        ),
    ];
    for (text, key) in cases {
        let e = err(&format!("{text}[[bots]]\nname = \"a\"\n"));
        assert!(e.contains(&format!("{key}: ")), "{key}: {e}");
    }
    let e = err("[[bots]]\nname = \"a\"\n[bots.builtin]\nfail_rate = 1.5\n");
    assert!(
        e.contains("bots[0].builtin.fail_rate: 1.5 is outside 0.0 to 1.0"),
        "{e}"
    );
}

#[test]
fn the_database_url_picks_the_backend_and_anchors_sqlite_paths() {
    let c = parse(ONE_BOT).unwrap();
    assert!(matches!(
        c.database_target().unwrap(),
        DatabaseTarget::Sqlite(p) if p == Path::new("/etc/bothost/data/bothost.db")
    ));
    let c = parse(&format!(
        "[database]\nurl = \"sqlite:///var/lib/b.db\"\n{ONE_BOT}"
    ))
    .unwrap();
    assert!(matches!(
        c.database_target().unwrap(),
        DatabaseTarget::Sqlite(p) if p == Path::new("/var/lib/b.db")
    ));
    let e = err(&format!("[database]\nurl = \"mysql://x\"\n{ONE_BOT}"));
    assert!(
        e.contains("database.url: must start with postgres://"),
        "{e}"
    );
    let e = err(&format!(
        "[database]\nurl = \"sqlite://:memory:\"\n{ONE_BOT}"
    ));
    assert!(
        e.contains("database.url: an SQLite database needs a file path"),
        "{e}"
    );
    let e = err(&format!(
        "[database]\npool_size = 20\npool_max = 10\n{ONE_BOT}"
    ));
    assert!(
        e.contains("database.pool_max: 10 is below database.pool_size (20)"),
        "{e}"
    );
}

#[test]
fn the_database_url_comes_from_the_environment_and_never_prints() {
    let env = vec![(
        "BOTHOST_DATABASE_URL".to_owned(),
        "postgres://app:hunter2@db/bothost".to_owned(),
    )];
    let c = Config::parse(ONE_BOT, Path::new("x.toml"), env).unwrap();
    let DatabaseTarget::Postgres(url) = c.database_target().unwrap() else {
        panic!("postgres expected");
    };
    assert_eq!(url.expose_secret(), "postgres://app:hunter2@db/bothost");
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn the_restart_schedule_is_checked_at_load() {
    let e = err(&format!(
        "[supervisor]\nrestart_schedule = \"at three\"\n{ONE_BOT}"
    ));
    assert!(
        e.contains("supervisor.restart_schedule: 'at three' is not a cron expression"),
        "{e}"
    );
    let e = err(&format!(
        "[supervisor]\nrestart_schedule = \"0 25 * * *\"\n{ONE_BOT}"
    ));
    assert!(e.contains("supervisor.restart_schedule: "), "{e}");
    let c = parse(&format!(
        "[supervisor]\nrestart_schedule = \"off\"\n{ONE_BOT}"
    ))
    .unwrap();
    assert!(c.restart_schedule().unwrap().is_none());
    let c = parse(&format!(
        "[supervisor]\nrestart_schedule = \"*/5 * * * * *\"\n{ONE_BOT}"
    ))
    .unwrap();
    assert!(c.restart_schedule().unwrap().is_some());
    assert!(parse(ONE_BOT)
        .unwrap()
        .restart_schedule()
        .unwrap()
        .is_some());
}

#[test]
fn the_leak_window_must_hold_enough_readings() {
    let e = err(&format!(
        "[supervisor]\nsample_interval = \"5s\"\nleak_window = \"20s\"\n{ONE_BOT}"
    ));
    assert!(
        e.contains("supervisor.leak_window: must hold at least 10 readings: 50s or more"),
        "{e}"
    );
}

#[test]
fn bad_bot_names_are_refused() {
    for name in ["", "Has Caps", "../escape", "-lead", &"x".repeat(33)] {
        let e = err(&format!("[[bots]]\nname = \"{name}\"\n"));
        assert!(e.contains("bots[0].name: "), "{name}: {e}");
    }
}

#[test]
fn no_bots_is_refused() {
    assert!(err("").ends_with("bots: at least one [[bots]] entry is required"));
}

#[test]
fn unknown_engine_is_refused() {
    let e = err("[[bots]]\nname = \"a\"\nengine = \"gpt\"\n");
    assert!(e.contains("bots[0].engine: unknown variant `gpt`"), "{e}");
}

#[test]
fn syntax_error_names_the_file_and_line() {
    let e = err("[[bots]\nname = \"a\"\n");
    assert!(e.starts_with("/etc/bothost/supervisor.toml: "), "{e}");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn long_runtime_dir_is_refused_before_a_socket_fails_to_bind() {
    let e = err(&format!(
        "[supervisor]\nruntime_dir = \"/{}\"\n{ONE_BOT}",
        "d".repeat(90)
    ));
    assert!(e.contains("supervisor.runtime_dir: "), "{e}");
}

#[test]
fn environment_overrides_the_file() {
    let env = vec![
        ("BOTHOST_SERVER__BIND".to_owned(), "0.0.0.0:9000".to_owned()),
        (
            "BOTHOST_JWT_SECRET".to_owned(),
            "q8Zr1pX0vN4mK7tL2sB9wY6cH3jD5fG0aE1".to_owned(),
        ),
        ("BOTHOST_SUPERVISOR__CRASH_LIMIT".to_owned(), "9".to_owned()),
        (
            "BOTHOST_CONFIG".to_owned(),
            "ignored: not an override".to_owned(),
        ),
        ("PATH".to_owned(), "/bin".to_owned()),
    ];
    let c = Config::parse(ONE_BOT, Path::new("x.toml"), env).unwrap();
    assert_eq!(c.server.bind.to_string(), "0.0.0.0:9000");
    assert_eq!(c.supervisor.crash_limit, 9);
}

#[test]
fn environment_override_with_a_typo_is_an_unknown_key() {
    let env = vec![("BOTHOST_SERVER__BINDD".to_owned(), "x".to_owned())];
    let e = Config::parse(ONE_BOT, Path::new("x.toml"), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.bindd: unknown field `bindd`"), "{e}");
}

#[test]
fn shipped_config_is_valid() {
    let text = include_str!("../../supervisor.toml");
    let c = Config::parse(text, Path::new("supervisor.toml"), Vec::new()).unwrap();
    assert_eq!(c.bots.len(), 5);
    assert!(c.bots.iter().all(|b| b.engine == EngineKind::Builtin));
}

#[test]
fn the_shipped_inference_example_is_valid_once_uncommented() {
    let text = include_str!("../../supervisor.toml");
    let start = text.find("# [[inference]]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let example: String = text[start..end]
        .lines()
        .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
        .collect();
    let uncommented = format!("{}{example}{}", &text[..start], &text[end..]);
    let c = Config::parse(&uncommented, Path::new("supervisor.toml"), Vec::new()).unwrap();
    assert_eq!(c.inference.len(), 2);
    assert_eq!(c.inference[0].command, ["ollama", "serve"]);
    let llama = c.bots.iter().find(|b| b.name == "llama").unwrap();
    assert_eq!(c.endpoints_of(llama).len(), 2);
}

#[test]
fn memory_is_counted_as_rss_unless_pss_is_asked_for() {
    assert_eq!(
        parse(ONE_BOT).unwrap().supervisor.memory_measure,
        MemoryMeasure::Rss
    );
    let c = parse(&format!(
        "[supervisor]\nmemory_measure = \"pss\"\n{ONE_BOT}"
    ))
    .unwrap();
    assert_eq!(c.supervisor.memory_measure, MemoryMeasure::Pss);
    let e = err(&format!(
        "[supervisor]\nmemory_measure = \"vss\"\n{ONE_BOT}"
    ));
    assert!(e.contains("supervisor.memory_measure"), "{e}");
}

#[test]
fn chat_writes_commit_async_unless_sync_is_asked_for() {
    let c = parse(ONE_BOT).unwrap();
    assert_eq!(c.database.chat_commit, ChatCommit::Async);
    assert_eq!(c.database.chat_commit.synchronous_commit(), "off");
    let c = parse(&format!("[database]\nchat_commit = \"sync\"\n{ONE_BOT}")).unwrap();
    assert_eq!(c.database.chat_commit.synchronous_commit(), "on");
    let e = err(&format!("[database]\nchat_commit = \"later\"\n{ONE_BOT}"));
    assert!(
        e.contains("database.chat_commit: unknown variant `later`"),
        "{e}"
    );
}

mod fuzz {
    //! The loader under arbitrary operator input: any value of any type for
    //! the keys that take numbers, durations and sizes, and any text at
    //! all. It answers a config or an error naming the problem; it never
    //! panics, and a config it accepts derives every worker's spec.

    use proptest::prelude::*;

    use super::*;

    const KEYS: &[(&str, &str)] = &[
        ("server", "ws_heartbeat"),
        ("server", "ws_timeout"),
        ("server", "request_header_timeout"),
        ("supervisor", "sample_interval"),
        ("supervisor", "memory_budget"),
        ("supervisor", "heartbeat_interval"),
        ("supervisor", "heartbeat_timeout"),
        ("supervisor", "start_timeout"),
        ("supervisor", "drain_timeout"),
        ("supervisor", "turn_idle_timeout"),
        ("supervisor", "backoff_initial"),
        ("supervisor", "backoff_max"),
        ("supervisor", "crash_limit"),
        ("supervisor", "leak_window"),
        ("supervisor", "memory_warn_ratio"),
        ("supervisor", "restart_schedule"),
        ("limits", "max_body"),
        ("limits", "max_ws_frame"),
        ("limits", "max_message_chars"),
        ("limits", "messages_per_minute_per_user"),
        ("limits", "websockets_per_ip"),
        ("auth", "token_ttl"),
        ("database", "pool_size"),
        ("database", "pool_max"),
        ("backup", "schedule"),
        ("backup", "keep"),
    ];

    fn value() -> impl Strategy<Value = String> {
        let unit = prop_oneof![
            Just(""),
            Just("ms"),
            Just("s"),
            Just("m"),
            Just("h"),
            Just("d"),
            Just("y"),
            Just("ns"),
            Just("B"),
            Just("KB"),
            Just("MiB"),
            Just("GB"),
            Just("EB"),
        ];
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("TOML floats", |f| f.is_finite())
                .prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("\"{n}{u}\"")),
            (0u32..100_000, unit).prop_map(|(n, u)| format!("\"{n}{u}\"")),
            // Printable ASCII but the quote and the backslash.
            "[ !#-\\[\\]-~]{0,16}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    fn config_text() -> impl Strategy<Value = String> {
        proptest::collection::btree_map(0..KEYS.len(), value(), 0..6).prop_map(|pairs| {
            // One table per section, each key once: what TOML allows.
            let mut sections: std::collections::BTreeMap<&str, String> = Default::default();
            for (i, v) in pairs {
                let (section, key) = KEYS[i];
                sections
                    .entry(section)
                    .or_default()
                    .push_str(&format!("{key} = {v}\n"));
            }
            let mut text: String = sections
                .into_iter()
                .map(|(section, keys)| format!("[{section}]\n{keys}"))
                .collect();
            text.push_str(ONE_BOT);
            text
        })
    }

    fn accepted_is_usable(config: &Config) {
        for bot in &config.bots {
            let _ = config.spec_of(bot);
            let _ = config.memory_policy(bot);
            let _ = config.budget_of(bot);
        }
        let _ = config.restart_schedule();
        let _ = config.backup_schedule();
        let _ = config.database_target();
    }

    proptest! {
        #[test]
        fn any_value_for_any_key_loads_or_names_the_key(text in config_text()) {
            match parse(&text) {
                Ok(config) => accepted_is_usable(&config),
                Err(ConfigError::Invalid { key, .. }) => {
                    // The key at fault, or a rule about the keys' relation.
                    prop_assert!(
                        KEYS.iter().any(|(s, k)| key == format!("{s}.{k}"))
                            || key.starts_with("inference") || key == "bots",
                        "{}: {}", key, text
                    );
                }
                Err(e) => prop_assert!(false, "not a key error: {} for {}", e, text),
            }
        }

        #[test]
        fn any_text_loads_or_fails_cleanly(text in "(?s).{0,300}") {
            if let Ok(config) = parse(&text) {
                accepted_is_usable(&config);
            }
        }
    }
}
