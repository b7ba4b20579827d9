//! Figures the benchmarks print, shared by every bench target.

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted durations, nearest rank; zero when empty.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss, dead_code)]
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Microseconds, fractional.
#[allow(dead_code)]
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds, fractional.
#[allow(dead_code)]
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Creates the database `<prefix>_<random>` on the Postgres server at `server` and
/// returns its URL: the server's URL with its path (the database name) replaced and its
/// query kept.
#[allow(dead_code)]
pub(crate) async fn fresh_postgres_database(server: &str, prefix: &str) -> String {
    use sqlx::Connection as _;
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    let name = format!("{prefix}_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut admin = sqlx::PgConnection::connect(server).await.expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create bench database");
    admin.close().await.ok();
    let (base, query) = server.split_once('?').map_or((server, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let prefix = base[authority_start..].find('/').map_or(base, |i| &base[..authority_start + i]);
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}
