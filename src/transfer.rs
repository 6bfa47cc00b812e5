//! `aio-gateway migrate --to postgres://…`: moves everything from the SQLite database of a single
//! gateway to an empty PostgreSQL database, for a user who outgrows one machine, then checks that
//! nothing was lost: every account's balance is the sum of its ledger, and balances, ledgers and row
//! counts equal the source's.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::Postgres;
use sqlx::types::Json;
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};

/// How a column is read from SQLite and written to PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Int32,
    Text,
    Blob,
    Bool,
    Time,
    Json,
}

use Kind::{Blob, Bool, Int, Int32, Json as JsonKind, Text, Time};

/// Every table, parents before children, with every column.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    ("accounts", &[("id", Int), ("name", Text), ("balance", Int), ("held", Int), ("created_at", Time)]),
    (
        "api_keys",
        &[
            ("id", Text),
            ("account_id", Int),
            ("name", Text),
            ("prefix", Text),
            ("hash", Blob),
            ("created_at", Time),
            ("last_used_at", Time),
            ("expires_at", Time),
            ("revoked_at", Time),
            ("rate_limit_per_minute", Int32),
        ],
    ),
    (
        "tasks",
        &[
            ("id", Text),
            ("account_id", Int),
            ("model", Text),
            ("sub_model", Text),
            ("status", Text),
            ("input", JsonKind),
            ("output", JsonKind),
            ("error", JsonKind),
            ("price", Int),
            ("callback_url", Text),
            ("provider", Text),
            ("upstream_model", Text),
            ("upstream_id", Text),
            ("callback_token_hash", Blob),
            ("attempts", Int32),
            ("next_poll_at", Time),
            ("deadline_at", Time),
            ("created_at", Time),
            ("updated_at", Time),
            ("completed_at", Time),
            ("callback_at", Time),
        ],
    ),
    (
        "ledger",
        &[
            ("id", Int),
            ("account_id", Int),
            ("kind", Text),
            ("amount", Int),
            ("task_id", Text),
            ("balance_after", Int),
            ("reason", Text),
            ("created_at", Time),
        ],
    ),
    (
        "simulated_jobs",
        &[
            ("id", Text),
            ("task_id", Text),
            ("prompt", Text),
            ("aspect_ratio", Text),
            ("fails", Bool),
            ("due_at", Time),
            ("file_name", Text),
            ("created_at", Time),
        ],
    ),
    (
        "webhook_secrets",
        &[
            ("account_id", Int),
            ("secret", Text),
            ("previous_secret", Text),
            ("previous_expires_at", Time),
            ("created_at", Time),
            ("rotated_at", Time),
        ],
    ),
    (
        "webhook_deliveries",
        &[
            ("id", Text),
            ("task_id", Text),
            ("account_id", Int),
            ("url", Text),
            ("webhook_id", Text),
            ("body", Blob),
            ("trigger", Text),
            ("status", Text),
            ("attempts", Int32),
            ("next_attempt_at", Time),
            ("created_at", Time),
            ("updated_at", Time),
        ],
    ),
    (
        "webhook_attempts",
        &[
            ("id", Int),
            ("delivery_id", Text),
            ("attempted_at", Time),
            ("status_code", Int32),
            ("latency_ms", Int32),
            ("error", Text),
            ("response_excerpt", Text),
        ],
    ),
    (
        "idempotency_keys",
        &[("account_id", Int), ("key", Text), ("request_hash", Blob), ("task_id", Text), ("created_at", Time)],
    ),
];

/// Tables whose ids PostgreSQL draws from a sequence, which must continue after the copied ids.
const SERIAL_TABLES: &[&str] = &["accounts", "ledger", "webhook_attempts"];

/// Rows per INSERT: well below PostgreSQL's 65535 parameters for the widest table.
const BATCH_ROWS: usize = 500;

#[derive(Clone)]
enum Cell {
    Int(Option<i64>),
    Int32(Option<i32>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    Json(Option<Json<Value>>),
}

fn read_cell(row: &sqlx::sqlite::SqliteRow, column: &str, kind: Kind) -> sqlx::Result<Cell> {
    Ok(match kind {
        Int => Cell::Int(row.try_get(column)?),
        Int32 => Cell::Int32(row.try_get(column)?),
        Text => Cell::Text(row.try_get(column)?),
        Blob => Cell::Blob(row.try_get(column)?),
        Bool => Cell::Bool(row.try_get(column)?),
        Time => Cell::Time(row.try_get(column)?),
        JsonKind => Cell::Json(row.try_get(column)?),
    })
}

/// Copies every row of `source` into `target` (migrated and empty) in one transaction, then verifies.
/// Returns the rows copied per table.
pub async fn sqlite_to_postgres(source: &SqlitePool, target: &PgPool) -> anyhow::Result<Value> {
    let (existing,): (i64,) =
        sqlx::query_as("SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM tasks)").fetch_one(target).await?;
    anyhow::ensure!(existing == 0, "the PostgreSQL database is not empty: it has accounts or tasks; copy into an empty one");

    let mut copied = serde_json::Map::new();
    let mut tx = target.begin().await?;
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let select = format!("SELECT {} FROM {table} ORDER BY rowid", names.join(", "));
        let rows = sqlx::query(&select).fetch_all(source).await?;
        let cells = rows
            .iter()
            .map(|row| columns.iter().map(|(name, kind)| read_cell(row, name, *kind)).collect::<sqlx::Result<Vec<_>>>())
            .collect::<sqlx::Result<Vec<_>>>()?;
        for batch in cells.chunks(BATCH_ROWS) {
            let mut insert = QueryBuilder::<Postgres>::new(format!("INSERT INTO {table} ({}) ", names.join(", ")));
            insert.push_values(batch, |mut values, row| {
                for cell in row.iter().cloned() {
                    match cell {
                        Cell::Int(v) => values.push_bind(v),
                        Cell::Int32(v) => values.push_bind(v),
                        Cell::Text(v) => values.push_bind(v),
                        Cell::Blob(v) => values.push_bind(v),
                        Cell::Bool(v) => values.push_bind(v),
                        Cell::Time(v) => values.push_bind(v),
                        Cell::Json(v) => values.push_bind(v),
                    };
                }
            });
            insert.build().execute(&mut *tx).await?;
        }
        copied.insert((*table).to_owned(), json!(cells.len()));
    }
    for table in SERIAL_TABLES {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    verify(source, target).await?;
    Ok(Value::Object(copied))
}

/// Every account's balance is the sum of its ledger on the target, and the accounts, the ledger and
/// every table's row count are the source's.
async fn verify(source: &SqlitePool, target: &PgPool) -> anyhow::Result<()> {
    let unbalanced: Vec<(i64,)> = sqlx::query_as(
        "SELECT a.id FROM accounts a
         WHERE a.balance <> COALESCE((SELECT SUM(l.amount) FROM ledger l WHERE l.account_id = a.id), 0)",
    )
    .fetch_all(target)
    .await?;
    anyhow::ensure!(unbalanced.is_empty(), "after the copy, accounts {unbalanced:?} have a balance other than their ledger's sum");

    const ACCOUNTS: &str = "SELECT id, balance, held FROM accounts ORDER BY id";
    let before: Vec<(i64, i64, i64)> = sqlx::query_as(ACCOUNTS).fetch_all(source).await?;
    let after: Vec<(i64, i64, i64)> = sqlx::query_as(ACCOUNTS).fetch_all(target).await?;
    anyhow::ensure!(before == after, "after the copy, the accounts' balances differ from the source's");

    const LEDGER: &str = "SELECT id, account_id, kind, amount, task_id, balance_after FROM ledger ORDER BY id";
    type Entry = (i64, i64, String, i64, Option<String>, i64);
    let before: Vec<Entry> = sqlx::query_as(LEDGER).fetch_all(source).await?;
    let after: Vec<Entry> = sqlx::query_as(LEDGER).fetch_all(target).await?;
    anyhow::ensure!(before == after, "after the copy, the ledger differs from the source's");

    for (table, _) in TABLES {
        let count = format!("SELECT count(*) FROM {table}");
        let (before,): (i64,) = sqlx::query_as(&count).fetch_one(source).await?;
        let (after,): (i64,) = sqlx::query_as(&count).fetch_one(target).await?;
        anyhow::ensure!(before == after, "after the copy, {table} has {after} rows; the source has {before}");
    }
    Ok(())
}
