//! Request statistics rows (`request_stats`): additive upserts from the log writer, grouped reads
//! for `/admin/stats`. Reads never touch `request_logs`.
use std::collections::BTreeMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

use crate::events::rollup::{COLUMN_COUNT, Counts, Dim, StatKey, columns};

const TABLE: &str = "request_stats";
const PK: [&str; 6] = [
    "grain",
    "dim",
    "bucket_start",
    "service",
    "group_id",
    "group_name",
];
/// Rows per upsert statement: 68 bound values a row stays under SQLite's 32766 and Postgres'
/// 65535 parameters.
const ROWS_PER_STATEMENT: usize = 200;

/// Adds each row's counters to the stored ones (inserting the rows that are new). Exact under
/// any number of concurrent writers: the database does the addition.
pub async fn add<C: ConnectionTrait>(
    db: &C,
    rows: &BTreeMap<StatKey, Counts>,
) -> Result<(), DbErr> {
    let cols = columns();
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = Query::insert();
        q.into_table(Alias::new(TABLE)).columns(
            PK.iter()
                .map(|c| Alias::new(*c))
                .chain(cols.iter().map(|c| Alias::new(c.as_str()))),
        );
        for (k, c) in chunk {
            let mut v: Vec<Expr> = vec![
                k.grain.into(),
                k.dim.code().into(),
                k.bucket_start.into(),
                k.service.clone().into(),
                k.group_id.into(),
                k.group_name.clone().into(),
            ];
            v.extend(c.values().into_iter().map(Expr::from));
            q.values_panic(v);
        }
        q.on_conflict(
            OnConflict::columns(PK.iter().map(|c| Alias::new(*c)))
                .values(cols.iter().map(|c| {
                    (
                        Alias::new(c.as_str()),
                        Expr::cust(format!("{TABLE}.{c} + excluded.{c}")),
                    )
                }))
                .to_owned(),
        );
        db.execute(&q).await?;
    }
    Ok(())
}

/// `add` on Postgres, in the caller's transaction: every row in one statement, each column bound
/// as one array and turned back into rows by `unnest`, instead of 200 rows of 68 bound values
/// per statement (the server parsed, planned and bound each of those values). The `unnest` calls
/// are in the select list, where they advance in step without the tuple store a multi-argument
/// `FROM unnest(...)` fills first (see the log writer's insert).
pub async fn add_pg(
    tx: &mut sea_orm::sqlx::PgConnection,
    rows: &BTreeMap<StatKey, Counts>,
) -> Result<(), DbErr> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let cols = columns();
        let arrays: Vec<String> = ["int8", "text", "int8", "text", "int8", "text"]
            .into_iter()
            .chain(cols.iter().map(|_| "int8"))
            .enumerate()
            .map(|(i, t)| format!("unnest(${}::{t}[])", i + 1))
            .collect();
        let sums: Vec<String> = cols
            .iter()
            .map(|c| format!("{c} = {TABLE}.{c} + excluded.{c}"))
            .collect();
        format!(
            "INSERT INTO {TABLE} ({pk}, {cols}) SELECT {arrays} \
             ON CONFLICT ({pk}) DO UPDATE SET {sums}",
            pk = PK.join(", "),
            cols = cols.join(", "),
            arrays = arrays.join(", "),
            sums = sums.join(", "),
        )
    });
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let mut grain = Vec::with_capacity(n);
    let mut dim = Vec::with_capacity(n);
    let mut bucket = Vec::with_capacity(n);
    let mut service = Vec::with_capacity(n);
    let mut group_id = Vec::with_capacity(n);
    let mut group_name = Vec::with_capacity(n);
    let mut counters: Vec<Vec<i64>> = (0..COLUMN_COUNT).map(|_| Vec::with_capacity(n)).collect();
    for (k, c) in rows {
        grain.push(k.grain);
        dim.push(k.dim.code());
        bucket.push(k.bucket_start);
        service.push(k.service.as_str());
        group_id.push(k.group_id);
        group_name.push(k.group_name.as_str());
        for (col, v) in counters.iter_mut().zip(c.values()) {
            col.push(v);
        }
    }
    let mut q = sea_orm::sqlx::query(SQL.as_str())
        .bind(grain)
        .bind(dim)
        .bind(bucket)
        .bind(service)
        .bind(group_id)
        .bind(group_name);
    for col in counters {
        q = q.bind(col);
    }
    q.execute(tx).await.map_err(crate::db::sqlx_err)?;
    Ok(())
}

/// What a stats group is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Service,
    Key,
    AccessKey,
    Model,
}

impl GroupBy {
    fn dim(self) -> Dim {
        match self {
            Self::Service => Dim::Service,
            Self::Key => Dim::Key,
            Self::AccessKey => Dim::AccessKey,
            Self::Model => Dim::Model,
        }
    }

    fn column(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Key | Self::AccessKey => "group_id",
            Self::Model => "group_name",
        }
    }
}

/// A group's value: a name (service, model) or an id (0 = none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    Name(String),
    Id(i64),
}

pub struct Filter<'a> {
    /// None = every service (a global user's unfiltered view).
    pub services: Option<&'a [String]>,
    pub group_by: GroupBy,
    /// Unix seconds, `from` inclusive, `to` exclusive.
    pub from: i64,
    pub to: i64,
    /// Bucket width in seconds (60, 3600 or 86400).
    pub bucket: i64,
}

pub struct Row {
    pub t: i64,
    pub group: Group,
    pub counts: Counts,
}

/// Sums the rows of the finest grain that divides `bucket` (minutes for 1m, hours for 1h and 1d)
/// into `bucket`-wide buckets per group, in SQL (integer division truncates the same on both
/// backends), oldest first. At most `limit` rows; the caller sees more than `limit - 1` as "too
/// many".
pub async fn grouped(
    db: &DatabaseConnection,
    f: &Filter<'_>,
    limit: u64,
) -> Result<Vec<Row>, DbErr> {
    if f.services.is_some_and(|s| s.is_empty()) {
        return Ok(Vec::new());
    }
    let grain = if f.bucket % 3600 == 0 { 3600 } else { 60 };
    let cols = columns();
    let b = f.bucket;
    let trunc = format!("(bucket_start / {b}) * {b}");
    let g = f.group_by.column();
    let mut q = Query::select();
    q.expr_as(Expr::cust(trunc.clone()), Alias::new("t"))
        .expr_as(Expr::col(Alias::new(g)), Alias::new("g"));
    for c in &cols {
        // SUM(bigint) is numeric on Postgres: cast back so both backends read an i64.
        q.expr_as(
            Expr::cust(format!("CAST(SUM({c}) AS BIGINT)")),
            Alias::new(c.as_str()),
        );
    }
    q.from(Alias::new(TABLE))
        .and_where(Expr::col(Alias::new("grain")).eq(grain))
        .and_where(Expr::col(Alias::new("dim")).eq(f.group_by.dim().code()))
        .and_where(Expr::col(Alias::new("bucket_start")).gte(f.from))
        .and_where(Expr::col(Alias::new("bucket_start")).lt(f.to));
    if let Some(s) = f.services {
        q.and_where(Expr::col(Alias::new("service")).is_in(s.iter().cloned()));
    }
    q.add_group_by([Expr::cust(trunc.clone()), Expr::col(Alias::new(g))])
        .order_by_expr(Expr::cust(trunc), sea_orm::sea_query::Order::Asc)
        .order_by(Alias::new(g), sea_orm::sea_query::Order::Asc)
        .limit(limit);
    let rows = db.query_all(&q).await?;
    rows.into_iter()
        .map(|r| {
            let group = match f.group_by {
                GroupBy::Service | GroupBy::Model => Group::Name(r.try_get("", "g")?),
                GroupBy::Key | GroupBy::AccessKey => Group::Id(r.try_get("", "g")?),
            };
            let values = cols
                .iter()
                .enumerate()
                // By position (t and g come first): a name lookup per column and row was most of
                // the time of a large answer.
                .map(|(i, _)| {
                    r.try_get_by_index::<Option<i64>>(i + 2)
                        .map(|v| v.unwrap_or(0))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Row {
                t: r.try_get("", "t")?,
                group,
                counts: Counts::from_values(&values),
            })
        })
        .collect()
}
