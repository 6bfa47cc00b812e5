//! The retention purge (`[retention]`): result files older than `results_days` and finished tasks
//! older than `tasks_days` are deleted, in batches of `batch_size`, by one replica at a time (the
//! holder of the `retention` row of `job_leases`). Audit log entries older than `audit_days` (default
//! 365) go the same way. The ledger is never purged: its rows keep the task
//! id, so a purged task answers 404 saying it expired ([`crate::tasks::missing`]).

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::files::FileStore;
use crate::store::Db;
use crate::{monitoring, on_db, on_tx};

const DAY_SECS: f64 = 86_400.0;

pub struct Retention {
    db: Db,
    files: FileStore,
    settings: RetentionSettings,
    /// This process, as the holder of the lease.
    holder: String,
}

/// What one run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub files: u64,
    pub tasks: u64,
    pub audit: u64,
}

impl Retention {
    pub fn new(db: Db, files: FileStore, settings: RetentionSettings) -> Retention {
        Retention { db, files, settings, holder: ulid::Ulid::new().to_string() }
    }

    /// Whether there is anything to purge at all (all limits 0: keep everything).
    pub fn enabled(&self) -> bool {
        self.settings.results_days > 0 || self.settings.tasks_days > 0 || self.settings.audit_days > 0
    }

    /// Purges every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.purge_once().await {
                Ok(Some(purged)) => {
                    monitoring::retention_run("done");
                    tracing::info!(
                        files = purged.files,
                        tasks = purged.tasks,
                        audit = purged.audit,
                        "retention purge done"
                    );
                }
                Ok(None) => monitoring::retention_run("skipped"),
                Err(error) => {
                    monitoring::retention_run("failed");
                    tracing::error!(error = %error, "retention purge failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
        tracing::info!(worker = "retention", "stopped");
    }

    /// One run: `None` when another replica holds the lease. The lease is renewed before each batch,
    /// so it lapses only if this process stops.
    pub async fn purge_once(&self) -> anyhow::Result<Option<Purged>> {
        let mut purged = Purged::default();
        let batch = self.settings.batch_size.get() as usize;
        if !self.take_lease().await? {
            return Ok(None);
        }
        if self.settings.results_days > 0 {
            let before = Utc::now() - chrono::Duration::days(i64::from(self.settings.results_days));
            loop {
                let names = self.files.older_than(before, batch).await?;
                for name in &names {
                    self.files.delete(name).await?;
                }
                purged.files += names.len() as u64;
                monitoring::retention_purged("files", names.len() as u64);
                if names.len() < batch || !self.take_lease().await? {
                    break;
                }
            }
        }
        if self.settings.tasks_days > 0 {
            let age = f64::from(self.settings.tasks_days) * DAY_SECS;
            loop {
                let removed = purge_tasks(&self.db, age, batch).await?;
                purged.tasks += removed as u64;
                monitoring::retention_purged("tasks", removed as u64);
                if removed < batch || !self.take_lease().await? {
                    break;
                }
            }
        }
        if self.settings.audit_days > 0 {
            let age = f64::from(self.settings.audit_days) * DAY_SECS;
            loop {
                let removed = crate::audit::purge(&self.db, age, batch).await?;
                purged.audit += removed;
                monitoring::retention_purged("audit", removed);
                if removed < batch as u64 || !self.take_lease().await? {
                    break;
                }
            }
        }
        Ok(Some(purged))
    }

    /// Takes or renews the `retention` lease; false while another process holds it.
    async fn take_lease(&self) -> sqlx::Result<bool> {
        let dialect = self.db.dialect();
        let lease = (self.settings.interval + Duration::from_secs(60)).as_secs_f64();
        let sql = format!(
            "INSERT INTO job_leases (name, holder, expires_at) VALUES ('retention', $1, {until})
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE job_leases.expires_at < {now} OR job_leases.holder = excluded.holder
             RETURNING holder",
            until = dialect.now_plus_secs("$2"),
            now = dialect.now(),
        );
        let held: Option<String> = on_db!(&self.db, pool => sqlx::query_scalar(&sql)
            .bind(&self.holder)
            .bind(lease)
            .fetch_optional(pool)
            .await)?;
        Ok(held.is_some())
    }
}

/// Deletes up to `limit` finished tasks completed more than `age_secs` ago, with the rows that point
/// at them (webhook deliveries and their attempts, idempotency keys, simulated jobs), in one
/// transaction. Returns how many tasks it deleted.
async fn purge_tasks(db: &Db, age_secs: f64, limit: usize) -> sqlx::Result<usize> {
    let mut tx = db.begin().await?;
    let select = format!(
        "SELECT id FROM tasks WHERE status IN ('succeeded', 'failed') AND completed_at < {}
         ORDER BY completed_at LIMIT $2",
        tx.dialect().now_plus_secs("$1")
    );
    let ids: Vec<String> = on_tx!(&mut tx, conn => sqlx::query_scalar(&select)
        .bind(-age_secs)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await)?;
    if ids.is_empty() {
        return Ok(0);
    }
    let list = (1..=ids.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ");
    for statement in [
        format!(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE task_id IN ({list}))"
        ),
        format!("DELETE FROM webhook_deliveries WHERE task_id IN ({list})"),
        format!("DELETE FROM idempotency_keys WHERE task_id IN ({list})"),
        format!("DELETE FROM simulated_jobs WHERE task_id IN ({list})"),
        format!("DELETE FROM tasks WHERE id IN ({list})"),
    ] {
        on_tx!(&mut tx, conn => {
            let mut query = sqlx::query(&statement);
            for id in &ids {
                query = query.bind(id);
            }
            query.execute(conn).await.map(|_| ())
        })?;
    }
    tx.commit().await?;
    let finished = crate::tasks::FinishedTasks::shared();
    for id in &ids {
        finished.forget(id);
    }
    Ok(ids.len())
}
