//! Gateway instances and crash recovery of the work queues.
//!
//! Every process that runs the engine registers an instance (a row of `instances`) and heartbeats it.
//! Each leased row of a work queue (`tasks`, `webhook_deliveries`) names the instance holding it
//! (`leased_by`). An instance whose heartbeat is older than `tasks.instance_stale_ms` is dead: any live
//! process releases its leases (the rows become due now) and deletes it, so a crash costs a few
//! seconds instead of `tasks.lease_secs`. The lease time still bounds a live process that hangs.
//!
//! Times are the database's clock, so clocks of different machines never disagree. A SQLite database
//! serves one process at a time (see [`crate::store::lock_single_process`]): there, every other
//! instance is dead as soon as this one starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::{Db, Dialect};
use crate::{ids, monitoring, on_db};

/// The work queues whose rows are leased: `(table, due column, unfinished rows)`.
const LEASED_QUEUES: [(&str, &str, &str); 2] = [
    ("tasks", "next_poll_at", "status IN ('pending', 'running')"),
    ("webhook_deliveries", "next_attempt_at", "status = 'pending'"),
];

/// This process as the work queues know it.
#[derive(Debug)]
pub struct Instance {
    /// `inst_` + a ULID: what `leased_by` names.
    pub id: String,
    db: Db,
    heartbeat: Duration,
    stale: Duration,
}

impl Instance {
    /// A new instance of this process (registered by [`Instance::register`]).
    pub fn new(db: Db, heartbeat: Duration, stale: Duration) -> Arc<Instance> {
        Arc::new(Instance { id: ids::new_id("inst"), db, heartbeat, stale })
    }

    /// Records this instance, before it leases anything. On SQLite, whatever other instance the table
    /// names died (this process holds the database's lock): its leases are released now. On
    /// PostgreSQL the heartbeat loop judges the others, once this one has been up for a while.
    pub async fn register(&self) -> sqlx::Result<()> {
        self.beat().await?;
        let taken = match self.db.dialect() {
            Dialect::Sqlite => take_over(&self.db, &self.id, None).await?,
            Dialect::Postgres => 0,
        };
        tracing::info!(instance = %self.id, taken_over = taken, "instance registered");
        Ok(())
    }

    /// Heartbeats until `shutdown`, and takes over the leases of dead instances; `wake` is called
    /// when it released some, so this process's loops look at them now. Only after its own heartbeats
    /// have gone through for `instance_stale_ms`: a database outage stops every instance's heartbeat,
    /// and the first one back must not take the others for dead. On a clean stop the instance is
    /// deleted (its leases were handed back by the loops).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, wake: impl Fn()) {
        let mut every = tokio::time::interval(self.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy_since = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            if let Err(error) = self.beat().await {
                tracing::warn!(error = %error, instance = %self.id, "heartbeat failed");
                monitoring::instance_heartbeat(false);
                healthy_since = Instant::now();
                continue;
            }
            monitoring::instance_heartbeat(true);
            if healthy_since.elapsed() < self.stale {
                continue;
            }
            match take_over(&self.db, &self.id, Some(self.stale)).await {
                Ok(0) => {}
                Ok(_) => wake(),
                Err(error) => tracing::warn!(error = %error, "taking over the leases of dead instances failed"),
            }
        }
        let deleted = on_db!(&self.db, pool => sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(&self.id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()));
        if let Err(error) = deleted {
            tracing::warn!(error = %error, "unregistering the instance failed; it expires by its heartbeat");
        }
    }

    /// Inserts or refreshes this instance's row: one that was taken for dead (a stall longer than
    /// `instance_stale_ms`) comes back; the leases it lost stay with whoever took them.
    async fn beat(&self) -> sqlx::Result<()> {
        let now = self.db.dialect().now();
        let sql = format!(
            "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, {now}, {now})
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = {now}"
        );
        on_db!(&self.db, pool => sqlx::query(&sql)
            .bind(&self.id)
            .bind(host())
            .bind(i64::from(std::process::id()))
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Releases every lease not held by a live instance (`me`, or one whose heartbeat is younger than
/// `stale`; `None`: only `me` lives) and deletes the dead instances, in one transaction. The released
/// rows are due now. Returns how many rows were released.
pub async fn take_over(db: &Db, me: &str, stale: Option<Duration>) -> sqlx::Result<u64> {
    let d = db.dialect();
    // NULL (a SQLite takeover) makes every other instance dead.
    let alive = format!("SELECT id FROM instances WHERE id = $1 OR heartbeat_at >= {}", d.now_plus_secs("-($2)"));
    let stale = stale.map(|s| s.as_secs_f64());
    let mut tx = db.begin().await?;
    let mut released = 0;
    for (table, due, unfinished) in LEASED_QUEUES {
        let sql = format!(
            "UPDATE {table} SET leased_by = NULL, {due} = {now}
             WHERE leased_by IS NOT NULL AND leased_by NOT IN ({alive}) AND {unfinished}",
            now = d.now()
        );
        let done = crate::on_tx!(&mut tx, conn => sqlx::query(&sql)
            .bind(me)
            .bind(stale)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?;
        if done > 0 {
            tracing::warn!(queue = table, released = done, "leases of dead instances taken over");
            monitoring::leases_taken_over(table, done);
        }
        released += done;
    }
    let sql = format!("DELETE FROM instances WHERE id NOT IN ({alive})");
    crate::on_tx!(&mut tx, conn => sqlx::query(&sql)
        .bind(me)
        .bind(stale)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(released)
}
