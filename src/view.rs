//! How a status report reads on a terminal: the `bothost status` table and
//! the `bothost top` frame. Plain functions from a report to text, so unit
//! tests read exactly what an operator sees; no I/O here.

use std::fmt::Write as _;

use crate::status::{BotStatus, EndpointStatus, StatusReport};

/// Width of the memory bar in `top`, in characters.
const BAR: usize = 25;

fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().si().to_string()
}

/// "name (kind): up (3 models), supervised pid 42, 0 restarts".
fn endpoint_line(e: &EndpointStatus) -> String {
    let state = match (e.checked, e.up) {
        (false, _) => "unchecked".to_owned(),
        (true, true) => format!("up ({} models)", e.models.len()),
        (true, false) => format!("down: {}", e.error.as_deref().unwrap_or("")),
    };
    let supervised = e
        .pid
        .map(|pid| format!(", supervised pid {pid}, {} restarts", e.restarts))
        .unwrap_or_default();
    format!("{} ({}): {state}{supervised}", e.name, e.kind.as_str())
}

pub fn status_table(report: &StatusReport) -> String {
    let dash = || "-".to_owned();
    let row = |cells: [String; 10]| {
        format!(
            "{:<20} {:<10} {:>8} {:>4} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9]
        )
    };
    let mut out = row([
        "BOT",
        "STATE",
        "PID",
        "GEN",
        "RSS",
        "BUDGET",
        "LEAK/S",
        "UPTIME",
        "RESTARTS",
        "IN-FLIGHT",
    ]
    .map(str::to_owned));
    for b in &report.bots {
        let warn = if b.memory_warning { " !" } else { "" };
        out.push_str(&row([
            b.name.clone(),
            b.state.as_str().to_owned(),
            b.pid.map_or_else(dash, |p| p.to_string()),
            b.generation.to_string(),
            b.rss_bytes
                .map_or_else(dash, |r| format!("{}{warn}", size(r))),
            size(b.budget_bytes),
            size(b.leak_slope_bytes_per_second.max(0.0) as u64),
            b.uptime_seconds.map_or_else(dash, |s| {
                humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
            }),
            b.restarts.to_string(),
            b.in_flight.to_string(),
        ]));
        if let Some(g) = b.pending_generation {
            out.push_str(&format!("{:<20} handing over to generation {g}\n", ""));
        }
        if let Some(secs) = b.retry_in_seconds {
            out.push_str(&format!(
                "{:<20} failed: tried again by itself in {}\n",
                "",
                humantime::format_duration(std::time::Duration::from_secs(secs))
            ));
        }
        if let Some(why) = &b.last_failure {
            out.push_str(&format!("{:<20} last failure: {why}\n", ""));
        }
        if b.model_present == Some(false) {
            out.push_str(&format!(
                "{:<20} model {} is on none of its model servers that are up\n",
                "", b.model
            ));
        }
    }
    if let Some(rss) = report.host_rss_bytes {
        out.push_str(&format!("host RSS {}\n", size(rss)));
    }
    if !report.memory_enforcement.is_empty() {
        out.push_str(&format!("memory ceiling: {}\n", report.memory_enforcement));
    }
    for e in &report.inference {
        out.push_str(&format!("inference {}\n", endpoint_line(e)));
    }
    out
}

/// `[######.....|.....]`: RSS against the budget, `|` at the warning line.
pub fn memory_bar(rss: Option<u64>, budget: u64, warn_ratio: f64) -> String {
    let share = |x: f64| ((x * BAR as f64).round().max(0.0) as usize).min(BAR);
    let filled = rss.map_or(0, |r| share(r as f64 / budget.max(1) as f64));
    let warn = share(warn_ratio).min(BAR - 1);
    let bar: String = (0..BAR)
        .map(|i| match i {
            _ if i == warn => '|',
            _ if i < filled => '#',
            _ => '.',
        })
        .collect();
    format!("[{bar}]")
}

/// One frame of `bothost top`: every bot with a memory bar, then every
/// inference endpoint. `warn_ratio` places the warning line on the bars.
pub fn top_frame(report: &StatusReport, warn_ratio: f64, clock: &str) -> String {
    let mut out = String::new();
    let host = report.host_rss_bytes.map_or_else(|| "-".to_owned(), size);
    let _ = writeln!(
        out,
        "bothost top · {} bots · host RSS {host} · {clock} · q quits",
        report.bots.len()
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:<10} {:>4}  {:<27} {:>20}  {:>10} {:>8} {:>9}",
        "BOT",
        "STATE",
        "GEN",
        "MEMORY (| = warn line)",
        "RSS / BUDGET",
        "LEAK/S",
        "RESTARTS",
        "IN-FLIGHT"
    );
    for b in &report.bots {
        let _ = writeln!(out, "{}", top_row(b, warn_ratio));
    }
    if !report.inference.is_empty() {
        let _ = writeln!(out, "\nINFERENCE ENDPOINTS");
        for e in &report.inference {
            let _ = writeln!(out, "  {}", endpoint_line(e));
        }
    }
    out
}

fn top_row(b: &BotStatus, warn_ratio: f64) -> String {
    let rss = b.rss_bytes.map_or_else(|| "-".to_owned(), size);
    let warn = if b.memory_warning { "!" } else { " " };
    format!(
        "{:<16} {:<10} {:>4}  {} {:>20}{warn} {:>10} {:>8} {:>9}",
        b.name,
        b.state.as_str(),
        b.generation,
        memory_bar(b.rss_bytes, b.budget_bytes, warn_ratio),
        format!("{rss} / {}", size(b.budget_bytes)),
        size(b.leak_slope_bytes_per_second.max(0.0) as u64),
        b.restarts,
        b.in_flight,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InferenceKind;
    use crate::status::BotState;

    fn bot(name: &str, rss: Option<u64>, budget: u64) -> BotStatus {
        BotStatus {
            name: name.into(),
            model: "builtin".into(),
            state: BotState::Ready,
            pid: Some(42),
            generation: 3,
            rss_bytes: rss,
            budget_bytes: budget,
            uptime_seconds: Some(5),
            restarts: 2,
            in_flight: 1,
            startup_ms: None,
            last_failure: None,
            leak_slope_bytes_per_second: 1500.0,
            memory_warning: false,
            pending_generation: None,
            model_present: None,
            retry_in_seconds: None,
        }
    }

    #[test]
    fn the_bar_fills_with_rss_and_marks_the_warning_line() {
        assert_eq!(memory_bar(Some(0), 100, 0.8), "[....................|....]");
        assert_eq!(
            memory_bar(Some(40), 100, 0.8),
            "[##########..........|....]"
        );
        assert_eq!(
            memory_bar(Some(100), 100, 0.8),
            "[####################|####]"
        );
        assert_eq!(
            memory_bar(Some(500), 100, 0.8),
            "[####################|####]"
        );
        assert_eq!(memory_bar(None, 100, 0.8), "[....................|....]");
    }

    #[test]
    fn a_frame_shows_every_bot_its_budget_and_every_endpoint() {
        let mut endpoint = EndpointStatus::unchecked("primary", InferenceKind::Ollama);
        endpoint.checked = true;
        endpoint.up = false;
        endpoint.error = Some("connection refused".into());
        let report = StatusReport {
            bots: vec![
                bot("helper", Some(3_700_000), 125_000_000),
                bot("leaky", None, 20_000_000),
            ],
            host_rss_bytes: Some(12_300_000),
            memory_enforcement: String::new(),
            inference: vec![endpoint],
        };
        let frame = top_frame(&report, 0.8, "12:00:00");
        assert!(
            frame.starts_with("bothost top · 2 bots · host RSS 12.3 MB · 12:00:00"),
            "{frame}"
        );
        assert!(
            frame.contains("helper") && frame.contains("3.7 MB / 125.0 MB"),
            "{frame}"
        );
        assert!(
            frame.contains("leaky") && frame.contains("- / 20.0 MB"),
            "{frame}"
        );
        assert!(frame.contains("1.5 kB"), "leak slope: {frame}");
        assert!(
            frame.contains("primary (ollama): down: connection refused"),
            "{frame}"
        );
    }
}
