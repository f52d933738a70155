//! The results store: one SQLite database per study (WAL mode; every state change is one
//! transaction). A run's own directory is the ground truth for its training (checkpoints,
//! run.json); the database indexes runs, their status and their metrics for `status` and `report`.
//!
//! Every row carries a checksum (`sum`, a CRC-32 of its other columns as stored), kept in the
//! same transaction as the change; opening the store runs SQLite's `quick_check` and verifies
//! every row, so a flipped byte — in SQLite's own structures or in a stored accuracy — is found
//! before anything is read ([`Damaged`]; the callers set the file aside and rebuild the index
//! from the run directories). An index written before rows carried checksums is sealed when it
//! is first opened, with a note.
use super::plan::{Kind, RunSpec};
use crate::train::run::{EpochMetrics, RunRecord};
use anyhow::{Context, Result};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::path::{Path, PathBuf};

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The error of opening an index that fails its checks: SQLite's structure, or a row's checksum.
#[derive(Debug)]
pub(crate) struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// Whether an error from [`Store::open`] says the index is damaged (rather than, say, unreadable).
pub(crate) fn is_damaged(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<Damaged>().is_some()
            || e.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
                matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
                )
            })
    })
}

/// The checksummed columns of each table (everything but the checksum itself).
const SEALED: [(&str, &str); 3] = [
    ("runs", "id, kind, name, config, status, error, final_acc, best_acc, best_epoch, params, wall_time_s, attempts, updated_at"),
    ("epochs", "run_id, epoch, lr, train_loss, train_acc, test_loss, test_acc, time_s, terms, extra"),
    ("meta", "key, value"),
];

/// The CRC-32 of a row's columns `from..` as SQLite returns them (type and value of each).
fn row_sum(r: &rusqlite::Row, from: usize, count: usize) -> rusqlite::Result<i64> {
    let mut h = crc32fast::Hasher::new();
    for i in from..from + count {
        match r.get_ref(i)? {
            ValueRef::Null => h.update(b"N"),
            ValueRef::Integer(v) => {
                h.update(b"I");
                h.update(&v.to_le_bytes())
            }
            ValueRef::Real(v) => {
                h.update(b"R");
                h.update(&v.to_bits().to_le_bytes())
            }
            ValueRef::Text(t) => {
                h.update(b"T");
                h.update(&(t.len() as u64).to_le_bytes());
                h.update(t)
            }
            ValueRef::Blob(b) => {
                h.update(b"B");
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(b)
            }
        }
    }
    Ok(i64::from(h.finalize()))
}

/// Recomputes the checksums of the rows of `table` that `filter` selects (an SQL condition on
/// `?1`, or "1" for all).
fn reseal(tx: &Transaction, table: &str, filter: &str, arg: &str) -> rusqlite::Result<()> {
    let cols = SEALED.iter().find(|(t, _)| *t == table).expect("a sealed table").1;
    let count = cols.split(',').count();
    let mut select = tx.prepare_cached(&format!("SELECT rowid, {cols} FROM {table} WHERE {filter}"))?;
    let sums = select
        .query_map(rusqlite::params_from_iter(std::iter::once(arg).filter(|_| filter.contains("?1"))), |r| {
            Ok((r.get::<_, i64>(0)?, row_sum(r, 1, count)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut update = tx.prepare_cached(&format!("UPDATE {table} SET sum = ?1 WHERE rowid = ?2"))?;
    for (rowid, sum) in sums {
        update.execute(params![sum, rowid])?;
    }
    Ok(())
}

/// Explains a failed change of the index, naming the file, and plainly when the disk is full.
fn describe(path: &Path, action: &str, err: rusqlite::Error) -> anyhow::Error {
    if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        anyhow::anyhow!(
            "no space left on device while {action} in the study index {} ({err}); the change was rolled back, and \
             runs that finished keep their results in their run directories, which the next `kdlab sweep` imports",
            path.display()
        )
    } else {
        anyhow::Error::new(err).context(format!("{action} in the study index {}", path.display()))
    }
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
    pub(crate) const ALL: [Status; 4] = [Status::Queued, Status::Running, Status::Done, Status::Failed];

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
    updated_at REAL NOT NULL,
    sum INTEGER
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id),
    epoch INTEGER NOT NULL,
    lr REAL, train_loss REAL, train_acc REAL, test_loss REAL, test_acc REAL, time_s REAL,
    terms TEXT, extra TEXT,
    sum INTEGER,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, sum INTEGER);
";

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Store {
    /// Opens (or creates) the index, checks it, and seals an older index's rows. For the one
    /// process that writes the study: a sweep, or a command holding the sweep's lock.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, true)
    }

    /// Opens the index to read it while a sweep may be writing it (`status`, the report): checks
    /// it, but leaves an older index without row checksums as it is (read unverified, with a
    /// note), so that a sweep of an older kdlab still running on it is not disturbed.
    pub fn open_to_read(path: &Path) -> Result<Store> {
        Store::open_with(path, false)
    }

    fn open_with(path: &Path, seal: bool) -> Result<Store> {
        let conn = super::failpoint::connect(path)
            .with_context(|| format!("opening the study database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| describe(path, "opening", e))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mut store = Store { conn, path: path.to_path_buf() };
        store.check()?;
        store.conn.execute_batch(SCHEMA).map_err(|e| describe(path, "creating the tables", e))?;
        if seal {
            store.seal_old_rows()?;
        } else if !store.sealed()? {
            eprintln!(
                "note: {} was written by an older kdlab without row checksums; it is read unverified until a sweep or \
                 `kdlab report` opens it",
                path.display()
            );
            return Ok(store);
        }
        store.verify()?;
        Ok(store)
    }

    /// SQLite's own structural check (a quick one: pages, records, no index contents).
    fn check(&self) -> Result<()> {
        let damaged = |what: String| Damaged(format!("{}: the study index is damaged ({what})", self.path.display()));
        let verdict: String = match self.conn.query_row("PRAGMA quick_check", [], |r| r.get(0)) {
            Ok(v) => v,
            Err(e) => {
                let err = anyhow::Error::new(e);
                if is_damaged(&err) {
                    return Err(damaged(format!("{err}")).into());
                }
                return Err(err.context(format!("checking the study index {}", self.path.display())));
            }
        };
        if verdict != "ok" {
            return Err(damaged(format!("SQLite's quick_check: {verdict}")).into());
        }
        Ok(())
    }

    /// Whether every table has its checksum column.
    fn sealed(&self) -> Result<bool> {
        for (table, _) in SEALED {
            let mut st =
                self.conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'sum'"))?;
            if !st.exists([])? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Adds the checksum column to an index written before rows carried one, and seals its rows.
    fn seal_old_rows(&mut self) -> Result<()> {
        if self.sealed()? {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut added = vec![];
        for (table, _) in SEALED {
            let has: bool =
                tx.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'sum'"))?.exists([])?;
            if !has {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN sum INTEGER"))
                    .map_err(|e| describe(&path, "adding checksums", e))?;
                reseal(&tx, table, "1", "").map_err(|e| describe(&path, "adding checksums", e))?;
                added.push(table);
            }
        }
        if !added.is_empty() {
            tx.commit().map_err(|e| describe(&path, "adding checksums", e))?;
            if path != Path::new(":memory:") {
                eprintln!(
                    "note: {} was written by an older kdlab without row checksums; its rows are checksummed now",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Checks every row against its checksum.
    fn verify(&self) -> Result<()> {
        for (table, cols) in SEALED {
            let count = cols.split(',').count();
            let mut st = self.conn.prepare(&format!("SELECT sum, {cols} FROM {table}"))?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let stored: Option<i64> = r.get(0).ok().flatten();
                if stored != Some(row_sum(r, 1, count)?) {
                    let key = match r.get_ref(1) {
                        Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
                        Ok(ValueRef::Integer(i)) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    return Err(Damaged(format!(
                        "{}: the study index is damaged (a row of its {table} table, key {key}, fails its checksum)",
                        self.path.display()
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Runs `change` in one transaction and reseals the rows it names, naming the file on error.
    fn change<F>(&self, action: &str, change: F) -> Result<()>
    where
        F: FnOnce(&Transaction) -> rusqlite::Result<Vec<(&'static str, &'static str, String)>>,
    {
        let run = || -> rusqlite::Result<()> {
            // Unchecked: the store's methods take `&self` and never nest transactions.
            let tx = self.conn.unchecked_transaction()?;
            for (table, filter, arg) in change(&tx)? {
                reseal(&tx, table, filter, &arg)?;
            }
            tx.commit()
        };
        run().map_err(|e| describe(&self.path, action, e))
    }

    pub(crate) fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.change("recording the study's settings", |tx| {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(vec![("meta", "key = ?1", key.to_string())])
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    /// Adds the planned runs the store lacks (queued) and refreshes the stored plan of the others:
    /// a run's id covers everything that determines its result, so a planned run with a known id
    /// differs at most in presentation (its name, or the series a `label` gives it), which the
    /// report must show as the study file now says. Returns the number of runs added.
    pub(crate) fn add_missing(&mut self, specs: &[RunSpec]) -> Result<usize> {
        let configs = specs.iter().map(serde_json::to_string).collect::<serde_json::Result<Vec<_>>>()?;
        let mut added = 0;
        self.change("adding the planned runs", |tx| {
            let mut touched = vec![];
            for (s, config) in specs.iter().zip(&configs) {
                let new = tx.execute(
                    "INSERT OR IGNORE INTO runs(id, kind, name, config, status, updated_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
                    params![s.id, s.kind.as_str(), s.name, config, now()],
                )?;
                let changed = tx.execute(
                    "UPDATE runs SET name = ?2, config = ?3 WHERE id = ?1 AND (name != ?2 OR config != ?3)",
                    params![s.id, s.name, config],
                )?;
                added += new;
                if new + changed > 0 {
                    touched.push(("runs", "id = ?1", s.id.clone()));
                }
            }
            Ok(touched)
        })?;
        Ok(added)
    }

    pub(crate) fn set_status(&self, id: &str, status: Status, error: Option<&str>) -> Result<()> {
        let bump = i64::from(status == Status::Running);
        self.change(&format!("marking the run {id} {status}"), |tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, error = ?3, attempts = attempts + ?4, updated_at = ?5 WHERE id = ?1",
                params![id, status.as_str(), error, bump, now()],
            )?;
            Ok(vec![("runs", "id = ?1", id.to_string())])
        })
    }

    /// Records a finished run: its outcome and every epoch's metrics, in one transaction.
    pub(crate) fn record_done(&mut self, id: &str, rec: &RunRecord, history: &[EpochMetrics]) -> Result<()> {
        let terms = history.iter().map(|m| serde_json::to_string(&m.terms)).collect::<serde_json::Result<Vec<_>>>()?;
        self.change(&format!("recording the finished run {id}"), |tx| {
            tx.execute("DELETE FROM epochs WHERE run_id = ?1", params![id])?;
            for (m, terms) in history.iter().zip(&terms) {
                tx.execute(
                    "INSERT INTO epochs(run_id, epoch, lr, train_loss, train_acc, test_loss, test_acc, time_s, terms, extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![id, m.epoch as i64, m.lr, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.time_s, terms, m.extra.as_ref().map(|e| e.to_string())],
                )?;
            }
            tx.execute(
                "UPDATE runs SET status = 'done', error = NULL, final_acc = ?2, best_acc = ?3, best_epoch = ?4, params = ?5, wall_time_s = ?6, updated_at = ?7 WHERE id = ?1",
                params![id, rec.final_test_acc, rec.best_test_acc, rec.best_epoch.map(|e| e as i64), rec.params as i64, rec.wall_time_s, now()],
            )?;
            Ok(vec![("epochs", "run_id = ?1", id.to_string()), ("runs", "id = ?1", id.to_string())])
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tamper(path: &Path, sql: &str) {
        Connection::open(path).unwrap().execute_batch(sql).unwrap();
    }

    #[test]
    fn a_value_changed_behind_the_store_is_found_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("study.sqlite");
        Store::open(&p).unwrap().set_meta("plan", "[\"a\"]").unwrap();
        let s = Store::open_to_read(&p).unwrap();
        assert_eq!(s.meta("plan").unwrap().as_deref(), Some("[\"a\"]"));
        drop(s);
        tamper(&p, "UPDATE meta SET value = '[\"b\"]' WHERE key = 'plan'");
        for opened in [Store::open(&p), Store::open_to_read(&p)] {
            let err = opened.err().expect("the change is found");
            assert!(is_damaged(&err), "{err:#}");
            assert!(format!("{err:#}").contains("a row of its meta table, key plan, fails its checksum"), "{err:#}");
        }
    }

    #[test]
    fn an_index_without_checksums_is_read_as_it_is_and_sealed_by_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("study.sqlite");
        let old_schema = SCHEMA.replace(",\n    sum INTEGER", "").replace(", sum INTEGER", "");
        assert!(!old_schema.contains("sum"));
        tamper(&p, &format!("{old_schema} INSERT INTO meta(key, value) VALUES ('plan', '[]');"));
        let has_sums = |p: &Path| Connection::open(p).unwrap().prepare("SELECT sum FROM meta").is_ok();
        // A reader leaves it alone (a sweep of an older kdlab may be writing it).
        assert_eq!(Store::open_to_read(&p).unwrap().meta("plan").unwrap().as_deref(), Some("[]"));
        assert!(!has_sums(&p));
        // The writer seals it; from then on a change behind its back is found.
        Store::open(&p).unwrap();
        assert!(has_sums(&p));
        Store::open_to_read(&p).unwrap();
        tamper(&p, "UPDATE meta SET value = '[1]'");
        assert!(is_damaged(&Store::open(&p).err().unwrap()));
    }
}
