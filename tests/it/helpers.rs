//! Shared test helpers: real databases, the corpus, and the built binary.

use std::path::PathBuf;
use std::sync::Arc;

use initdesk_gateway::pipeline::{Pipeline, ReplyTokens, Settings};
use initdesk_gateway::store::blobs::FsBlobStore;
use initdesk_gateway::store::scratch::ScratchPostgres;
use initdesk_gateway::store::{self, Store, orgs};

/// The PostgreSQL server tests use. It must be running: the README test command starts it,
/// and a test that cannot reach it fails rather than skipping.
pub fn postgres_url() -> String {
    std::env::var("INITDESK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `../shared/corpus`, which must exist beside the project.
pub fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(
        dir.is_dir(),
        "the shared mail corpus is missing at {} (it lives beside the project checkout)",
        dir.display()
    );
    dir
}

/// The built `initdesk-gateway` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_initdesk-gateway"))
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh, migrated database with the fixture world, plus a pipeline over it.
pub struct TestGateway {
    /// The database's URL, for a second connection pool (another "instance").
    pub url: String,
    pub store: Store,
    pub pipeline: Pipeline,
    pub dir: tempfile::TempDir,
    pg: Option<ScratchPostgres>,
}

impl TestGateway {
    /// A new gateway on `db` with the default fixture world (Acme and Globex).
    pub async fn new(db: Db) -> TestGateway {
        Self::with_settings(
            db,
            Settings {
                public_url: "http://gateway.test".into(),
                ..Settings::default()
            },
        )
        .await
    }

    /// A new gateway with explicit pipeline settings.
    pub async fn with_settings(db: Db, settings: Settings) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, pg) = match db {
            Db::Sqlite => (
                format!("sqlite://{}", dir.path().join("gateway.db").display()),
                None,
            ),
            Db::Postgres => {
                let (url, db) = fresh_postgres().await;
                (url, Some(db))
            }
        };
        let store = store::open(&url, 4).await.expect("open store");
        let mut tx = store.begin().await.expect("begin");
        for org in initdesk_gateway::replay::default_world() {
            orgs::apply_config(&mut tx, &org).await.expect("world");
        }
        tx.commit().await.expect("commit");
        let pipeline = pipeline_over(&store, dir.path(), settings);
        TestGateway {
            url,
            store,
            pipeline,
            dir,
            pg,
        }
    }

    /// Drops the PostgreSQL database, if any.
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some(db) = self.pg {
            drop_postgres(db).await;
        }
    }
}

/// A pipeline over `store` keeping blobs under `dir`, as every test gateway has.
pub fn pipeline_over(store: &Store, dir: &std::path::Path, settings: Settings) -> Pipeline {
    Pipeline::new(
        store.clone(),
        Arc::new(FsBlobStore::new(dir.join("blobs"))),
        settings,
        ReplyTokens::new(b"test-secret".to_vec()),
    )
}

/// Creates an empty database on the test server; returns its URL and a handle to drop it.
pub async fn fresh_postgres() -> (String, ScratchPostgres) {
    let base = postgres_url();
    let db = ScratchPostgres::create(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required at {base} (the test command starts it): {e}")
    });
    (db.url.clone(), db)
}

/// Drops a database made by [`fresh_postgres`].
pub async fn drop_postgres(db: ScratchPostgres) {
    db.drop_database().await;
}
