//! Task fencing in the JDBC sink (a query run as tasks of a group, `sluice run --group`).
//!
//! The marker row of a task carries the lease epoch of the process that last claimed it
//! (column `epoch` of the marker table, added when missing). When a process starts a task it
//! claims the row: `UPDATE ... SET epoch = e WHERE ... AND epoch < e`, so from then on a holder
//! of an older epoch (a paused process whose task moved) is refused. In every batch
//! transaction the row is read `FOR UPDATE` with its epoch (a newer one: refused before any
//! row is written), and the marker update is conditional on the epoch (`... AND epoch = e`, one
//! row or the transaction is rolled back): the rows and the epoch check commit together.

use sluice_engine::{EngineError, Result, TaskInfo};

use super::config::Dialect;
use super::{safe, Db, JdbcSink};

impl JdbcSink {
    /// The marker table's `epoch` column is there (added to a marker table made before).
    fn ensure_epoch_column(&self) -> Result<()> {
        let m = &self.cfg.marker_table;
        let info = self.table_info(&m.schema, &m.name)?;
        if info
            .columns
            .iter()
            .any(|(c, _)| c.eq_ignore_ascii_case("epoch"))
        {
            return Ok(());
        }
        let sql = format!(
            "ALTER TABLE {} ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0",
            m.sql(self.cfg.target.dialect)
        );
        match self.execute("adding the epoch column to the marker table", sql, &[]) {
            // another process of the group added it meanwhile
            Err(_)
                if self
                    .table_info(&m.schema, &m.name)?
                    .columns
                    .iter()
                    .any(|(c, _)| c.eq_ignore_ascii_case("epoch")) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Claims the task's marker row for `task.epoch` (see the module's notes); refused when a
    /// newer epoch claimed it.
    pub(super) fn claim(&mut self, task: TaskInfo) -> Result<()> {
        self.prepare()?;
        self.ensure_epoch_column()?;
        let marker = self.cfg.marker_table.sql(self.cfg.target.dialect);
        let table = self.cfg.table.display();
        let epoch = task.epoch as i64;
        let found: Option<i64> = match &self.db {
            Db::Pg(pool) => self.rt.block_on(async {
                sqlx::query(safe(format!(
                    "UPDATE {marker} SET epoch = $3 WHERE query_id = $1 AND table_name = $2 \
                     AND epoch < $3"
                )))
                .bind(&self.query_id)
                .bind(&table)
                .bind(epoch)
                .execute(pool)
                .await?;
                sqlx::query_scalar(safe(format!(
                    "SELECT epoch FROM {marker} WHERE query_id = $1 AND table_name = $2"
                )))
                .bind(&self.query_id)
                .bind(&table)
                .fetch_optional(pool)
                .await
            }),
            Db::My(pool) => self.rt.block_on(async {
                sqlx::query(safe(format!(
                    "UPDATE {marker} SET epoch = ? WHERE query_id = ? AND table_name = ? \
                     AND epoch < ?"
                )))
                .bind(epoch)
                .bind(&self.query_id)
                .bind(&table)
                .bind(epoch)
                .execute(pool)
                .await?;
                sqlx::query_scalar(safe(format!(
                    "SELECT epoch FROM {marker} WHERE query_id = ? AND table_name = ?"
                )))
                .bind(&self.query_id)
                .bind(&table)
                .fetch_optional(pool)
                .await
            }),
        }
        .map_err(|e| self.err("claiming the batch marker for this task", e))?;
        self.check_epoch(task, found)
    }

    /// Refuses when the marker row's epoch `found` is newer than the one held.
    pub(super) fn check_epoch(&self, task: TaskInfo, found: Option<i64>) -> Result<()> {
        match found {
            Some(f) if f > task.epoch as i64 => Err(EngineError::fenced(
                task.index,
                task.epoch,
                f as u64,
                &sluice_engine::Sink::description(self),
            )),
            _ => Ok(()),
        }
    }

    /// The batch transaction's marker read: `(batch_id, epoch)` (epoch 0 outside a task).
    pub(super) fn marker_read_sql(&self, dialect: Dialect) -> String {
        let marker = self.cfg.marker_table.sql(dialect);
        let epoch = if self.task.is_some() {
            "epoch"
        } else {
            "CAST(0 AS BIGINT)"
        };
        let epoch = match (dialect, self.task.is_some()) {
            (Dialect::MySql, false) => "CAST(0 AS SIGNED)",
            _ => epoch,
        };
        match dialect {
            Dialect::Postgres => format!(
                "SELECT batch_id, {epoch} FROM {marker} WHERE query_id = $1 AND table_name = $2 \
                 FOR UPDATE"
            ),
            Dialect::MySql => format!(
                "SELECT batch_id, {epoch} FROM {marker} WHERE query_id = ? AND table_name = ? \
                 FOR UPDATE"
            ),
        }
    }

    /// A task's marker update, conditional on the epoch held (binds: query id, table, batch
    /// id, epoch; PostgreSQL numbers them, MySQL takes them in this order).
    pub(super) fn task_marker_update_sql(&self, dialect: Dialect) -> String {
        let marker = self.cfg.marker_table.sql(dialect);
        match dialect {
            Dialect::Postgres => format!(
                "UPDATE {marker} SET batch_id = $3, committed_at = now() \
                 WHERE query_id = $1 AND table_name = $2 AND epoch = $4"
            ),
            Dialect::MySql => format!(
                "UPDATE {marker} SET batch_id = ?, committed_at = CURRENT_TIMESTAMP(6) \
                 WHERE query_id = ? AND table_name = ? AND epoch = ?"
            ),
        }
    }

    /// The conditional marker update found no row with the epoch held: a newer epoch claimed
    /// it after this transaction read it (it cannot, the row is locked; kept as the rule).
    pub(super) fn fenced_by_update(&self, task: TaskInfo) -> EngineError {
        EngineError::fenced(
            task.index,
            task.epoch,
            task.epoch + 1,
            &sluice_engine::Sink::description(self),
        )
    }
}
