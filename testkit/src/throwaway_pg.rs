//! A PostgreSQL server of a test's own (initdb and pg_ctl from the
//! machine's postgresql package, on a free port), for tests that stop,
//! restart or break the database: the shared one stays untouched.

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL server of the test's own, stopped for good on drop.
pub struct ThrowawayPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl ThrowawayPg {
    /// `None` (the test skips) when the server binaries are not installed,
    /// except under CI, where they must be.
    pub fn start() -> Option<Self> {
        let pg = Self::empty()?;
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_again();
        Some(pg)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), running.
    pub fn standby_of(primary: &Self) -> Self {
        let standby = Self::empty().expect("the server binaries (the primary has them)");
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &standby.data(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        standby.start_again();
        standby
    }

    /// A `database.url` naming this primary and its `standby`, for
    /// whichever accepts writes (`target_session_attrs=read-write`): what
    /// follows a failover.
    pub fn url_with_standby(&self, standby: &Self) -> String {
        format!(
            "postgres://postgres@{},{}/postgres?target_session_attrs=read-write",
            self.addr(),
            standby.addr()
        )
    }

    /// `pg_ctl promote`: the standby becomes a primary.
    pub fn promote(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "promote"]);
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A directory and a port, no server yet; `None` without the binaries.
    fn empty() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .max()
            })
            .filter(|bin| bin.join("pg_ctl").exists());
        let Some(bin) = bin else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but the PostgreSQL server binaries are missing");
            }
            eprintln!("no PostgreSQL server binaries under /usr/lib/postgresql: skipping");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        if nix::unistd::geteuid().is_root() {
            // initdb refuses to run as root: the server runs as postgres.
            let pg = nix::unistd::User::from_name("postgres")
                .expect("user lookup")
                .expect("a postgres user");
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid)).expect("chown");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Some(Self { dir, bin, port })
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// With a password, which trust authentication ignores: lets a test
    /// check that the secret never reaches a log.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:hunter2@127.0.0.1:{}/postgres",
            self.port
        )
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// The postmaster's pid, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        let pid_file = self.dir.path().join("data/postmaster.pid");
        std::fs::read_to_string(pid_file)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// `pg_ctl restart -m fast`: open connections are terminated.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Fast shutdown: open connections are terminated, as in a crash of the
    /// database host.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}
