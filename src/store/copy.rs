//! `aio-gateway migrate --to postgres://…`: moves everything from the SQLite database of a single
//! gateway to an empty PostgreSQL database, for a user who outgrows one machine, then checks that
//! nothing was lost: every account's balance is the sum of its ledger, and balances, ledgers and row
//! counts equal the source's. The tables are [`TABLES`]; their columns are read from the migrated
//! target, so a new migration needs no change here (the schema-parity test keeps SQLite in step).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::Postgres;
use sqlx::types::Json;
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};

use super::TABLES;

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

impl Kind {
    /// The kind of a PostgreSQL column, by its `information_schema` data type.
    fn of_postgres(data_type: &str) -> Option<Kind> {
        Some(match data_type {
            "bigint" => Kind::Int,
            "integer" => Kind::Int32,
            "text" => Kind::Text,
            "bytea" => Kind::Blob,
            "boolean" => Kind::Bool,
            "timestamp with time zone" => Kind::Time,
            "jsonb" | "json" => Kind::Json,
            _ => return None,
        })
    }
}

/// A table of [`TABLES`] as the migrated target has it: its columns in order, and whether its id is
/// drawn from a sequence (which must continue after the copied ids).
struct Table {
    name: &'static str,
    columns: Vec<(String, Kind)>,
    serial: bool,
}

/// Reads the columns of every table from the migrated target, so the copy follows the migrations.
async fn target_tables(target: &PgPool) -> anyhow::Result<Vec<Table>> {
    let mut tables = Vec::with_capacity(TABLES.len());
    for name in TABLES {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text, column_default::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(name)
        .fetch_all(target)
        .await?;
        anyhow::ensure!(!rows.is_empty(), "the PostgreSQL database has no table {name}: is it migrated?");
        let serial = rows.iter().any(|(column, _, default)| {
            column == "id" && default.as_deref().is_some_and(|d| d.starts_with("nextval("))
        });
        let columns = rows
            .into_iter()
            .map(|(column, data_type, _)| match Kind::of_postgres(&data_type) {
                Some(kind) => Ok((column, kind)),
                None => Err(anyhow::anyhow!("{name}.{column}: the copy cannot move a column of type {data_type}")),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        tables.push(Table { name, columns, serial });
    }
    Ok(tables)
}

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
        Kind::Int => Cell::Int(row.try_get(column)?),
        Kind::Int32 => Cell::Int32(row.try_get(column)?),
        Kind::Text => Cell::Text(row.try_get(column)?),
        Kind::Blob => Cell::Blob(row.try_get(column)?),
        Kind::Bool => Cell::Bool(row.try_get(column)?),
        Kind::Time => Cell::Time(row.try_get(column)?),
        Kind::Json => Cell::Json(row.try_get(column)?),
    })
}

/// Copies every row of `source` into `target` (migrated and empty) in one transaction, then verifies.
/// Returns the rows copied per table.
pub async fn sqlite_to_postgres(source: &SqlitePool, target: &PgPool) -> anyhow::Result<Value> {
    let (existing,): (i64,) = sqlx::query_as("SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM tasks)")
        .fetch_one(target)
        .await?;
    anyhow::ensure!(
        existing == 0,
        "the PostgreSQL database is not empty: it has accounts or tasks; copy into an empty one"
    );

    let tables = target_tables(target).await?;
    let mut copied = serde_json::Map::new();
    let mut tx = target.begin().await?;
    for Table { name: table, columns, .. } in &tables {
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
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
    for Table { name: table, .. } in tables.iter().filter(|table| table.serial) {
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
    anyhow::ensure!(
        unbalanced.is_empty(),
        "after the copy, accounts {unbalanced:?} have a balance other than their ledger's sum"
    );

    const ACCOUNTS: &str = "SELECT id, balance, held FROM accounts ORDER BY id";
    let before: Vec<(i64, i64, i64)> = sqlx::query_as(ACCOUNTS).fetch_all(source).await?;
    let after: Vec<(i64, i64, i64)> = sqlx::query_as(ACCOUNTS).fetch_all(target).await?;
    anyhow::ensure!(before == after, "after the copy, the accounts' balances differ from the source's");

    const LEDGER: &str = "SELECT id, account_id, kind, amount, task_id, balance_after FROM ledger ORDER BY id";
    type Entry = (i64, i64, String, i64, Option<String>, i64);
    let before: Vec<Entry> = sqlx::query_as(LEDGER).fetch_all(source).await?;
    let after: Vec<Entry> = sqlx::query_as(LEDGER).fetch_all(target).await?;
    anyhow::ensure!(before == after, "after the copy, the ledger differs from the source's");

    for table in TABLES {
        let count = format!("SELECT count(*) FROM {table}");
        let (before,): (i64,) = sqlx::query_as(&count).fetch_one(source).await?;
        let (after,): (i64,) = sqlx::query_as(&count).fetch_one(target).await?;
        anyhow::ensure!(before == after, "after the copy, {table} has {after} rows; the source has {before}");
    }
    Ok(())
}
