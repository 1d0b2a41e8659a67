//! [`LocalStore`]: the state store of a standalone coordinator, one redb file
//! (`<state-dir>/state.redb`) holding the keys of the module layout in one table.
//!
//! State: the open [`redb::Database`] (in an `Arc`, shared with the blocking tasks that
//! use it). redb locks the file for as long as it is open, so a second open of the same
//! directory, by another process or by this one, fails with [`StoreError::InUse`].
//!
//! Concurrency: every call runs its redb work in `spawn_blocking`. Each apply is one
//! write transaction committed with [`Durability::Immediate`] (fsynced before `apply`
//! returns); redb runs one write transaction at a time, so concurrent applies are
//! serialised. A load reads one consistent snapshot.
//!
//! Failure: an error inside a batch drops the write transaction uncommitted, so nothing
//! of it is applied; errors come back as [`StoreError::Io`] naming the file. A crash
//! leaves the last committed transaction (redb repairs the file on the next open).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, DatabaseError, Durability, ReadableDatabase, TableDefinition};

use super::{
    Loader, PLANS, StateStore, StoreError, StoreLimits, StoreOp, StoredPlan, TESTS, Write,
    check_batch, prefix_end, tests_seq,
};

/// The one table: logical key -> value.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// A state store in one redb file under a directory.
pub struct LocalStore {
    /// Shared with the blocking tasks; the file stays locked until the last clone drops.
    db: Arc<Database>,
    /// The state directory (named in [`StoreError::InUse`]).
    dir: PathBuf,
    /// `dir/state.redb` (named in [`StoreError::Io`] messages).
    path: PathBuf,
}

impl LocalStore {
    /// Name of the database file inside the state directory.
    pub const FILE_NAME: &'static str = "state.redb";
    /// Generous, but enforced like the etcd limits so callers batch the same way.
    pub const LIMITS: StoreLimits = StoreLimits {
        max_ops: 10_000,
        max_bytes: 64 << 20,
    };

    /// Creates `dir` if needed and opens (or creates) `dir/state.redb`. Blocking: call it
    /// at startup or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<LocalStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!(
                "failed to create the state directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(Self::FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StoreError::InUse(dir.to_path_buf())
            }
            e => StoreError::Io(format!("failed to open {}: {e}", path.display())),
        })?;
        // Create the table now so that a load of a fresh store finds it.
        create_table(&db)
            .map_err(|e| StoreError::Io(format!("failed to initialise {}: {e}", path.display())))?;
        Ok(LocalStore {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            path,
        })
    }

    /// The state directory this store was opened on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `work` on the database in a blocking task.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        gatehouse_common::spawn::spawn_blocking_named("redb", move || work(&db))
            .await
            .map_err(|e| {
                StoreError::Io(format!(
                    "a task using {} did not finish: {e}",
                    self.path.display()
                ))
            })?
    }
}

fn create_table(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(TABLE)?;
    txn.commit()?;
    Ok(())
}

/// Applies `ops` in one durable write transaction; on error it is dropped uncommitted.
fn write_batch(db: &Database, ops: &[StoreOp]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(TABLE)?;
        for op in ops {
            match op.write() {
                Write::Put { key, value } => {
                    table.insert(key.as_str(), value)?;
                }
                Write::DeletePrefix(prefix) => {
                    let end = String::from_utf8(prefix_end(prefix.as_bytes()))
                        .expect("the end of a prefix ending in '/' is ASCII");
                    table.retain_in(prefix.as_str()..end.as_str(), |_, _| false)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn read_history(db: &Database, path: &Path) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let io = |e: redb::Error| StoreError::Io(format!("failed to read {}: {e}", path.display()));
    let txn = db.begin_read().map_err(|e| io(e.into()))?;
    let table = txn.open_table(TABLE).map_err(|e| io(e.into()))?;
    let end = String::from_utf8(prefix_end(TESTS.as_bytes())).expect("ASCII");
    let mut out = Vec::new();
    for entry in table.range(TESTS..end.as_str()).map_err(|e| io(e.into()))? {
        let (key, value) = entry.map_err(|e| io(e.into()))?;
        out.push((tests_seq(key.value().as_bytes())?, value.value().to_vec()));
    }
    Ok(out)
}

fn read_all(db: &Database, path: &Path) -> Result<Vec<StoredPlan>, StoreError> {
    let io = |e: redb::Error| StoreError::Io(format!("failed to read {}: {e}", path.display()));
    let txn = db.begin_read().map_err(|e| io(e.into()))?;
    let table = txn.open_table(TABLE).map_err(|e| io(e.into()))?;
    let end = String::from_utf8(prefix_end(PLANS.as_bytes())).expect("ASCII");
    let mut loader = Loader::new("");
    for entry in table.range(PLANS..end.as_str()).map_err(|e| io(e.into()))? {
        let (key, value) = entry.map_err(|e| io(e.into()))?;
        loader.add(key.value().as_bytes(), value.value().to_vec())?;
    }
    Ok(loader.finish())
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        check_batch(ops, Self::LIMITS)?;
        if ops.is_empty() {
            return Ok(());
        }
        let ops = ops.to_vec();
        let path = self.path.clone();
        self.blocking(move |db| {
            write_batch(db, &ops)
                .map_err(|e| StoreError::Io(format!("failed to write {}: {e}", path.display())))
        })
        .await
    }

    async fn load(&self) -> Result<Vec<StoredPlan>, StoreError> {
        let path = self.path.clone();
        self.blocking(move |db| read_all(db, &path)).await
    }

    async fn load_history(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let path = self.path.clone();
        self.blocking(move |db| read_history(db, &path)).await
    }

    fn limits(&self) -> StoreLimits {
        Self::LIMITS
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use gatehouse_common::ids::PlanId;

    use super::*;
    use crate::store::suite::{self, Fixture};

    /// Stores in subdirectories of one temp dir, one per name.
    struct LocalFixture {
        dir: tempfile::TempDir,
    }

    fn local_fixture() -> Option<LocalFixture> {
        Some(LocalFixture {
            dir: tempfile::tempdir().expect("create temp dir"),
        })
    }

    impl Fixture for LocalFixture {
        type Store = LocalStore;

        async fn open(&self, name: &str) -> LocalStore {
            LocalStore::open(&self.dir.path().join(name)).expect("open the local store")
        }
    }

    crate::state_store_suite!(local_fixture());

    #[tokio::test]
    async fn run_all_passes() {
        let fixture = local_fixture().expect("fixture");
        suite::run_all(&fixture).await;
    }

    #[test]
    fn a_second_open_in_this_process_is_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let first = LocalStore::open(&state).expect("first open");
        assert!(state.join(LocalStore::FILE_NAME).is_file());
        let err = LocalStore::open(&state).err().expect("second open fails");
        assert!(
            matches!(&err, StoreError::InUse(d) if d == &state),
            "unexpected error: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the state directory {} is in use by another coordinator",
                state.display()
            )
        );
        drop(first);
        LocalStore::open(&state).expect("open after the first handle closed");
    }

    const HOLD_ENV: &str = "GATEHOUSE_TEST_HOLD_STATE_DIR";
    const HELD: &str = "state dir held";

    /// Run by [`a_second_open_from_another_process_is_in_use`] in a child process: holds
    /// the store open until its stdin closes.
    #[test]
    #[ignore = "helper process of a_second_open_from_another_process_is_in_use"]
    fn hold_state_dir_helper() {
        let dir = std::env::var_os(HOLD_ENV).expect("the state dir to hold");
        let _store = LocalStore::open(Path::new(&dir)).expect("helper opens the store");
        println!("{HELD}");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
    }

    #[test]
    fn a_second_open_from_another_process_is_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "store::local::tests::hold_state_dir_helper",
                "--ignored",
                "--nocapture",
            ])
            .env(HOLD_ENV, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the helper");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        // Ends at the marker, or at EOF if the helper failed.
        let held = lines.any(|line| line == HELD);
        assert!(held, "the helper process did not open the store");
        let err = LocalStore::open(dir.path()).err();
        assert!(
            matches!(&err, Some(StoreError::InUse(d)) if d == dir.path()),
            "expected InUse, got {err:?}"
        );
        drop(child.stdin.take());
        // Read the rest so the helper never writes to a closed pipe.
        lines.for_each(drop);
        let status = child.wait().expect("wait for the helper");
        assert!(status.success(), "helper failed: {status}");
        LocalStore::open(dir.path()).expect("open after the other process exited");
    }

    /// Writes one raw entry, bypassing the store's key layout.
    fn put_raw(dir: &Path, key: &str, value: &[u8]) {
        let db = Database::create(dir.join(LocalStore::FILE_NAME)).expect("open raw");
        let txn = db.begin_write().expect("begin");
        txn.open_table(TABLE)
            .expect("table")
            .insert(key, value)
            .expect("insert");
        txn.commit().expect("commit");
    }

    #[tokio::test]
    async fn a_key_outside_the_layout_is_corrupt() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(LocalStore::open(dir.path()).expect("create"));
        put_raw(dir.path(), "plans/p-1/log/7", b"x");
        let store = LocalStore::open(dir.path()).expect("reopen");
        let err = store.load().await.err();
        assert!(
            matches!(&err, Some(StoreError::Corrupt { key, .. }) if key == "plans/p-1/log/7"),
            "expected Corrupt, got {err:?}"
        );
    }

    #[tokio::test]
    async fn chunks_without_a_record_are_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(LocalStore::open(dir.path()).expect("create"));
        put_raw(dir.path(), "plans/orphan/log/00000000000000000001", b"x");
        let store = LocalStore::open(dir.path()).expect("reopen");
        store
            .apply(&[StoreOp::PutPlan {
                plan: PlanId::new("kept"),
                record: b"r".to_vec(),
            }])
            .await
            .expect("apply");
        let plans = store.load().await.expect("load");
        let ids: Vec<&str> = plans.iter().map(|p| p.plan.as_str()).collect();
        assert_eq!(ids, ["kept"]);
    }

    #[test]
    fn an_unusable_state_dir_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = LocalStore::open(&file).err();
        assert!(
            matches!(&err, Some(StoreError::Io(m)) if m.contains(&*file.to_string_lossy())),
            "expected Io naming the path, got {err:?}"
        );
    }
}
