//! Every fixture case under `fixtures/cases`, on both backends, through the code `replay` runs.

use std::path::PathBuf;

use initdesk_gateway::replay::{self, CaseDatabase};

use crate::helpers::postgres_url;

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cases")
}

async fn run_all(db: CaseDatabase) {
    let reports = replay::run_dir(&cases_dir(), &db)
        .await
        .expect("fixture cases run");
    assert!(
        reports.len() >= 40,
        "SPEC 5.6 asks for at least 40 cases, found {}",
        reports.len()
    );
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("=== {} ===\n{}", r.name, r.diff))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} fixture cases failed:\n\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_cases_on_sqlite() {
    run_all(CaseDatabase::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_cases_on_postgres() {
    run_all(CaseDatabase::Postgres(postgres_url())).await;
}
