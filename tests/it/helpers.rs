//! Shared test helpers: real databases, the corpus, and the built binary.

use std::path::PathBuf;
use std::sync::Arc;

use initdesk_gateway::pipeline::{Pipeline, ReplyTokens, Settings};
use initdesk_gateway::store::blobs::FsBlobStore;
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
    pub store: Store,
    pub pipeline: Pipeline,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
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
        let (url, pg_name) = match db {
            Db::Sqlite => (
                format!("sqlite://{}", dir.path().join("gateway.db").display()),
                None,
            ),
            Db::Postgres => {
                let (url, name) = fresh_postgres().await;
                (url, Some(name))
            }
        };
        let store = store::open(&url, 4).await.expect("open store");
        let mut tx = store.begin().await.expect("begin");
        for org in initdesk_gateway::replay::default_world() {
            orgs::apply_config(&mut tx, &org).await.expect("world");
        }
        tx.commit().await.expect("commit");
        let pipeline = Pipeline::new(
            store.clone(),
            Arc::new(FsBlobStore::new(dir.path().join("blobs"))),
            settings,
            ReplyTokens::new(b"test-secret".to_vec()),
        );
        TestGateway {
            store,
            pipeline,
            dir,
            pg_name,
        }
    }

    /// Drops the PostgreSQL database, if any.
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some(name) = self.pg_name {
            drop_postgres(&name).await;
        }
    }
}

/// Creates an empty database on the test server; returns its URL and name.
pub async fn fresh_postgres() -> (String, String) {
    use sqlx::Connection;
    let base = postgres_url();
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required at {base} (the test command starts it): {e}")
        });
    let name = format!("idk_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    conn.close().await.expect("close");
    (
        initdesk_gateway::replay::replace_db_name(&base, &name),
        name,
    )
}

/// Drops a database made by [`fresh_postgres`].
pub async fn drop_postgres(name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}
