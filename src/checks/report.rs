//! What a check answers and how the report reads: shared by every check.

use std::path::Path;

use serde::Serialize;

crate::names::named_enum! {
    /// A check's verdict.
    pub enum Status {
        Pass = "pass",
        Warn = "warn",
        Fail = "fail",
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail)
    }

    pub fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail)
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail)
    }

    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
        }
    }
}

/// `bothost check-config --json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The report for a terminal: one aligned line per check, then a tally.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let status = c.status.as_str().to_uppercase();
            out.push_str(&format!("{status:<4}  {:<width$}  {}\n", c.name, c.detail));
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "\n{} passed, {} warnings, {} failed\n",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail)
        ));
        out
    }
}

/// The directory where `path` exists or would be created: its nearest
/// existing ancestor (itself, when it exists).
pub fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"))
}

/// This user may create files in `dir`.
pub fn can_write(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fail_fails_the_report_and_the_table_tallies() {
        let report = Report {
            checks: vec![
                Check::pass("a", "fine"),
                Check::warn("bb", "hm"),
                Check::fail("c", "broken"),
            ],
        };
        assert!(report.failed());
        let table = report.table();
        assert!(table.contains("FAIL  c   broken"), "{table}");
        assert!(table.contains("1 passed, 1 warnings, 1 failed"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["checks"][2]["status"], "fail");
    }
}
