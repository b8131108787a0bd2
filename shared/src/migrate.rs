//! Embedded, versioned schema migrations, applied in one transaction under an advisory
//! lock so that many replicas starting at once all succeed and the schema is created once.

use crate::error::StoreError;
use crate::sql;

/// One embedded migration. Versions only ever grow; a released file is never edited.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The schema, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "claims",
    sql: include_str!("../migrations/0001_claims.sql"),
}];

/// First half of the two-int advisory lock key for migrations ("jang" in ASCII). The second
/// half is derived from the database and schema, so each claims table has its own lock.
pub const MIGRATION_LOCK_CLASS: i32 = 0x6a61_6e67;

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty when the schema was already current).
    pub applied: Vec<i32>,
}

pub(crate) async fn apply(client: &mut tokio_postgres::Client) -> Result<MigrationReport, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(sql::MIGRATION_LOCK, &[&MIGRATION_LOCK_CLASS]).await?;
    // `CREATE TABLE IF NOT EXISTS` on an existing table raises a NOTICE on every start; it
    // says nothing an operator needs.
    tx.batch_execute(sql::MIGRATION_QUIET_NOTICES).await?;
    tx.batch_execute(sql::MIGRATION_HISTORY_CREATE).await?;
    let done: Vec<i32> = tx
        .query(sql::MIGRATION_HISTORY_LIST, &[])
        .await?
        .iter()
        .map(|row| row.try_get::<_, i32>(0))
        .collect::<Result<_, _>>()?;
    let mut report = MigrationReport::default();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql).await.map_err(|e| StoreError::Migration {
            version: m.version,
            name: m.name,
            source: Box::new(e),
        })?;
        tx.execute(sql::MIGRATION_HISTORY_RECORD, &[&m.version, &m.name])
            .await?;
        report.applied.push(m.version);
    }
    tx.commit().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert!(MIGRATIONS
            .iter()
            .all(|m| m.version > 0 && !m.sql.trim().is_empty()));
    }
}
