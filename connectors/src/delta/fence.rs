//! Task fencing in the Delta sink (a query run as tasks of a group, `sluice run --group`).
//!
//! Each task's commits carry its own application transaction (`txn` app id: the task's query
//! id, version: the batch id) and a second one, `<app id>.epoch`, whose version is the lease
//! epoch of the writer. A process starting a task claims it by committing `<app id>.epoch` at
//! its epoch (an empty commit). Before each batch the writer reads the table: a newer epoch
//! there refuses the write. A claim racing a batch commit is caught by Delta's conflict check,
//! since both carry the `<app id>.epoch` transaction: the loser's commit fails with a
//! concurrent-transaction conflict, and on its retry it reads the newer epoch and is refused.

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::Transaction;
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTable;
use sluice_engine::{EngineError, Result, Sink, TaskInfo};

use super::super::delta_err;
use super::DeltaSink;

impl DeltaSink {
    /// The app id of the epoch transaction.
    fn epoch_app_id(&self) -> String {
        format!("{}.epoch", self.app_id)
    }

    /// The epoch transaction a task's commit carries (none outside a task).
    pub(super) fn epoch_txn(&self) -> Option<Transaction> {
        self.task
            .map(|t| Transaction::new(self.epoch_app_id(), t.epoch as i64))
    }

    /// The newest epoch the table records for this task.
    async fn table_epoch(&self, t: &DeltaTable) -> Result<Option<i64>> {
        t.snapshot()
            .map_err(|e| delta_err("reading the table", e))?
            .transaction_version(t.log_store().as_ref(), &self.epoch_app_id())
            .await
            .map_err(|e| delta_err("reading the task's epoch", e))
    }

    /// Refuses when the table records a newer epoch of this task than the one held.
    pub(super) async fn check_task_epoch(&self, t: &DeltaTable) -> Result<()> {
        let Some(task) = self.task else {
            return Ok(());
        };
        match self.table_epoch(t).await? {
            Some(v) if v > task.epoch as i64 => Err(self.fenced(task, v)),
            _ => Ok(()),
        }
    }

    fn fenced(&self, task: TaskInfo, newer: i64) -> EngineError {
        EngineError::fenced(task.index, task.epoch, newer as u64, &self.description())
    }

    /// Claims the table for this task's epoch (see the module's notes).
    pub(super) async fn claim(&mut self, task: TaskInfo) -> Result<()> {
        let mut last = None;
        for _ in 0..10 {
            let t = self.table().await?;
            match self.table_epoch(&t).await? {
                Some(v) if v > task.epoch as i64 => return Err(self.fenced(task, v)),
                Some(v) if v == task.epoch as i64 => {
                    self.table = Some(t);
                    return Ok(());
                }
                _ => {}
            }
            let op = DeltaOperation::StreamingUpdate {
                output_mode: deltalake::protocol::OutputMode::Append,
                query_id: self.app_id.clone(),
                epoch_id: -1,
            };
            let props = CommitProperties::default().with_application_transaction(Transaction::new(
                self.epoch_app_id(),
                task.epoch as i64,
            ));
            let snap = t
                .snapshot()
                .map_err(|e| delta_err("reading the table", e))?;
            match CommitBuilder::from(props)
                .with_actions(vec![])
                .build(Some(snap as &dyn TableReference), t.log_store(), op)
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        "{}: task {} claimed at epoch {}",
                        self.description(),
                        task.index,
                        task.epoch
                    );
                    return Ok(());
                }
                // another commit came first: read the table again
                Err(e) => last = Some(e),
            }
        }
        Err(delta_err(
            "claiming the table for this task",
            last.unwrap_or_else(|| deltalake::DeltaTableError::Generic("no attempt".into())),
        ))
    }
}
