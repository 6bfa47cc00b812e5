//! The two backends' migrations make one schema: the same tables (exactly `store::TABLES`, parents
//! before children, the order `migrate --to` copies in), columns, nullability, primary keys and unique
//! indexes. Types are the dialects' own and are not compared.

use std::collections::{BTreeMap, BTreeSet};

use aio_gateway::store::{Db, TABLES};
use sqlx::{PgPool, SqlitePool};

use crate::helpers::{Backend, TestStore};

/// One table as the parity check sees it.
#[derive(Debug, Default, PartialEq)]
struct Table {
    /// Column → nullable (a primary key column is never nullable, whatever SQLite says).
    columns: BTreeMap<String, bool>,
    primary_key: Vec<String>,
    /// Unique indexes other than the primary key: their columns, and whether they are partial.
    unique: BTreeSet<(Vec<String>, bool)>,
}

type Schema = BTreeMap<String, Table>;

async fn postgres_schema(pool: &PgPool) -> Schema {
    let mut schema = Schema::new();
    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, is_nullable::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .expect("read PostgreSQL's columns");
    for (table, column, nullable) in columns {
        schema.entry(table).or_default().columns.insert(column, nullable == "YES");
    }
    let indexes: Vec<(String, bool, bool, Vec<String>)> = sqlx::query_as(
        "SELECT t.relname::text, ix.indisprimary, ix.indpred IS NOT NULL,
                ARRAY(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, n)
                      JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum ORDER BY k.n)
         FROM pg_index ix
         JOIN pg_class t ON t.oid = ix.indrelid
         JOIN pg_namespace s ON s.oid = t.relnamespace AND s.nspname = current_schema()
         WHERE ix.indisunique AND t.relname NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .expect("read PostgreSQL's indexes");
    for (table, primary, partial, columns) in indexes {
        let table = schema.entry(table).or_default();
        if primary {
            table.primary_key = columns;
        } else {
            table.unique.insert((columns, partial));
        }
    }
    schema
}

async fn sqlite_schema(pool: &SqlitePool) -> Schema {
    let mut schema = Schema::new();
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                                              AND name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
    )
    .fetch_all(pool)
    .await
    .expect("read SQLite's tables");
    for (name,) in tables {
        let mut table = Table::default();
        let columns: Vec<(String, bool, i64)> =
            sqlx::query_as("SELECT name, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY pk, cid")
                .bind(&name)
                .fetch_all(pool)
                .await
                .expect("read SQLite's columns");
        for (column, not_null, pk) in columns {
            if pk > 0 {
                table.primary_key.push(column.clone());
            }
            table.columns.insert(column, !not_null && pk == 0);
        }
        let indexes: Vec<(String, String, bool)> =
            sqlx::query_as("SELECT name, origin, partial FROM pragma_index_list(?1) WHERE \"unique\"")
                .bind(&name)
                .fetch_all(pool)
                .await
                .expect("read SQLite's indexes");
        for (index, origin, partial) in indexes {
            if origin == "pk" {
                continue;
            }
            let columns: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .bind(&index)
                .fetch_all(pool)
                .await
                .expect("read an index's columns");
            table.unique.insert((columns.into_iter().map(|(c,)| c).collect(), partial));
        }
        schema.insert(name, table);
    }
    schema
}

/// Every difference, one readable line each.
fn differences(postgres: &Schema, sqlite: &Schema) -> Vec<String> {
    let mut found = Vec::new();
    let names: BTreeSet<&String> = postgres.keys().chain(sqlite.keys()).collect();
    for name in names {
        let (Some(pg), Some(lite)) = (postgres.get(name), sqlite.get(name)) else {
            let only = if postgres.contains_key(name) { "PostgreSQL" } else { "SQLite" };
            found.push(format!("table {name}: only on {only}"));
            continue;
        };
        let columns: BTreeSet<&String> = pg.columns.keys().chain(lite.columns.keys()).collect();
        for column in columns {
            match (pg.columns.get(column), lite.columns.get(column)) {
                (Some(a), Some(b)) if a != b => {
                    let says = |nullable: &bool| if *nullable { "NULL" } else { "NOT NULL" };
                    found.push(format!("{name}.{column}: PostgreSQL {}, SQLite {}", says(a), says(b)));
                }
                (Some(_), None) => found.push(format!("{name}.{column}: only on PostgreSQL")),
                (None, Some(_)) => found.push(format!("{name}.{column}: only on SQLite")),
                _ => {}
            }
        }
        if pg.primary_key != lite.primary_key {
            found.push(format!(
                "{name}: primary key {:?} on PostgreSQL, {:?} on SQLite",
                pg.primary_key, lite.primary_key
            ));
        }
        let describe = |(columns, partial): &(Vec<String>, bool)| {
            format!("UNIQUE ({}){}", columns.join(", "), if *partial { " WHERE …" } else { "" })
        };
        for index in pg.unique.difference(&lite.unique) {
            found.push(format!("{name}: {} only on PostgreSQL", describe(index)));
        }
        for index in lite.unique.difference(&pg.unique) {
            found.push(format!("{name}: {} only on SQLite", describe(index)));
        }
    }
    found
}

#[tokio::test]
async fn both_backends_migrate_to_the_same_schema() {
    let (postgres, sqlite) = (TestStore::new(Backend::Postgres, 2).await, TestStore::new(Backend::Sqlite, 2).await);
    let (Db::Pg(pg_pool), Db::Sqlite(sqlite_pool)) = (&postgres.db, &sqlite.db) else { panic!("one store of each") };
    let (pg, lite) = (postgres_schema(pg_pool).await, sqlite_schema(sqlite_pool).await);

    let differences = differences(&pg, &lite);
    assert!(differences.is_empty(), "the migrated schemas differ:\n  {}", differences.join("\n  "));

    let tables: BTreeSet<&str> = pg.keys().map(String::as_str).collect();
    assert_eq!(tables, TABLES.iter().copied().collect(), "store::TABLES lists every table, and only those");
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'",
    )
    .fetch_all(pg_pool)
    .await
    .expect("read the foreign keys");
    let position = |table: &str| TABLES.iter().position(|t| *t == table);
    for (child, parent) in references {
        assert!(position(&parent) < position(&child), "store::TABLES lists {parent} after {child}, which refers to it");
    }
}
