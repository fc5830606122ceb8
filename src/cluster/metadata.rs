//! The metadata side of cluster mode: the records, the dedup decision, listings, search
//! and totals in PostgreSQL (SPEC §8), shared by every node.
//!
//! # Schema (created at start when missing; every statement is idempotent)
//! - `rhinobox_files`: one row per stored content, `hash` (bytea, 32 bytes) its primary
//!   key — **the dedup decision**: two nodes inserting the same hash at once meet on the
//!   unique index; the second insert waits for the first transaction and then finds the
//!   row (`ON CONFLICT DO NOTHING` inserts nothing), so exactly one wins and the other
//!   answers `duplicate`. `path` is unique too (a taken name gets a longer hash prefix, as
//!   on one host). Each row names where its bytes are: `object_key` and `object_offset` in
//!   the blob cluster (a pack of small files, or an object of its own).
//! - `rhinobox_objects`: one row per blob-cluster object ever committed, with how many of
//!   its files and bytes are still live and since when it is empty: the ground of the
//!   background reclaim (`super::reclaim`).
//! - `rhinobox_totals`: files and bytes per media type, in [`TOTALS_SHARDS`] rows per
//!   type so that nodes committing at the same moment rarely update the same row;
//!   `/statistics` sums them (no count over the files table).
//!
//! # Indexes, and why they stay fast at 10^8 rows
//! - primary key `hash` and unique `path`: every download, metadata lookup, delete and
//!   dedup check is one B-tree probe (depth ~4–5 at 10^8 rows);
//! - `seq` (an identity column, the commit order) descending, alone and after
//!   `media_type`: a listing page is an index range scan of `limit` rows from the newest
//!   end; `category` uses a `text_pattern_ops` index for the prefix (`LIKE 'a/b/%'`);
//! - `lower(original_name)` with a trigram GIN index (`pg_trgm`): the case-insensitive
//!   substring search of `name=` without reading every row;
//! - `object_key`: the files of one pack, when a pack is rewritten.
//!
//! Page `n` of a listing reads `(n − 1) · limit` index entries before the page (OFFSET);
//! a listing's `total` is a count over the matching index range, so very broad filters
//! on a very large table cost more than a page: written down in README.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::store::blobs::{NAME_PREFIX_HEX_LENGTHS, with_prefix};
use crate::store::index::Hash;
use crate::store::journal::FileRecord;

/// Rows of `rhinobox_totals` per media type (see the module docs).
pub const TOTALS_SHARDS: i32 = 16;
/// Longest wait for a connection of the pool before the request gets 503.
const POOL_WAIT_MAX: Duration = Duration::from_secs(5);
/// Longest wait for a new connection (TCP + auth).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a statement may run before the request fails (and its transaction rolls back).
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE IF NOT EXISTS rhinobox_files (
    hash bytea PRIMARY KEY,
    path text NOT NULL UNIQUE,
    mime_type text NOT NULL,
    media_type text NOT NULL,
    category text NOT NULL,
    size bigint NOT NULL,
    original_name text NOT NULL,
    comment text NOT NULL,
    uploaded_at text NOT NULL,
    uploaded_s bigint NOT NULL,
    object_key text NOT NULL,
    object_offset bigint NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX IF NOT EXISTS rhinobox_files_seq ON rhinobox_files (seq DESC);
CREATE INDEX IF NOT EXISTS rhinobox_files_media_type ON rhinobox_files (media_type, seq DESC);
CREATE INDEX IF NOT EXISTS rhinobox_files_category
    ON rhinobox_files (category text_pattern_ops);
CREATE INDEX IF NOT EXISTS rhinobox_files_object ON rhinobox_files (object_key);
CREATE INDEX IF NOT EXISTS rhinobox_files_name
    ON rhinobox_files USING gin (lower(original_name) gin_trgm_ops);
CREATE TABLE IF NOT EXISTS rhinobox_objects (
    key text PRIMARY KEY,
    size bigint NOT NULL,
    live_files bigint NOT NULL,
    live_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    emptied_at timestamptz
);
CREATE INDEX IF NOT EXISTS rhinobox_objects_empty
    ON rhinobox_objects (emptied_at) WHERE live_files = 0;
CREATE TABLE IF NOT EXISTS rhinobox_totals (
    media_type text NOT NULL,
    shard int NOT NULL,
    files bigint NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (media_type, shard)
);
"#;

/// The columns of a record, in the order [`record_of`] reads them.
const RECORD_COLUMNS: &str = "hash, path, mime_type, media_type, category, size, \
                              original_name, comment, uploaded_at, object_key, object_offset";

/// A failed metadata operation.
#[derive(Debug)]
pub enum MetadataError {
    /// PostgreSQL did not answer or the connection broke: retry later (503).
    Unavailable(String),
    /// PostgreSQL answered with an error: a bug or a misconfiguration (500).
    Failed(String),
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataError::Unavailable(why) => write!(f, "PostgreSQL unavailable: {why}"),
            MetadataError::Failed(why) => write!(f, "PostgreSQL error: {why}"),
        }
    }
}

impl From<tokio_postgres::Error> for MetadataError {
    fn from(e: tokio_postgres::Error) -> MetadataError {
        // A server-side error (constraint, syntax, permission) has a SQLSTATE; a closed
        // connection or an I/O error has none and is worth a retry.
        match e.code() {
            Some(code) if !is_transient(code.code()) => MetadataError::Failed(error_text(&e)),
            _ => MetadataError::Unavailable(error_text(&e)),
        }
    }
}

/// SQLSTATE classes that mean "try again later": connection exceptions (08), operator
/// intervention such as a shutdown (57), insufficient resources (53), and serialization
/// or deadlock failures (40).
fn is_transient(code: &str) -> bool {
    ["08", "57", "53", "40"].iter().any(|c| code.starts_with(c))
}

/// The error and its source (tokio-postgres puts the useful part in the source).
fn error_text(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// A record and where its bytes are in the blob cluster.
#[derive(Clone, Debug)]
pub struct Located {
    pub record: FileRecord,
    pub object_key: String,
    pub object_offset: u64,
}

/// One file a commit stores: its record (the path with the 12-digit prefix) and where
/// its bytes are: object number `object` of the commit, at `object_offset`.
pub struct NewFile {
    pub hash: Hash,
    pub record: FileRecord,
    pub object: usize,
    pub object_offset: u64,
}

/// An object of the blob cluster a commit names: its key and size.
pub struct NewObject {
    pub key: String,
    pub size: u64,
}

/// What a commit decided for one file, in the order given.
#[derive(Debug)]
pub enum Committed {
    /// Stored now under this record (its path may carry a longer prefix).
    Stored(FileRecord),
    /// The content was stored already (before, or by another node in the same moment).
    Duplicate(FileRecord),
}

/// One page of a listing or a search, and the number of matches.
pub struct Page {
    pub files: Vec<FileRecord>,
    pub total: u64,
}

/// A listing filter; `None` fields match everything.
#[derive(Default, Clone)]
pub struct Filter {
    pub media_type: Option<String>,
    /// A category prefix at a `/` boundary.
    pub category: Option<String>,
    /// Lowercase substring of the original name.
    pub name: Option<String>,
    /// Stored extension, without the dot.
    pub ext: Option<String>,
    pub from_s: Option<i64>,
    pub to_s: Option<i64>,
}

/// A connection with its prepared statements.
struct Connection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Connection {
    async fn statement(&mut self, sql: &'static str) -> Result<Statement, MetadataError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// A bounded pool of connections; a broken connection is dropped and replaced on demand,
/// so PostgreSQL coming back needs no restart.
pub struct PgMetadata {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    schema_ready: AtomicBool,
    /// This node's rows of `rhinobox_totals`.
    totals_shard: i32,
}

/// A connection lent by the pool; back into the pool on drop unless it broke.
struct Lent<'a> {
    pool: &'a PgMetadata,
    connection: Option<Connection>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && !connection.client.is_closed()
            && let Ok(mut idle) = self.pool.idle.try_lock()
        {
            idle.push(connection);
        }
    }
}

impl Lent<'_> {
    fn get(&mut self) -> &mut Connection {
        self.connection
            .as_mut()
            .expect("a lent connection is present until drop")
    }
}

impl PgMetadata {
    /// A pool for `url` (`postgres://user:password@host:port/db`) of at most
    /// `connections_max` connections. Connects lazily; see [`PgMetadata::check`].
    pub fn new(url: &str, connections_max: usize, totals_shard: i32) -> Result<PgMetadata, String> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("{url_shown}: {e}", url_shown = redact(url)))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("rhinobox")
            .options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        Ok(PgMetadata {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(connections_max.max(1)),
            schema_ready: AtomicBool::new(false),
            totals_shard: totals_shard.rem_euclid(TOTALS_SHARDS),
        })
    }

    /// Connects once and creates the schema when missing.
    pub async fn check(&self) -> Result<(), MetadataError> {
        self.lend().await.map(drop)
    }

    async fn lend(&self) -> Result<Lent<'_>, MetadataError> {
        let permit = tokio::time::timeout(POOL_WAIT_MAX, self.permits.acquire())
            .await
            .map_err(|_| MetadataError::Unavailable("every connection is busy".into()))?
            .expect("the pool's semaphore is never closed");
        let reused = {
            let mut idle = self.idle.lock().await;
            let mut found = None;
            while let Some(connection) = idle.pop() {
                if !connection.client.is_closed() {
                    found = Some(connection);
                    break;
                }
            }
            found
        };
        let connection = match reused {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        Ok(Lent {
            pool: self,
            connection: Some(connection),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Connection, MetadataError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| MetadataError::Unavailable(error_text(&e)))?;
        tokio::spawn(async move {
            // The connection ends when PostgreSQL goes away or the client is dropped;
            // the pool notices through `is_closed`.
            let _ = connection.await;
        });
        if !self.schema_ready.load(Ordering::Acquire) {
            client.batch_execute(SCHEMA).await?;
            self.schema_ready.store(true, Ordering::Release);
        }
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    /// The stored records of these hashes (those that are stored).
    pub async fn lookup_hashes(&self, hashes: &[Hash]) -> Result<Vec<Located>, MetadataError> {
        const SQL: &str = "SELECT hash, path, mime_type, media_type, category, size, \
                           original_name, comment, uploaded_at, object_key, object_offset \
                           FROM rhinobox_files WHERE hash = ANY($1)";
        let keys: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let statement = connection.statement(SQL).await?;
        let rows = connection.client.query(&statement, &[&keys]).await?;
        Ok(rows.iter().map(located_of).collect())
    }

    pub async fn by_hash(&self, hash: &Hash) -> Result<Option<Located>, MetadataError> {
        Ok(self.lookup_hashes(std::slice::from_ref(hash)).await?.pop())
    }

    pub async fn by_path(&self, path: &str) -> Result<Option<Located>, MetadataError> {
        const SQL: &str = "SELECT hash, path, mime_type, media_type, category, size, \
                           original_name, comment, uploaded_at, object_key, object_offset \
                           FROM rhinobox_files WHERE path = $1";
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let statement = connection.statement(SQL).await?;
        let row = connection.client.query_opt(&statement, &[&path]).await?;
        Ok(row.as_ref().map(located_of))
    }

    /// Commits the files whose bytes are in `objects` in one transaction: the dedup
    /// decision, the records, the objects' rows (with their live counts), the totals.
    /// Answers per file, in order. Files are inserted in ascending hash order, so two
    /// nodes committing overlapping sets wait on each other in one order (no deadlock).
    pub async fn commit(
        &self,
        objects: &[NewObject],
        files: &[NewFile],
    ) -> Result<Vec<Committed>, MetadataError> {
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let insert = connection.statement(INSERT_FILES).await?;
        let insert_object = connection.statement(INSERT_OBJECT).await?;
        let add_totals = connection.statement(ADD_TOTALS).await?;
        let transaction = connection.client.transaction().await?;
        let mut outcome: Vec<Option<Committed>> = (0..files.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..files.len()).collect();
        pending.sort_by_key(|&i| files[i].hash);
        // Each round tries the next prefix length for the files whose path was taken.
        for &prefix_len in &NAME_PREFIX_HEX_LENGTHS {
            if pending.is_empty() {
                break;
            }
            let paths: Vec<String> = pending
                .iter()
                .map(|&i| with_prefix(&files[i].record.path, &files[i].record.hash, prefix_len))
                .collect();
            let columns = InsertColumns::new(files, &pending, &paths, objects);
            let inserted: Vec<Vec<u8>> = transaction
                .query(&insert, &columns.params())
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let mut not_inserted = Vec::new();
            for (n, &i) in pending.iter().enumerate() {
                if inserted
                    .iter()
                    .any(|h| h.as_slice() == files[i].hash.as_slice())
                {
                    let mut record = files[i].record.clone();
                    record.path = paths[n].clone();
                    outcome[i] = Some(Committed::Stored(record));
                } else {
                    not_inserted.push(i);
                }
            }
            if not_inserted.is_empty() {
                break;
            }
            // Not inserted: the hash is stored (a duplicate), or the path is taken.
            let hashes: Vec<&[u8]> = not_inserted
                .iter()
                .map(|&i| files[i].hash.as_slice())
                .collect();
            let sql = format!("SELECT {RECORD_COLUMNS} FROM rhinobox_files WHERE hash = ANY($1)");
            let stored: Vec<Located> = transaction
                .query(&sql, &[&hashes])
                .await?
                .iter()
                .map(located_of)
                .collect();
            pending.clear();
            for i in not_inserted {
                match stored
                    .iter()
                    .find(|l| l.record.hash == files[i].record.hash)
                {
                    Some(found) => outcome[i] = Some(Committed::Duplicate(found.record.clone())),
                    None => pending.push(i),
                }
            }
        }
        if !pending.is_empty() {
            return Err(MetadataError::Failed(
                "every name with every hash prefix is taken".into(),
            ));
        }
        let mut live = vec![(0i64, 0i64); objects.len()];
        let mut stored: Vec<&FileRecord> = Vec::with_capacity(files.len());
        for (file, decided) in files.iter().zip(&outcome) {
            if let Some(Committed::Stored(record)) = decided {
                live[file.object].0 += 1;
                live[file.object].1 += record.size as i64;
                stored.push(record);
            }
        }
        for (object, (live_files, live_bytes)) in objects.iter().zip(&live) {
            transaction
                .execute(
                    &insert_object,
                    &[&object.key, &(object.size as i64), live_files, live_bytes],
                )
                .await?;
        }
        let mut by_type: HashMap<&str, (i64, i64)> = HashMap::new();
        for record in &stored {
            let entry = by_type.entry(record.media_type.as_str()).or_default();
            entry.0 += 1;
            entry.1 += record.size as i64;
        }
        let mut types: Vec<_> = by_type.into_iter().collect();
        types.sort_unstable();
        for (media_type, (files_n, bytes_n)) in types {
            transaction
                .execute(
                    &add_totals,
                    &[&media_type, &self.totals_shard, &files_n, &bytes_n],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(outcome
            .into_iter()
            .map(|o| o.expect("every file was decided"))
            .collect())
    }

    /// Deletes the record of `hash` and counts its bytes out of its object and the
    /// totals, in one transaction; `None` when not stored.
    pub async fn delete(&self, hash: &Hash) -> Result<Option<Located>, MetadataError> {
        const DELETE: &str = "DELETE FROM rhinobox_files WHERE hash = $1 RETURNING hash, path, \
                              mime_type, media_type, category, size, original_name, comment, \
                              uploaded_at, object_key, object_offset";
        const RELEASE: &str = "UPDATE rhinobox_objects SET live_files = live_files - 1, \
                               live_bytes = live_bytes - $2, emptied_at = CASE WHEN \
                               live_files = 1 THEN now() ELSE emptied_at END WHERE key = $1";
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let delete = connection.statement(DELETE).await?;
        let release = connection.statement(RELEASE).await?;
        let add_totals = connection.statement(ADD_TOTALS).await?;
        let transaction = connection.client.transaction().await?;
        let Some(row) = transaction.query_opt(&delete, &[&hash.as_slice()]).await? else {
            return Ok(None);
        };
        let located = located_of(&row);
        let size = located.record.size as i64;
        transaction
            .execute(&release, &[&located.object_key, &size])
            .await?;
        transaction
            .execute(
                &add_totals,
                &[
                    &located.record.media_type,
                    &self.totals_shard,
                    &-1i64,
                    &-size,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(Some(located))
    }

    /// Files and bytes per media type (types with files only), summed over the shards.
    pub async fn totals(&self) -> Result<Vec<(String, u64, u64)>, MetadataError> {
        const SQL: &str = "SELECT media_type, sum(files)::bigint, sum(bytes)::bigint FROM \
                           rhinobox_totals GROUP BY media_type HAVING sum(files) > 0 \
                           ORDER BY media_type";
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let statement = connection.statement(SQL).await?;
        let rows = connection.client.query(&statement, &[]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let files: i64 = row.get(1);
                let bytes: i64 = row.get(2);
                (row.get(0), files.max(0) as u64, bytes.max(0) as u64)
            })
            .collect())
    }

    /// Newest first: `limit` files after `offset`, and the number of matches.
    pub async fn page(
        &self,
        filter: &Filter,
        offset: u64,
        limit: u64,
    ) -> Result<Page, MetadataError> {
        let mut where_ = Conditions::default();
        if let Some(media_type) = &filter.media_type {
            let p = where_.bind(media_type.clone());
            where_.push(format!("media_type = {p}"));
        }
        if let Some(category) = &filter.category {
            let exact = where_.bind(category.clone());
            let below = where_.bind(format!("{}/%", escape_like(category)));
            where_.push(format!("(category = {exact} OR category LIKE {below})"));
        }
        if let Some(name) = &filter.name {
            let p = where_.bind(format!("%{}%", escape_like(name)));
            where_.push(format!("lower(original_name) LIKE {p}"));
        }
        if let Some(ext) = &filter.ext {
            let p = where_.bind(format!("%.{}", escape_like(ext)));
            where_.push(format!("path LIKE {p}"));
        }
        if let Some(from) = filter.from_s {
            let p = where_.bind(from);
            where_.push(format!("uploaded_s >= {p}"));
        }
        if let Some(to) = filter.to_s {
            let p = where_.bind(to);
            where_.push(format!("uploaded_s <= {p}"));
        }
        let Conditions {
            sql: conditions,
            params,
        } = where_;
        let condition = if conditions.is_empty() {
            "TRUE".to_string()
        } else {
            conditions.join(" AND ")
        };
        let n = params.len();
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM rhinobox_files WHERE {condition} ORDER BY seq DESC \
             OFFSET ${} LIMIT ${}",
            n + 1,
            n + 2
        );
        let count_sql = format!("SELECT count(*) FROM rhinobox_files WHERE {condition}");
        let offset = offset.min(i64::MAX as u64) as i64;
        let limit = limit.min(i64::MAX as u64) as i64;
        let mut page_params: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let count_params = page_params.clone();
        page_params.push(&offset);
        page_params.push(&limit);
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let (rows, count) = futures_util::future::try_join(
            connection.client.query(&sql, &page_params),
            connection.client.query_one(&count_sql, &count_params),
        )
        .await?;
        let total: i64 = count.get(0);
        Ok(Page {
            files: rows.iter().map(|row| located_of(row).record).collect(),
            total: total.max(0) as u64,
        })
    }

    /// Objects that hold no live file since before `grace` (oldest first, at most `max`).
    pub async fn empty_objects(
        &self,
        grace: Duration,
        max: i64,
    ) -> Result<Vec<String>, MetadataError> {
        const SQL: &str = "SELECT key FROM rhinobox_objects WHERE live_files = 0 AND \
                           emptied_at < now() - make_interval(secs => $1) \
                           ORDER BY emptied_at LIMIT $2";
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let statement = connection.statement(SQL).await?;
        let rows = connection
            .client
            .query(&statement, &[&grace.as_secs_f64(), &max])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Whether these objects have a row (committed); the others are strays.
    pub async fn known_objects(&self, keys: &[String]) -> Result<Vec<String>, MetadataError> {
        const SQL: &str = "SELECT key FROM rhinobox_objects WHERE key = ANY($1)";
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let statement = connection.statement(SQL).await?;
        let rows = connection.client.query(&statement, &[&keys]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Forgets an empty object after its blob was removed (only while it is still empty).
    pub async fn forget_object(&self, key: &str) -> Result<(), MetadataError> {
        const SQL: &str = "DELETE FROM rhinobox_objects WHERE key = $1 AND live_files = 0";
        let mut lent = self.lend().await?;
        let connection = lent.get();
        let statement = connection.statement(SQL).await?;
        connection.client.execute(&statement, &[&key]).await?;
        Ok(())
    }
}

const INSERT_FILES: &str = "INSERT INTO rhinobox_files (hash, path, mime_type, media_type, \
    category, size, original_name, comment, uploaded_at, uploaded_s, object_key, \
    object_offset) SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], \
    $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
    $11::text[], $12::bigint[]) ON CONFLICT DO NOTHING RETURNING hash";

const INSERT_OBJECT: &str = "INSERT INTO rhinobox_objects (key, size, live_files, live_bytes, \
    emptied_at) VALUES ($1, $2, $3::bigint, $4, CASE WHEN $3::bigint = 0 THEN now() END)";

const ADD_TOTALS: &str = "INSERT INTO rhinobox_totals (media_type, shard, files, bytes) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (media_type, shard) DO UPDATE SET \
    files = rhinobox_totals.files + excluded.files, \
    bytes = rhinobox_totals.bytes + excluded.bytes";

/// The WHERE clause of a listing, with its parameters numbered as they are bound.
#[derive(Default)]
struct Conditions {
    sql: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Conditions {
    /// Binds a parameter; answers its placeholder (`$n`).
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn push(&mut self, condition: String) {
        self.sql.push(condition);
    }
}

/// The column arrays of one multi-row insert (`unnest` of one array per column).
struct InsertColumns<'a> {
    hash: Vec<&'a [u8]>,
    path: Vec<&'a str>,
    mime_type: Vec<&'a str>,
    media_type: Vec<&'a str>,
    category: Vec<&'a str>,
    size: Vec<i64>,
    original_name: Vec<&'a str>,
    comment: Vec<&'a str>,
    uploaded_at: Vec<&'a str>,
    uploaded_s: Vec<i64>,
    object_key: Vec<&'a str>,
    object_offset: Vec<i64>,
}

impl<'a> InsertColumns<'a> {
    fn new(
        files: &'a [NewFile],
        pending: &[usize],
        paths: &'a [String],
        objects: &'a [NewObject],
    ) -> InsertColumns<'a> {
        let pick = |f: fn(&'a NewFile) -> &'a str| -> Vec<&'a str> {
            pending.iter().map(|&i| f(&files[i])).collect()
        };
        InsertColumns {
            hash: pending.iter().map(|&i| files[i].hash.as_slice()).collect(),
            path: paths.iter().map(String::as_str).collect(),
            mime_type: pick(|f| &f.record.mime_type),
            media_type: pick(|f| &f.record.media_type),
            category: pick(|f| &f.record.category),
            size: pending
                .iter()
                .map(|&i| files[i].record.size as i64)
                .collect(),
            original_name: pick(|f| &f.record.original_name),
            comment: pick(|f| &f.record.comment),
            uploaded_at: pick(|f| &f.record.uploaded_at),
            uploaded_s: pending
                .iter()
                .map(|&i| unix_seconds(&files[i].record.uploaded_at))
                .collect(),
            object_key: pending
                .iter()
                .map(|&i| objects[files[i].object].key.as_str())
                .collect(),
            object_offset: pending
                .iter()
                .map(|&i| files[i].object_offset as i64)
                .collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.hash,
            &self.path,
            &self.mime_type,
            &self.media_type,
            &self.category,
            &self.size,
            &self.original_name,
            &self.comment,
            &self.uploaded_at,
            &self.uploaded_s,
            &self.object_key,
            &self.object_offset,
        ]
    }
}

/// Seconds since the epoch of an RFC 3339 time (0 when it does not parse: records are
/// made by the daemon, with a time it formatted).
fn unix_seconds(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `%`, `_` and `\` taken literally in a LIKE pattern (the default escape is `\`).
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The URL with its password replaced, for error lines.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn located_of(row: &Row) -> Located {
    let hash: Vec<u8> = row.get(0);
    let size: i64 = row.get(5);
    let offset: i64 = row.get(10);
    Located {
        record: FileRecord {
            path: row.get(1),
            mime_type: row.get(2),
            media_type: row.get(3),
            category: row.get(4),
            hash: hex(&hash),
            size: size.max(0) as u64,
            original_name: row.get(6),
            comment: row.get(7),
            uploaded_at: row.get(8),
        },
        object_key: row.get(9),
        object_offset: offset.max(0) as u64,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Used by [`PgMetadata`] callers that hold an `Arc`.
pub type SharedMetadata = Arc<PgMetadata>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_literal() {
        assert_eq!(escape_like("a_b%c\\d"), "a\\_b\\%c\\\\d");
    }

    #[test]
    fn passwords_stay_out_of_error_lines() {
        assert_eq!(
            redact("postgres://user:secret@127.0.0.1:5432/db"),
            "postgres://user:***@127.0.0.1:5432/db"
        );
        assert_eq!(redact("postgres://127.0.0.1/db"), "postgres://127.0.0.1/db");
    }

    #[test]
    fn record_times_become_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:01:00Z"), 60);
        assert_eq!(unix_seconds("garbage"), 0);
    }
}
