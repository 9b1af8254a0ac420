//! What hosts sharing one database agree on. Today: the scheduled rolling
//! restart runs on one host at a time, so a fleet never restarts every
//! worker at once.
//!
//! Each host wakes at the schedule's time and takes a PostgreSQL advisory
//! lock before its rolling restart (`Store::exclusive`); the others wait
//! for it, and go in turn. The lock belongs to a database session, so a
//! host that dies mid-restart lets the next one go. On SQLite there is one
//! host and no lock.
//!
//! It never decides how a bot is restarted (the Supervisor does).

use actix::Addr;
use tracing::{error, warn};

use crate::status::RestartReason;
use crate::store::Store;
use crate::supervisor::{rolling_restart, Supervisor};

/// The advisory lock's key: "bothost restarts".
const RESTART_LOCK: i64 = 0x626f_7468_7265_7374;

/// Runs a rolling restart at every time `cron` names (local time), one host
/// of the fleet at a time, for as long as the Supervisor runs. One already
/// running on this host makes it skip a turn.
pub fn spawn_restart_schedule(supervisor: Addr<Supervisor>, cron: croner::Cron, store: Store) {
    actix_rt::spawn(async move {
        loop {
            if let Err(e) = crate::schedule::sleep_until_next(&cron).await {
                error!("restart_schedule {e}");
                return;
            }
            if !supervisor.connected() {
                return;
            }
            let restart = rolling_restart(&supervisor, RestartReason::Schedule, None);
            match store.exclusive(RESTART_LOCK, restart).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!("scheduled rolling restart skipped: {e}"),
                Err(e) => warn!(
                    "scheduled rolling restart skipped: cannot take its turn in the fleet: {e}"
                ),
            }
        }
    });
}
