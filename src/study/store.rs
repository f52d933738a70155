//! The results store: one SQLite database per study (WAL mode; every state change is one
//! transaction). A run's own directory is the ground truth for its training (checkpoints,
//! run.json); the database indexes runs, their status and their metrics for `status` and `report`.
use super::plan::{Kind, RunSpec};
use crate::train::run::{EpochMetrics, RunRecord};
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

pub struct Store {
    conn: Connection,
}

/// Where a study run stands. Stored as its lower-case name (the schema's CHECK lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Queued, Status::Running, Status::Done, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as the store knows it.
#[derive(Clone, Debug)]
pub struct StoredRun {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub spec: RunSpec,
    pub status: Status,
    pub error: Option<String>,
    pub final_acc: Option<f64>,
    pub best_acc: Option<f64>,
    pub best_epoch: Option<usize>,
    pub params: Option<u64>,
    pub wall_time_s: Option<f64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    error TEXT,
    final_acc REAL,
    best_acc REAL,
    best_epoch INTEGER,
    params INTEGER,
    wall_time_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    lr REAL, train_loss REAL, train_acc REAL, test_loss REAL, test_acc REAL, time_s REAL,
    terms TEXT, extra TEXT,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).with_context(|| format!("opening the study database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA).with_context(|| format!("{}: creating tables", path.display()))?;
        Ok(Store { conn })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    /// Adds runs that are not in the store yet, as queued.
    /// Adds the planned runs the store lacks (queued) and refreshes the stored plan of the others:
    /// a run's id covers everything that determines its result, so a planned run with a known id
    /// differs at most in presentation (its name, or the series a `label` gives it), which the
    /// report must show as the study file now says. Returns the number of runs added.
    pub fn add_missing(&mut self, specs: &[RunSpec]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut added = 0;
        for s in specs {
            let config = serde_json::to_string(s)?;
            added += tx.execute(
                "INSERT OR IGNORE INTO runs(id, kind, name, config, status, updated_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
                params![s.id, s.kind.as_str(), s.name, config, now()],
            )?;
            tx.execute(
                "UPDATE runs SET name = ?2, config = ?3 WHERE id = ?1 AND (name != ?2 OR config != ?3)",
                params![s.id, s.name, config],
            )?;
        }
        tx.commit()?;
        Ok(added)
    }

    pub fn set_status(&self, id: &str, status: Status, error: Option<&str>) -> Result<()> {
        let bump = i64::from(status == Status::Running);
        self.conn.execute(
            "UPDATE runs SET status = ?2, error = ?3, attempts = attempts + ?4, updated_at = ?5 WHERE id = ?1",
            params![id, status.as_str(), error, bump, now()],
        )?;
        Ok(())
    }

    /// Records a finished run: its outcome and every epoch's metrics, in one transaction.
    pub fn record_done(&mut self, id: &str, rec: &RunRecord, history: &[EpochMetrics]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM epochs WHERE run_id = ?1", params![id])?;
        for m in history {
            tx.execute(
                "INSERT INTO epochs(run_id, epoch, lr, train_loss, train_acc, test_loss, test_acc, time_s, terms, extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![id, m.epoch as i64, m.lr, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.time_s, serde_json::to_string(&m.terms)?, m.extra.as_ref().map(|e| e.to_string())],
            )?;
        }
        tx.execute(
            "UPDATE runs SET status = 'done', error = NULL, final_acc = ?2, best_acc = ?3, best_epoch = ?4, params = ?5, wall_time_s = ?6, updated_at = ?7 WHERE id = ?1",
            params![id, rec.final_test_acc, rec.best_test_acc, rec.best_epoch.map(|e| e as i64), rec.params as i64, rec.wall_time_s, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn row(r: &rusqlite::Row) -> rusqlite::Result<StoredRun> {
        let config: String = r.get(3)?;
        let spec: RunSpec = serde_json::from_str(&config)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?;
        let bad = |col: usize, what: String| {
            rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into())
        };
        let status: String = r.get(4)?;
        let kind: String = r.get(1)?;
        Ok(StoredRun {
            id: r.get(0)?,
            kind: [Kind::Teacher, Kind::Assistant, Kind::Student]
                .into_iter()
                .find(|k| k.as_str() == kind)
                .ok_or_else(|| bad(1, format!("unknown run kind '{kind}'")))?,
            name: r.get(2)?,
            spec,
            status: Status::parse(&status).ok_or_else(|| bad(4, format!("unknown run status '{status}'")))?,
            error: r.get(5)?,
            final_acc: r.get(6)?,
            best_acc: r.get(7)?,
            best_epoch: r.get::<_, Option<i64>>(8)?.map(|e| e as usize),
            params: r.get::<_, Option<i64>>(9)?.map(|p| p as u64),
            wall_time_s: r.get(10)?,
        })
    }

    pub fn runs(&self) -> Result<Vec<StoredRun>> {
        let mut st = self.conn.prepare("SELECT id, kind, name, config, status, error, final_acc, best_acc, best_epoch, params, wall_time_s FROM runs ORDER BY rowid")?;
        let rows = st.query_map([], Self::row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The runs of the current plan (the store also keeps runs an earlier version of the study
    /// file planned), in the store's order; every run where no plan is stored.
    pub fn planned_runs(&self) -> Result<Vec<StoredRun>> {
        let plan: Vec<String> = self
            .meta("plan")?
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .context("the study's stored plan is not a list of run ids")?
            .unwrap_or_default();
        Ok(self.runs()?.into_iter().filter(|r| plan.is_empty() || plan.contains(&r.id)).collect())
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredRun>> {
        Ok(self
            .conn
            .query_row("SELECT id, kind, name, config, status, error, final_acc, best_acc, best_epoch, params, wall_time_s FROM runs WHERE id = ?1", params![id], Self::row)
            .optional()?)
    }

    /// Per-epoch test accuracy of a run.
    pub fn epochs(&self, id: &str) -> Result<Vec<(usize, f64)>> {
        let mut st = self.conn.prepare("SELECT epoch, test_acc FROM epochs WHERE run_id = ?1 ORDER BY epoch")?;
        let v = st
            .query_map(params![id], |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, f64>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(v)
    }
}
