//! Pipeline throughput benchmark (issue 2): messages per second through the whole inbound
//! pipeline into SQLite and PostgreSQL, with peak memory. Results and how to read them are in
//! `docs/benchmarks.md`.
//!
//! ```text
//! cargo bench --bench pipeline -- [--backend sqlite|postgres|both|prepare] [--messages N]
//!     [--batch B] [--inflight K] [--seed S] [--blobs fs|nosync] [--stages] [--count-sql]
//!     [--postgres-url URL] [--spool PATH]
//! ```
//!
//! How it works:
//! 1. A deterministic generator (seeded `StdRng`) writes the corpus message by message to a
//!    spool file in a temporary directory: never more than one message plus a bounded
//!    threading state is in memory. Generation is timed separately and is not in the figures.
//! 2. Each backend runs in its own child process (this binary re-executed with `--child`), so
//!    its peak RSS (`VmHWM`) is its own. The child streams the spool batch by batch into
//!    `Pipeline::ingest_batch` (one transaction per batch), keeping `--inflight` batches in
//!    flight, samples RSS at 25/50/75/100 % and checks every outcome against what the
//!    generator meant (new request -> created, reply -> appended, redelivery -> duplicate).
//!    Only the ingest loop is timed; the next batch is read from the spool (page cache) while
//!    the previous one is in flight.
//! 3. Diagnostics: `--backend prepare` runs only the prepare step (no database) the way
//!    `ingest_batch` runs it; `--stages` times each step of `prepare` (parse, compression,
//!    attachment files, sanitize, html2text, language) on one thread, with a few what-ifs;
//!    `--count-sql` counts the SQL statements per message and sqlx's time for each kind.
//!
//! Without `--bench` (that is, under `cargo test --benches` or `--all-targets`), it runs a
//! 300-message smoke corpus through both backends and fails when an outcome is unexpected.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use initdesk_gateway::config::LimitsConfig;
use initdesk_gateway::pipeline::{
    Delivery, Envelope, IngestError, Outcome, Pipeline, Recipient, ReplyTokens, Settings, Source,
    parse, prepare,
};
use initdesk_gateway::store::blobs::{self, BlobStore, FsBlobStore};
use initdesk_gateway::store::{self, Store, orgs};
use serde::{Deserialize, Serialize};

#[path = "common/corpus.rs"]
mod corpus;
use corpus::*;

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

const USAGE: &str = "usage: cargo bench --bench pipeline -- [options]
  --backend sqlite|postgres|both   databases to run (default both); `prepare` runs only the
                                   prepare step (parse, render, compress, attachment files)
                                   as ingest_batch runs it, with no database
  --messages N                     corpus size (default 10000)
  --batch B                        messages per ingest_batch transaction (default 200)
  --inflight K                     ingest_batch calls in flight at once (default 2: the next
                                   batch prepares while the previous one commits)
  --seed S                         corpus seed (default 2)
  --attachments PCT                share of messages with a 50-500 KB attachment (default 5)
  --blobs fs|nosync                blob store: the real FsBlobStore (default), or the same
                                   files without fsync (experiment: what the fsyncs cost)
  --stages                         also time each prepare step on one thread
  --count-sql                      also count SQL statements per message (slower run)
  --postgres-url URL               server for the fresh database (default
                                   $INITDESK_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/test)
  --sqlite-pragmas 'P=V;...'       experiment: PRAGMAs for every pooled SQLite connection
  --spool PATH                     keep the generated corpus at PATH; profile one backend with
                                   <bench binary> --child sqlite --spool PATH [--messages ...]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
    /// No database: only the prepare step, run the way `ingest_batch` runs it.
    PrepareOnly,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
            Db::PrepareOnly => "prepare",
        }
    }

    fn from_name(s: &str) -> Option<Db> {
        match s {
            "sqlite" => Some(Db::Sqlite),
            "postgres" | "postgresql" | "pg" => Some(Db::Postgres),
            "prepare" => Some(Db::PrepareOnly),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobMode {
    Fs,
    NoSync,
}

impl BlobMode {
    fn name(self) -> &'static str {
        match self {
            BlobMode::Fs => "fs",
            BlobMode::NoSync => "nosync",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    backends: Vec<Db>,
    messages: usize,
    batch: usize,
    inflight: usize,
    seed: u64,
    /// Share of messages with an attachment, in percent.
    attachment_pct: f64,
    blobs: BlobMode,
    stages: bool,
    count_sql: bool,
    postgres_url: String,
    /// Experiment: PRAGMAs run on every pooled SQLite connection before the run.
    sqlite_pragmas: Option<String>,
    /// Set in the child process: the backend to run and the spool to read.
    child: Option<(Db, PathBuf)>,
    /// Parent: write the corpus here and keep it (to profile a child by hand).
    keep_spool: Option<PathBuf>,
    /// `cargo bench` passes `--bench`; without it this is a `cargo test` smoke run.
    smoke: bool,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = !args.iter().any(|a| a == "--bench" || a == "--child");
        let mut o = Options {
            backends: vec![Db::Sqlite, Db::Postgres],
            messages: if smoke { 300 } else { 10_000 },
            batch: if smoke { 50 } else { 200 },
            inflight: 2,
            seed: 2,
            attachment_pct: 5.0,
            blobs: BlobMode::Fs,
            stages: false,
            count_sql: false,
            postgres_url: std::env::var("INITDESK_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            child: None,
            keep_spool: None,
            sqlite_pragmas: None,
            smoke,
        };
        let mut child_db = None;
        let mut spool = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{key} needs a value"))
            };
            match key.as_str() {
                "--bench" => {}
                "--backend" => {
                    let v = value()?;
                    o.backends = match (v.as_str(), Db::from_name(&v)) {
                        ("both", _) => vec![Db::Sqlite, Db::Postgres],
                        (_, Some(db)) => vec![db],
                        _ => {
                            return Err(format!(
                                "--backend {v}: expected sqlite, postgres, both or prepare"
                            ));
                        }
                    }
                }
                "--messages" => o.messages = number(&key, &value()?)?,
                "--batch" => o.batch = number(&key, &value()?)?.max(1),
                "--inflight" => o.inflight = number(&key, &value()?)?.max(1),
                "--seed" => o.seed = number(&key, &value()?)? as u64,
                "--attachments" => {
                    let v = value()?;
                    o.attachment_pct = v
                        .trim_end_matches('%')
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| format!("--attachments {v}: a percentage"))?;
                }
                "--blobs" => {
                    o.blobs = match value()?.as_str() {
                        "fs" => BlobMode::Fs,
                        "nosync" => BlobMode::NoSync,
                        other => return Err(format!("--blobs {other}: expected fs or nosync")),
                    }
                }
                "--stages" => o.stages = true,
                "--count-sql" => o.count_sql = true,
                "--postgres-url" => o.postgres_url = value()?,
                "--sqlite-pragmas" => o.sqlite_pragmas = Some(value()?),
                "--child" => {
                    let v = value()?;
                    child_db = Some(Db::from_name(&v).ok_or_else(|| format!("--child {v}?"))?);
                }
                "--spool" => spool = Some(PathBuf::from(value()?)),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        match (child_db, spool) {
            (Some(db), Some(spool)) => o.child = Some((db, spool)),
            (None, spool) => o.keep_spool = spool,
            (Some(_), None) => return Err("--child needs --spool".into()),
        }
        Ok(o)
    }

    /// Replies and redeliveries only point at messages at least this many messages back, so
    /// the message they refer to is committed before they are ingested (batches ahead of it
    /// are at most `inflight - 1`). Real follow-ups come minutes to days later, too.
    fn reply_lag(&self) -> usize {
        (self.messages / 10)
            .min(1000)
            .max(self.inflight * self.batch)
    }

    fn child_args(&self, db: Db, spool: &Path) -> Vec<String> {
        let mut a = vec![
            "--child".into(),
            db.name().into(),
            "--spool".into(),
            spool.display().to_string(),
            "--messages".into(),
            self.messages.to_string(),
            "--batch".into(),
            self.batch.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            "--blobs".into(),
            self.blobs.name().into(),
            "--postgres-url".into(),
            self.postgres_url.clone(),
        ];
        if let Some(p) = &self.sqlite_pragmas {
            a.push("--sqlite-pragmas".into());
            a.push(p.clone());
        }
        if self.count_sql {
            a.push("--count-sql".into());
        }
        a
    }
}

fn number(key: &str, v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{key} {v}: not a number"))
}

fn main() {
    let opts = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let result = match &opts.child {
        Some((db, spool)) => child_main(&opts, *db, spool),
        None => parent_main(&opts),
    };
    if let Err(e) = result {
        eprintln!("pipeline bench failed: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Parent: generate, run one child per backend, report
// ---------------------------------------------------------------------------------------

fn parent_main(opts: &Options) -> Result<(), String> {
    check_encoders()?;
    let work = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let spool = opts
        .keep_spool
        .clone()
        .unwrap_or_else(|| work.path().join("corpus.spool"));

    println!(
        "== initdesk-gateway pipeline benchmark{} ==",
        if opts.smoke {
            " (smoke run: cargo test)"
        } else {
            ""
        }
    );
    println!(
        "machine: {} CPUs, {:.1} GiB RAM; {}",
        cpus(),
        mem_total_gib(),
        cpu_model()
    );
    println!(
        "settings: messages {} | batch {} | in flight {} | seed {} | attachments {} % | blobs {} | reply lag {} messages",
        opts.messages,
        opts.batch,
        opts.inflight,
        opts.seed,
        opts.attachment_pct,
        opts.blobs.name(),
        opts.reply_lag()
    );
    let corpus = generate(opts, &spool).map_err(|e| format!("generating the corpus: {e}"))?;
    corpus.print();

    let mut stage_report = None;
    if opts.stages {
        stage_report = Some(
            run_stages(&spool, work.path(), opts.batch)
                .map_err(|e| format!("stage timing: {e}"))?,
        );
    }

    let mut results = Vec::new();
    for &db in &opts.backends {
        eprintln!("running {} ...", db.name());
        results.push(spawn_child(opts, db, &spool)?);
    }
    print_results(opts, &corpus, &results);
    if let Some(stages) = &stage_report {
        stages.print(results.iter().find(|r| r.backend == "sqlite"));
    }

    let bad: u64 = results.iter().map(|r| r.mismatches).sum();
    if bad > 0 {
        return Err(format!(
            "{bad} messages did not get the expected outcome (see the examples above)"
        ));
    }
    Ok(())
}

fn spawn_child(opts: &Options, db: Db, spool: &Path) -> Result<RunResult, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args(opts.child_args(db, spool))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("starting the {} child: {e}", db.name()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("BENCH_RESULT "));
    match (out.status.success(), line) {
        (true, Some(json)) => serde_json::from_str(json).map_err(|e| format!("child output: {e}")),
        _ => Err(format!(
            "the {} run failed ({}):\n{stdout}",
            db.name(),
            out.status
        )),
    }
}

fn print_results(opts: &Options, corpus: &CorpusStats, results: &[RunResult]) {
    println!();
    println!(
        "== Throughput (release build: {}) ==",
        if cfg!(debug_assertions) {
            "NO, debug"
        } else {
            "yes"
        }
    );
    println!(
        "Timed: from the first ingest_batch until the last batch is committed; the corpus is read from the spool file\n\
         (page cache) while earlier batches are in flight. Generation is not included."
    );
    println!();
    println!(
        "| backend  | messages | seconds | msg/s | peak RSS MB | RSS MB at 0/25/50/75/100 %  | created | appended | duplicate | other | unexpected |"
    );
    println!(
        "|----------|---------:|--------:|------:|------------:|-----------------------------|--------:|---------:|----------:|------:|-----------:|"
    );
    for r in results {
        let rss = std::iter::once(r.rss_start_mb)
            .chain(r.rss_mb.iter().map(|(_, m)| *m))
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        let get = |k: &str| r.outcomes.get(k).copied().unwrap_or(0);
        let other: u64 = r
            .outcomes
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "created" | "appended" | "duplicate"))
            .map(|(_, v)| v)
            .sum();
        println!(
            "| {:<8} | {:>8} | {:>7.2} | {:>5.0} | {:>11.0} | {:<27} | {:>7} | {:>8} | {:>9} | {:>5} | {:>10} |",
            r.backend,
            r.messages,
            r.secs,
            r.messages as f64 / r.secs,
            r.peak_rss_mb,
            rss,
            get("created"),
            get("appended"),
            get("duplicate"),
            other,
            r.mismatches
        );
    }
    println!();
    println!(
        "expected from the generator: created {} (new requests), appended {} (replies), duplicate {} (redeliveries)",
        corpus.new_requests, corpus.replies, corpus.duplicates
    );
    for r in results {
        println!();
        println!("-- {} --", r.backend);
        println!(
            "batches: {} x {} messages, {} in flight; batch latency p50 {:.0} ms, max {:.0} ms; spool read {:.2} s (overlapped)",
            r.messages.div_ceil(r.batch as u64),
            r.batch,
            r.inflight,
            r.batch_ms_p50,
            r.batch_ms_max,
            r.read_secs
        );
        let own = r.cpu_user_s + r.cpu_sys_s;
        println!(
            "CPU: gateway process user {:.2} s + system {:.2} s = {:.0} µs per message; PostgreSQL server processes {:.1} s ({:.0} µs per message); \
             whole machine {:.1} of {:.1} core-seconds busy, {:.1} of them outside the gateway{}; {:.1} idle in iowait; load average {} before, {} after",
            r.cpu_user_s,
            r.cpu_sys_s,
            own * 1e6 / r.messages.max(1) as f64,
            r.postgres_cpu_s,
            r.postgres_cpu_s * 1e6 / r.messages.max(1) as f64,
            r.machine_busy_s,
            r.secs * cpus() as f64,
            (r.machine_busy_s - own).max(0.0),
            if r.backend == "postgres" {
                " (the PostgreSQL server included)"
            } else {
                ""
            },
            r.machine_iowait_s,
            r.load_before,
            r.load_after
        );
        let other: Vec<String> = r
            .outcomes
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "created" | "appended" | "duplicate"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !other.is_empty() {
            println!("other outcomes: {}", other.join(", "));
        }
        let list = |items: &[(String, i64)]| {
            items
                .iter()
                .map(|(k, v)| format!("{} {v}", if k.is_empty() { "(none)" } else { k }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !r.db.is_empty() {
            let stored: Vec<(String, i64)> = r.db.iter().map(|(k, v)| (k.clone(), *v)).collect();
            println!("stored: {}", list(&stored));
            println!("threaded_by: {}", list(&r.threaded_by));
            println!("ticket languages: {}", list(&r.languages));
        }
        if r.roundtrip_us > 0.0 {
            println!(
                "one statement round trip (SELECT 1 in a transaction, through sqlx): {:.0} µs",
                r.roundtrip_us
            );
        }
        if !r.index_scans.is_empty() {
            println!(
                "PostgreSQL index use: {}",
                r.index_scans
                    .iter()
                    .map(|(i, n, rows)| format!("{i} {n} scans, {rows} entries read"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if !r.table_scans.is_empty() {
            println!(
                "PostgreSQL table scans: {}",
                r.table_scans
                    .iter()
                    .map(|(t, seq, rows, idx)| format!(
                        "{t}: {seq} sequential ({rows} rows read), {idx} by index"
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        println!(
            "blob store: {} files, {:.0} MB on disk ({})",
            r.blob_files, r.blob_mb, r.blobs
        );
        for m in &r.mismatch_examples {
            println!("UNEXPECTED: {m}");
        }
        if !r.sql.is_empty() {
            let total: u64 = r.sql.iter().map(|s| s.1).sum();
            let exec: f64 = r.sql.iter().map(|s| s.2).sum();
            println!(
                "SQL statements: {total} ({:.1} per message), executing them took {:.2} s of the {:.2} s run (sqlx's own timing, {:.0} µs/statement)",
                total as f64 / r.messages as f64,
                exec,
                r.secs,
                exec * 1e6 / total.max(1) as f64
            );
            for (summary, n, secs) in &r.sql {
                println!(
                    "  {:>7}  {:>6.2}/msg  {:>7.1} ms  {summary}",
                    n,
                    *n as f64 / r.messages as f64,
                    secs * 1e3
                );
            }
        }
    }
    println!();
    let mut cmd = String::from("cargo bench --bench pipeline --");
    let _ = write!(
        cmd,
        " --backend {}",
        if opts.backends.len() == 2 {
            "both"
        } else {
            opts.backends[0].name()
        }
    );
    let _ = write!(
        cmd,
        " --messages {} --batch {} --inflight {}",
        opts.messages, opts.batch, opts.inflight
    );
    if opts.attachment_pct != 5.0 {
        let _ = write!(cmd, " --attachments {}", opts.attachment_pct);
    }
    if opts.blobs != BlobMode::Fs {
        let _ = write!(cmd, " --blobs {}", opts.blobs.name());
    }
    println!("command: {cmd}");
}

// ---------------------------------------------------------------------------------------
// Child: one backend, one process
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct RunResult {
    backend: String,
    messages: u64,
    batch: usize,
    inflight: usize,
    blobs: String,
    secs: f64,
    read_secs: f64,
    batch_ms_p50: f64,
    batch_ms_max: f64,
    rss_start_mb: f64,
    rss_mb: Vec<(u32, f64)>,
    peak_rss_mb: f64,
    outcomes: BTreeMap<String, u64>,
    mismatches: u64,
    mismatch_examples: Vec<String>,
    db: BTreeMap<String, i64>,
    threaded_by: Vec<(String, i64)>,
    languages: Vec<(String, i64)>,
    /// PostgreSQL: (table, sequential scans, rows read by them, index scans).
    table_scans: Vec<(String, i64, i64, i64)>,
    /// PostgreSQL: (index, scans, index entries read).
    index_scans: Vec<(String, i64, i64)>,
    /// One trivial statement (`SELECT 1`) through sqlx inside a transaction, µs: the cost of a round trip.
    roundtrip_us: f64,
    blob_files: u64,
    blob_mb: f64,
    sql: Vec<(String, u64, f64)>,
    cpu_user_s: f64,
    cpu_sys_s: f64,
    load_before: String,
    load_after: String,
    /// Machine-wide CPU seconds (all cores) during the run: busy, and idle waiting for I/O.
    machine_busy_s: f64,
    machine_iowait_s: f64,
    /// CPU seconds of every `postgres` process on this machine during the run.
    postgres_cpu_s: f64,
}

fn child_main(opts: &Options, db: Db, spool: &Path) -> Result<(), String> {
    let sql_stats = opts.count_sql.then(install_sql_counter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut result = rt.block_on(run_backend(opts, db, spool))?;
    if let Some(stats) = sql_stats {
        let map = stats.lock().map(|m| m.clone()).unwrap_or_default();
        let mut rows: Vec<(String, u64, f64)> =
            map.into_iter().map(|(k, (n, s))| (k, n, s)).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        result.sql = rows;
    }
    drop(rt);
    result.peak_rss_mb = proc_status_mb("VmHWM");
    println!(
        "BENCH_RESULT {}",
        serde_json::to_string(&result).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// One message's result as the bench counts it: the outcome kind, and a detail for reports.
struct Got {
    kind: String,
    detail: String,
}

struct InFlight {
    handle: tokio::task::JoinHandle<(Vec<Got>, Duration)>,
    expect: Vec<Expect>,
    first_index: u64,
}

/// Where a batch goes: the whole pipeline, or (`--backend prepare`) only its prepare step.
#[derive(Clone)]
enum Sink {
    Pipeline(Pipeline),
    PrepareOnly(Arc<dyn BlobStore>, Arc<tokio::sync::Semaphore>),
}

impl Sink {
    async fn run(self, deliveries: Vec<Delivery>) -> Vec<Got> {
        match self {
            Sink::Pipeline(p) => p
                .ingest_batch(deliveries)
                .await
                .into_iter()
                .map(got)
                .collect(),
            Sink::PrepareOnly(blobs, slots) => {
                // As ingest_batch does: the batch's messages on the blocking pool, one per
                // core at a time, then one sync of the batch's attachment files.
                let handles: Vec<_> = deliveries
                    .into_iter()
                    .map(|d| {
                        let blobs = blobs.clone();
                        let slots = slots.clone();
                        tokio::spawn(async move {
                            let slot = slots.acquire_owned().await;
                            tokio::task::spawn_blocking(move || {
                                let _slot = slot;
                                prepare::prepare(
                                    &d.raw,
                                    1,
                                    "http://gateway.test",
                                    &LimitsConfig::default(),
                                    &blobs,
                                )
                            })
                            .await
                        })
                    })
                    .collect();
                let mut out = Vec::with_capacity(handles.len());
                let mut hashes = Vec::new();
                for h in handles {
                    out.push(
                        match h.await.map(|r| {
                            r.unwrap_or_else(|e| Err(prepare::PrepareError::Parse(e.to_string())))
                        }) {
                            Ok(Ok(p)) => {
                                hashes.extend(p.attachments.iter().map(|a| a.sha256.clone()));
                                Got {
                                    kind: "prepared".into(),
                                    detail: String::new(),
                                }
                            }
                            Ok(Err(e)) => Got {
                                kind: "error: prepare".into(),
                                detail: format!("{e:?}"),
                            },
                            Err(e) => Got {
                                kind: "error: task".into(),
                                detail: e.to_string(),
                            },
                        },
                    );
                }
                let sync = tokio::task::spawn_blocking(move || blobs.sync(&hashes)).await;
                if !matches!(sync, Ok(Ok(()))) {
                    for g in &mut out {
                        *g = Got {
                            kind: "error: blob sync".into(),
                            detail: format!("{sync:?}"),
                        };
                    }
                }
                out
            }
        }
    }
}

fn got(r: Result<Outcome, IngestError>) -> Got {
    let kind = match &r {
        Ok(o) => o.kind().to_string(),
        Err(IngestError::UnknownRecipient(_)) => "rejected: unknown recipient".into(),
        Err(IngestError::Unusable(_)) => "rejected: unusable".into(),
        Err(IngestError::Temporary(_)) => "error: temporary".into(),
        Err(IngestError::Failed(_)) => "error: failed".into(),
    };
    let detail = match r {
        Ok(o) => format!("{o:?}"),
        Err(e) => e.to_string(),
    };
    Got { kind, detail }
}

async fn run_backend(opts: &Options, db: Db, spool: &Path) -> Result<RunResult, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let (url, pg) = match db {
        Db::Sqlite | Db::PrepareOnly => (
            format!("sqlite://{}", dir.path().join("gateway.db").display()),
            None,
        ),
        Db::Postgres => {
            let pg = initdesk_gateway::store::scratch::ScratchPostgres::create(&opts.postgres_url)
                .await
                .map_err(|e| format!("PostgreSQL at {}: {e}", opts.postgres_url))?;
            (pg.url.clone(), Some(pg))
        }
    };
    let outcome = run_on(opts, db, &url, dir.path(), spool).await;
    if let Some(pg) = pg {
        pg.drop_database().await;
    }
    outcome
}

async fn run_on(
    opts: &Options,
    db: Db,
    url: &str,
    dir: &Path,
    spool: &Path,
) -> Result<RunResult, String> {
    let blob_root = dir.join("blobs");
    let blob_store: Arc<dyn BlobStore> = match opts.blobs {
        BlobMode::Fs => Arc::new(FsBlobStore::new(&blob_root)),
        BlobMode::NoSync => Arc::new(NoSyncBlobStore(FsBlobStore::new(&blob_root))),
    };
    let mut store = None;
    let sink = if db == Db::PrepareOnly {
        Sink::PrepareOnly(blob_store, Arc::new(tokio::sync::Semaphore::new(cpus())))
    } else {
        // The production default of `[database] max_connections`.
        let s = store::open(url, 8)
            .await
            .map_err(|e| format!("open {url}: {e}"))?;
        if let (Store::Sqlite(pool, _), Some(pragmas)) = (&s, &opts.sqlite_pragmas) {
            apply_pragmas(pool, pragmas)
                .await
                .map_err(|e| format!("--sqlite-pragmas: {e}"))?;
        }
        let mut tx = s.begin().await.map_err(|e| e.to_string())?;
        for org in initdesk_gateway::replay::default_world() {
            orgs::apply_config(&mut tx, &org)
                .await
                .map_err(|e| format!("world: {e}"))?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        let settings = Settings {
            public_url: "http://gateway.test".into(),
            ..Settings::default()
        };
        let pipeline = Pipeline::new(
            s.clone(),
            blob_store,
            settings,
            ReplyTokens::new(b"bench-secret".to_vec()),
        );
        for r in RECIPIENTS {
            pipeline
                .check_recipient(&Recipient::Address(r.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        store = Some(s);
        Sink::Pipeline(pipeline)
    };
    let roundtrip_us = match &store {
        Some(s) => statement_roundtrip(s)
            .await
            .map_err(|e| format!("round trip: {e}"))?,
        None => 0.0,
    };

    let mut result = RunResult {
        backend: db.name().into(),
        batch: opts.batch,
        inflight: opts.inflight,
        blobs: opts.blobs.name().into(),
        rss_start_mb: proc_status_mb("VmRSS"),
        roundtrip_us,
        ..RunResult::default()
    };
    let total = opts.messages as u64;
    let marks = [25u32, 50, 75, 100];
    let mut next_mark = 0;
    let mut done = 0u64;
    let mut batch_ms = Vec::new();
    let mut read = Duration::ZERO;
    let mut reader = SpoolReader::open(spool).map_err(|e| format!("spool: {e}"))?;
    let mut pending: VecDeque<InFlight> = VecDeque::new();

    result.load_before = loadavg();
    let cpu_before = cpu_times();
    let machine_before = machine_cpu();
    let postgres_before = postgres_cpu();
    let start = Instant::now();
    let mut index = 0u64;
    loop {
        let t = Instant::now();
        let records = reader
            .next_batch(opts.batch)
            .map_err(|e| format!("spool: {e}"))?;
        read += t.elapsed();
        let last = records.is_empty();
        // Waits so that at most `inflight` batches run, oldest first; the last round drains.
        while pending.len() >= opts.inflight || (last && !pending.is_empty()) {
            let Some(f) = pending.pop_front() else { break };
            let (outcomes, took) = f.handle.await.map_err(|e| format!("batch task: {e}"))?;
            batch_ms.push(took.as_secs_f64() * 1e3);
            done += outcomes.len() as u64;
            tally(
                &mut result,
                f.first_index,
                &f.expect,
                &outcomes,
                db == Db::PrepareOnly,
            );
            while next_mark < marks.len() && done * 100 >= total * u64::from(marks[next_mark]) {
                result
                    .rss_mb
                    .push((marks[next_mark], proc_status_mb("VmRSS")));
                next_mark += 1;
            }
        }
        if last {
            break;
        }
        let first_index = index;
        index += records.len() as u64;
        let mut expect = Vec::with_capacity(records.len());
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            expect.push(r.expect);
            deliveries.push(Delivery {
                raw: r.raw.into(),
                envelope: Envelope::to(
                    RECIPIENTS[usize::from(r.recipient) % RECIPIENTS.len()],
                    Source::Smtp,
                ),
            });
        }
        let sink = sink.clone();
        let handle = tokio::spawn(async move {
            let t = Instant::now();
            let out = sink.run(deliveries).await;
            (out, t.elapsed())
        });
        pending.push_back(InFlight {
            handle,
            expect,
            first_index,
        });
    }
    let elapsed = start.elapsed();
    let cpu_after = cpu_times();
    result.cpu_user_s = cpu_after.0 - cpu_before.0;
    result.cpu_sys_s = cpu_after.1 - cpu_before.1;
    result.load_after = loadavg();
    let machine_after = machine_cpu();
    result.machine_busy_s = machine_after.0 - machine_before.0;
    result.machine_iowait_s = machine_after.1 - machine_before.1;
    // Approximate: other sessions' backends count too, and one that exits takes its CPU along.
    result.postgres_cpu_s = (postgres_cpu() - postgres_before).max(0.0);
    while next_mark < marks.len() {
        result
            .rss_mb
            .push((marks[next_mark], proc_status_mb("VmRSS")));
        next_mark += 1;
    }
    result.secs = elapsed.as_secs_f64();
    result.read_secs = read.as_secs_f64();
    result.messages = done;
    batch_ms.sort_by(f64::total_cmp);
    result.batch_ms_p50 = batch_ms
        .get(batch_ms.len() / 2)
        .copied()
        .unwrap_or_default();
    result.batch_ms_max = batch_ms.last().copied().unwrap_or_default();

    if let Some(store) = store {
        verify_store(&store, &mut result)
            .await
            .map_err(|e| format!("reading back: {e}"))?;
        store.close().await;
    }
    let (files, bytes) = dir_size(&blob_root);
    result.blob_files = files;
    result.blob_mb = bytes as f64 / 1e6;
    Ok(result)
}

fn tally(
    result: &mut RunResult,
    first_index: u64,
    expect: &[Expect],
    outcomes: &[Got],
    prepare_only: bool,
) {
    for (i, (want, got)) in expect.iter().zip(outcomes).enumerate() {
        let wanted = if prepare_only {
            "prepared"
        } else {
            want.outcome()
        };
        if got.kind != wanted {
            result.mismatches += 1;
            if result.mismatch_examples.len() < 10 {
                result.mismatch_examples.push(format!(
                    "message {} ({want:?}): expected {wanted}, got {}: {}",
                    first_index + i as u64,
                    got.kind,
                    got.detail
                ));
            }
        }
        *result.outcomes.entry(got.kind.clone()).or_default() += 1;
    }
}

/// Runs `pragmas` (`name=value;...`) on all 8 pooled connections: they are opened together and
/// stay in the pool for the run (an experiment; the store sets its own PRAGMAs).
async fn apply_pragmas(pool: &sqlx::SqlitePool, pragmas: &str) -> Result<(), sqlx::Error> {
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut c = pool.acquire().await?;
        for p in pragmas.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA {p}")))
                .execute(&mut *c)
                .await?;
        }
        conns.push(c);
    }
    Ok(())
}

/// The average time of `SELECT 1` inside a transaction: what one statement costs the commit
/// phase before the database does any work (a hop to sqlx's SQLite thread, or to the server).
async fn statement_roundtrip(store: &Store) -> Result<f64, sqlx::Error> {
    const N: u32 = 2000;
    let start;
    match store {
        Store::Sqlite(p, _) => {
            let mut tx = p.begin().await?;
            start = Instant::now();
            for _ in 0..N {
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
            tx.rollback().await?;
            Ok(us)
        }
        Store::Postgres(p) => {
            let mut tx = p.begin().await?;
            start = Instant::now();
            for _ in 0..N {
                sqlx::query("SELECT 1").execute(&mut *tx).await?;
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
            tx.rollback().await?;
            Ok(us)
        }
    }
}

async fn verify_store(store: &Store, r: &mut RunResult) -> Result<(), sqlx::Error> {
    for (name, sql) in [
        ("customers", "SELECT COUNT(*) FROM customers"),
        ("tickets", "SELECT COUNT(*) FROM tickets"),
        ("spam tickets", "SELECT COUNT(*) FROM tickets WHERE is_spam"),
        ("messages", "SELECT COUNT(*) FROM messages"),
        ("attachments", "SELECT COUNT(*) FROM attachments"),
        ("inbound_log", "SELECT COUNT(*) FROM inbound_log"),
        ("quarantine", "SELECT COUNT(*) FROM quarantine"),
    ] {
        let n: i64 = match store {
            Store::Sqlite(p, _) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        };
        r.db.insert(name.into(), n);
    }
    let grouped = |col: &str, table: &str| {
        format!("SELECT {col}, COUNT(*) FROM {table} GROUP BY {col} ORDER BY COUNT(*) DESC, {col}")
    };
    r.threaded_by = match store {
        Store::Sqlite(p, _) => {
            sqlx::query_as(sqlx::AssertSqlSafe(grouped("threaded_by", "messages")))
                .fetch_all(p)
                .await?
        }
        Store::Postgres(p) => {
            sqlx::query_as(sqlx::AssertSqlSafe(grouped("threaded_by", "messages")))
                .fetch_all(p)
                .await?
        }
    };
    r.languages = match store {
        Store::Sqlite(p, _) => {
            sqlx::query_as(sqlx::AssertSqlSafe(grouped("language", "tickets")))
                .fetch_all(p)
                .await?
        }
        Store::Postgres(p) => {
            sqlx::query_as(sqlx::AssertSqlSafe(grouped("language", "tickets")))
                .fetch_all(p)
                .await?
        }
    };
    if let Store::Postgres(p) = store {
        // Statistics reach the view shortly after each transaction ends.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        r.table_scans = sqlx::query_as(
            "SELECT relname::text, COALESCE(seq_scan, 0), COALESCE(seq_tup_read, 0), COALESCE(idx_scan, 0) FROM pg_stat_user_tables
             WHERE relname IN ('messages', 'tickets', 'customers', 'raw_messages') ORDER BY relname",
        )
        .fetch_all(p)
        .await?;
        r.index_scans = sqlx::query_as(
            "SELECT indexrelname::text, COALESCE(idx_scan, 0), COALESCE(idx_tup_read, 0) FROM pg_stat_user_indexes
             WHERE relname IN ('messages', 'tickets', 'customers') AND idx_scan > 0 ORDER BY idx_tup_read DESC",
        )
        .fetch_all(p)
        .await?;
    }
    Ok(())
}

/// [`FsBlobStore`] with `sync` doing nothing: `--blobs nosync` shows what making the
/// attachment files durable costs.
#[derive(Debug)]
struct NoSyncBlobStore(FsBlobStore);

impl BlobStore for NoSyncBlobStore {
    fn put_as(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.0.put_as(name, bytes)
    }

    fn sync(&self, _names: &[String]) -> io::Result<()> {
        Ok(())
    }

    fn get(&self, name: &str) -> io::Result<Vec<u8>> {
        self.0.get(name)
    }
}

// ---------------------------------------------------------------------------------------
// SQL statement counter (--count-sql): sqlx reports every statement on target sqlx::query
// ---------------------------------------------------------------------------------------

type SqlCounts = Arc<Mutex<BTreeMap<String, (u64, f64)>>>;

struct SqlCounter(SqlCounts);

#[derive(Default)]
struct SqlVisitor {
    summary: String,
    elapsed: f64,
}

impl tracing::field::Visit for SqlVisitor {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = value;
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            self.summary = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" && self.summary.is_empty() {
            self.summary = format!("{value:?}").trim_matches('"').to_string();
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlCounter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut v = SqlVisitor::default();
        event.record(&mut v);
        // "INSERT INTO messages (organization_id, …" -> "INSERT INTO messages"
        let words: Vec<&str> = v.summary.split_whitespace().collect();
        let key = match words.first().map(|w| w.to_ascii_uppercase()) {
            Some(w) if w == "INSERT" || w == "DELETE" => {
                words.iter().take(3).copied().collect::<Vec<_>>().join(" ")
            }
            Some(w) if w == "UPDATE" => words.iter().take(2).copied().collect::<Vec<_>>().join(" "),
            Some(w) if w == "SELECT" => v.summary.trim_end_matches(" …").to_string(),
            _ => v.summary.trim_end_matches(" …").to_string(),
        };
        if let Ok(mut m) = self.0.lock() {
            let e = m.entry(key).or_default();
            e.0 += 1;
            e.1 += v.elapsed;
        }
    }
}

fn install_sql_counter() -> SqlCounts {
    use tracing_subscriber::layer::SubscriberExt;
    let counts = SqlCounts::default();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("sqlx::query", tracing::Level::TRACE);
    let subscriber = tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(
        SqlCounter(counts.clone()),
        filter,
    ));
    let _ = tracing::subscriber::set_global_default(subscriber);
    counts
}

// ---------------------------------------------------------------------------------------
// Stage timing (--stages): each step of prepare() on one thread
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct StageReport {
    messages: u64,
    rows: Vec<(&'static str, Duration, u64)>,
    prepare: Duration,
    by_format: BTreeMap<&'static str, (u64, Duration)>,
}

fn run_stages(spool: &Path, work: &Path, batch: usize) -> io::Result<StageReport> {
    eprintln!("timing prepare stages ...");
    let limits = LimitsConfig::default();
    let fs_a = FsBlobStore::new(work.join("stages-a"));
    let fs_b: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(work.join("stages-b")));
    let names = [
        "parse (mail-parser, parse_guarded)",
        "raw mail: sha256",
        "raw mail: zstd (store::raw::compress)",
        "attachments: put (sha256 + write + rename)",
        "attachments: sync (fsync files + dirs, once per batch)",
        "sanitize_html (ammonia)",
        "html_to_text (html2text)",
        "detect_language (whatlang)",
        // What-ifs, not part of prepare today:
        "zstd level 3 with one reused compressor",
        "zstd level 1 with one reused compressor",
        "detect_language on the first 1,000 bytes only",
        "whatlang with an allowlist of 8 languages",
    ];
    let mut t = [Duration::ZERO; 12];
    let mut n = [0u64; 12];
    use whatlang::Lang as W;
    let allowlist = whatlang::Detector::with_allowlist(vec![
        W::Eng,
        W::Deu,
        W::Fra,
        W::Spa,
        W::Ita,
        W::Por,
        W::Rus,
        W::Jpn,
    ]);
    let mut zstd3 = zstd::bulk::Compressor::new(3)?;
    let mut zstd1 = zstd::bulk::Compressor::new(1)?;
    let mut report = StageReport::default();
    let mut reader = SpoolReader::open(spool)?;
    let time = |slot: usize, t: &mut [Duration; 12], n: &mut [u64; 12], start: Instant| {
        t[slot] += start.elapsed();
        n[slot] += 1;
    };
    let mut unsynced: Vec<String> = Vec::new();
    let mut in_batch = 0;
    let mut prepared_unsynced: Vec<String> = Vec::new();
    while let Some(rec) = reader.read_one()? {
        let raw = &rec.raw;
        let s = Instant::now();
        let mail = parse::parse_guarded(raw, &limits).map_err(io::Error::other)?;
        time(0, &mut t, &mut n, s);
        let s = Instant::now();
        let _ = blobs::sha256_hex(raw);
        time(1, &mut t, &mut n, s);
        let s = Instant::now();
        let _ = store::raw::compress(raw)?;
        time(2, &mut t, &mut n, s);
        for a in &mail.attachments {
            let s = Instant::now();
            unsynced.push(fs_a.put(&a.bytes)?);
            time(3, &mut t, &mut n, s);
        }
        let s = Instant::now();
        let html = parse::sanitize_html(&mail.html, &HashMap::new());
        if !mail.html.trim().is_empty() {
            time(5, &mut t, &mut n, s);
        }
        // The same decisions as prepare::prepare.
        let html_only = mail.text.trim().is_empty() && !mail.html.trim().is_empty();
        let s = Instant::now();
        let text = if html_only {
            parse::html_to_text(
                &mail.html,
                limits.max_html_to_text_bytes,
                limits.max_html_depth,
            )
        } else {
            mail.text.clone()
        };
        let lang_text = if !html_only && html.len() > text.len() {
            parse::html_to_text(&html, limits.max_html_to_text_bytes, limits.max_html_depth)
        } else {
            text
        };
        if html_only || html.len() > mail.text.len() {
            time(6, &mut t, &mut n, s);
        }
        let s = Instant::now();
        let _ = parse::detect_language(&lang_text);
        time(7, &mut t, &mut n, s);
        let s = Instant::now();
        let _ = zstd3.compress(raw)?;
        time(8, &mut t, &mut n, s);
        let s = Instant::now();
        let _ = zstd1.compress(raw)?;
        time(9, &mut t, &mut n, s);
        let s = Instant::now();
        let _ = parse::detect_language(prefix(&lang_text, 1000));
        time(10, &mut t, &mut n, s);
        let s = Instant::now();
        let _ = allowlist.detect(prefix(&lang_text, 4000));
        time(11, &mut t, &mut n, s);

        let s = Instant::now();
        let p = prepare::prepare(raw, 1, "http://gateway.test", &limits, &fs_b)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let took = s.elapsed();
        prepared_unsynced.extend(p.attachments.iter().map(|a| a.sha256.clone()));
        report.prepare += took;
        let format = if rec.flags & FLAG_ATTACHMENT != 0 {
            "with attachment"
        } else if rec.flags & FLAG_HTML_ONLY != 0 {
            "html-only"
        } else if rec.flags & FLAG_ALTERNATIVE != 0 {
            "multipart/alternative"
        } else {
            "text/plain"
        };
        let e = report.by_format.entry(format).or_default();
        e.0 += 1;
        e.1 += took;
        report.messages += 1;
        // The pipeline syncs a batch's attachment files once, before its commit.
        in_batch += 1;
        if in_batch == batch {
            in_batch = 0;
            let s = Instant::now();
            fs_a.sync(&std::mem::take(&mut unsynced))?;
            time(4, &mut t, &mut n, s);
            fs_b.sync(&std::mem::take(&mut prepared_unsynced))?;
        }
    }
    let s = Instant::now();
    fs_a.sync(&unsynced)?;
    time(4, &mut t, &mut n, s);
    report.rows = names
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, t[i], n[i]))
        .collect();
    Ok(report)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl StageReport {
    fn print(&self, sqlite: Option<&RunResult>) {
        let m = self.messages.max(1) as f64;
        let (stages, what_if) = self.rows.split_at(8.min(self.rows.len()));
        let sum: Duration = stages.iter().map(|r| r.1).sum();
        let row = |name: &str, d: &Duration, calls: &u64, share: bool| {
            let pct = if share {
                format!(
                    "{:.0} %",
                    100.0 * d.as_secs_f64() / sum.as_secs_f64().max(1e-9)
                )
            } else {
                String::new()
            };
            println!(
                "| {name} | {calls} | {:.0} | {:.0} | {pct} |",
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6 / m
            );
        };
        println!();
        println!(
            "== Where prepare() time goes (one thread, all {} messages, fresh blob directory) ==",
            self.messages
        );
        println!();
        println!("| stage | calls | total ms | µs per message | share |");
        println!("|---|---:|---:|---:|---:|");
        for (name, d, calls) in stages {
            row(name, d, calls, true);
        }
        println!(
            "| sum of the stages | | {:.0} | {:.0} | |",
            sum.as_secs_f64() * 1e3,
            sum.as_secs_f64() * 1e6 / m
        );
        println!(
            "| prepare::prepare() measured (its blob sync happens at commit) | {} | {:.0} | {:.0} | |",
            self.messages,
            self.prepare.as_secs_f64() * 1e3,
            self.prepare.as_secs_f64() * 1e6 / m
        );
        for (name, d, calls) in what_if {
            row(&format!("what if: {name}"), d, calls, false);
        }
        println!();
        println!("prepare() by message format:");
        for (format, (n, d)) in &self.by_format {
            println!(
                "  {format:<22} {n:>6} messages  {:>6.0} µs each",
                d.as_secs_f64() * 1e6 / (*n).max(1) as f64
            );
        }
        if let Some(r) = sqlite {
            let per_msg = r.secs * 1e6 / r.messages.max(1) as f64;
            let prep = self.prepare.as_secs_f64() * 1e6 / m;
            println!(
                "sqlite run: {per_msg:.0} µs wall per message with {} batch(es) in flight; prepare() alone is {prep:.0} µs per message on one core",
                r.inflight
            );
        }
    }
}

fn generate(opts: &Options, spool: &Path) -> io::Result<CorpusStats> {
    let start = Instant::now();
    let mut g = Generator::new(
        opts.seed,
        opts.messages,
        opts.reply_lag(),
        opts.attachment_pct / 100.0,
    );
    let mut out = SpoolWriter(BufWriter::with_capacity(1 << 20, File::create(spool)?));
    for i in 0..opts.messages {
        let (expect, recipient, flags, raw) = g.next_message(i);
        out.write(expect, recipient, flags, &raw)?;
    }
    out.0.flush()?;
    g.stats.secs = start.elapsed().as_secs_f64();
    g.stats.customers_used = g.used.iter().filter(|u| **u).count() as u64;
    g.stats.lag = opts.reply_lag();
    Ok(g.stats)
}

// ---------------------------------------------------------------------------------------
// Machine and process facts
// ---------------------------------------------------------------------------------------

/// A line of /proc/self/status (VmRSS, VmHWM) in MB.
fn proc_status_mb(key: &str) -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User and system CPU seconds of this process, all threads (USER_HZ is 100 on Linux).
fn cpu_times() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (ticks(11), ticks(12))
}

/// Machine-wide busy and iowait CPU seconds since boot, summed over all cores (/proc/stat).
fn machine_cpu() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<f64>().unwrap_or(0.0) / 100.0)
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    (get(0) + get(1) + get(2) + get(5) + get(6) + get(7), get(4))
}

/// User + system CPU seconds of all processes named `postgres` (the local server).
fn postgres_cpu() -> f64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in dir.flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total += (ticks(11) + ticks(12)) / 100.0;
    }
    total
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews the figures.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mem_total_gib() -> f64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn dir_size(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}
