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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use initdesk_gateway::config::LimitsConfig;
use initdesk_gateway::pipeline::{
    Delivery, Envelope, IngestError, Outcome, Pipeline, Recipient, ReplyTokens, Settings, Source,
    parse, prepare,
};
use initdesk_gateway::store::blobs::{self, BlobStore, FsBlobStore};
use initdesk_gateway::store::{self, Store, orgs};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

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

const RECIPIENTS: [&str; 2] = ["support@acme.test", "sales@acme.test"];
const CUSTOMERS: usize = 3000;

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

// ---------------------------------------------------------------------------------------
// Spool: the generated corpus on disk, read back batch by batch
// ---------------------------------------------------------------------------------------

const FLAG_HTML_ONLY: u8 = 1;
const FLAG_ALTERNATIVE: u8 = 2;
const FLAG_ATTACHMENT: u8 = 4;

/// What the generator meant a message to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    NewRequest,
    Reply,
    Redelivery,
}

impl Expect {
    fn outcome(self) -> &'static str {
        match self {
            Expect::NewRequest => "created",
            Expect::Reply => "appended",
            Expect::Redelivery => "duplicate",
        }
    }

    fn byte(self) -> u8 {
        match self {
            Expect::NewRequest => 0,
            Expect::Reply => 1,
            Expect::Redelivery => 2,
        }
    }

    fn from_byte(b: u8) -> io::Result<Self> {
        match b {
            0 => Ok(Expect::NewRequest),
            1 => Ok(Expect::Reply),
            2 => Ok(Expect::Redelivery),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad spool record",
            )),
        }
    }
}

struct SpoolRecord {
    expect: Expect,
    recipient: u8,
    flags: u8,
    raw: Vec<u8>,
}

struct SpoolWriter(BufWriter<File>);

impl SpoolWriter {
    fn write(&mut self, expect: Expect, recipient: u8, flags: u8, raw: &[u8]) -> io::Result<()> {
        let len = u32::try_from(raw.len()).map_err(io::Error::other)?;
        self.0.write_all(&[expect.byte(), recipient, flags])?;
        self.0.write_all(&len.to_le_bytes())?;
        self.0.write_all(raw)
    }
}

struct SpoolReader(BufReader<File>);

impl SpoolReader {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self(BufReader::with_capacity(1 << 20, File::open(path)?)))
    }

    fn read_one(&mut self) -> io::Result<Option<SpoolRecord>> {
        let mut head = [0u8; 7];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut raw = vec![0u8; len];
        self.0.read_exact(&mut raw)?;
        Ok(Some(SpoolRecord {
            expect: Expect::from_byte(head[0])?,
            recipient: head[1],
            flags: head[2],
            raw,
        }))
    }

    fn next_batch(&mut self, n: usize) -> io::Result<Vec<SpoolRecord>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.read_one()? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Corpus generator
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Charset {
    Utf8,
    Ascii,
    Latin1,
    Win1252,
    Koi8r,
    Iso2022jp,
    ShiftJis,
}

impl Charset {
    fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Ascii => "us-ascii",
            Charset::Latin1 => "ISO-8859-1",
            Charset::Win1252 => "windows-1252",
            Charset::Koi8r => "KOI8-R",
            Charset::Iso2022jp => "ISO-2022-JP",
            Charset::ShiftJis => "Shift_JIS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cte {
    SevenBit,
    EightBit,
    QuotedPrintable,
    Base64,
}

impl Cte {
    fn name(self) -> &'static str {
        match self {
            Cte::SevenBit => "7bit",
            Cte::EightBit => "8bit",
            Cte::QuotedPrintable => "quoted-printable",
            Cte::Base64 => "base64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Outlook,
    Gmail,
    AppleMail,
    Thunderbird,
    Mobile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Lang {
    En,
    De,
    Fr,
    Es,
    Ru,
    Ja,
}

struct LangData {
    first: &'static [(&'static str, &'static str)],
    last: &'static [(&'static str, &'static str)],
    family_first: bool,
    greet: &'static [&'static str],
    body: &'static [&'static str],
    close: &'static [&'static str],
    reply: &'static [&'static str],
    subject: &'static [&'static str],
    re: &'static [&'static str],
    wrote: &'static str,
    tld: &'static str,
    freemail: &'static [&'static str],
    tz_hours: i32,
    disclaimer: &'static str,
}

const COMPANY_A: &[&str] = &[
    "north", "blue", "star", "green", "silver", "nova", "alpine", "harbor", "cedar", "summit",
    "iron", "bright", "delta", "polar", "urban", "maple", "swift", "coral", "atlas", "vertex",
];
const COMPANY_B: &[&str] = &[
    "tech",
    "works",
    "logistics",
    "labs",
    "systems",
    "media",
    "foods",
    "trading",
    "consulting",
    "dynamics",
    "retail",
    "energy",
];

fn lang_data(lang: Lang) -> &'static LangData {
    match lang {
        Lang::En => &EN,
        Lang::De => &DE,
        Lang::Fr => &FR,
        Lang::Es => &ES,
        Lang::Ru => &RU,
        Lang::Ja => &JA,
    }
}

static EN: LangData = LangData {
    first: &[
        ("James", "james"),
        ("Mary", "mary"),
        ("Robert", "robert"),
        ("Patricia", "patricia"),
        ("Michael", "michael"),
        ("Linda", "linda"),
        ("David", "david"),
        ("Susan", "susan"),
        ("Daniel", "daniel"),
        ("Karen", "karen"),
        ("Chloë", "chloe"),
        ("Zoë", "zoe"),
        ("Emily", "emily"),
        ("Oliver", "oliver"),
        ("Sophie", "sophie"),
        ("Liam", "liam"),
        ("Renée", "renee"),
        ("Aiden", "aiden"),
    ],
    last: &[
        ("Smith", "smith"),
        ("Johnson", "johnson"),
        ("Williams", "williams"),
        ("Brown", "brown"),
        ("Jones", "jones"),
        ("Miller", "miller"),
        ("Davis", "davis"),
        ("Wilson", "wilson"),
        ("Taylor", "taylor"),
        ("O'Connor", "oconnor"),
        ("Anderson", "anderson"),
        ("Clarke", "clarke"),
        ("Walker", "walker"),
        ("Wright", "wright"),
        ("Thompson", "thompson"),
        ("Evans", "evans"),
    ],
    family_first: false,
    greet: &[
        "Hi team,",
        "Hello,",
        "Hi Acme support,",
        "Dear support team,",
        "Good morning,",
    ],
    body: &[
        "I'm having trouble logging into my account since this morning.",
        "Our invoice {n} shows the wrong amount — we were charged €249 instead of €199.",
        "Could you please check the status of order #{n}?",
        "The export to CSV fails with “Unknown error” after a few seconds.",
        "We’d like to add two more seats to our subscription.",
        "The mobile app crashes when I open the reports tab.",
        "I already tried clearing the cache and reinstalling the app.",
        "This is blocking our month-end close, so a quick answer would be appreciated.",
        "The shipment arrived damaged; two of the five items are broken.",
        "Can you confirm whether the price includes VAT?",
        "After the latest update the dashboard loads very slowly.",
        "Our team lead cannot see the shared inbox anymore.",
        "The password reset e-mail never arrives, not even in the spam folder.",
        "We were billed twice for the same period, see reference {n}.",
        "Is there a way to export all tickets of last year in one go?",
        "Since Tuesday the synchronisation with our calendar stopped working.",
        "Please cancel order {n}, we placed it by mistake.",
        "I would like to change the billing address to our new office.",
    ],
    close: &[
        "Please let me know if you need any more details.\n\nBest regards,",
        "Thanks in advance!\n\nCheers,",
        "Thank you for your help.\n\nKind regards,",
        "Looking forward to your reply.\n\nRegards,",
    ],
    reply: &[
        "Any update on this?",
        "Just following up on my message below.",
        "Here is the additional information you asked for: the error happens on every login attempt.",
        "The problem is still there this morning.",
        "Thanks, but unfortunately that did not solve it.",
        "Could someone please get back to me today?",
    ],
    subject: &[
        "Login problem",
        "Wrong amount on invoice {n}",
        "Order #{n} status",
        "CSV export fails",
        "Add seats to our subscription",
        "App crashes on the reports tab",
        "Damaged shipment (order {n})",
        "Question about VAT",
        "Dashboard very slow after update",
        "Shared inbox not visible",
        "Password reset e-mail not arriving",
        "Charged twice — ref {n}",
        "Cancel order {n}",
        "Change of billing address",
    ],
    re: &["Re: ", "RE: "],
    wrote: "On {date}, {name} wrote:",
    tld: "example.com",
    freemail: &["gmail.example", "outlook.example", "yahoo.example"],
    tz_hours: -5,
    disclaimer: "CONFIDENTIALITY NOTICE: This e-mail and any attachments are confidential and may be privileged. If you are not the intended recipient, please notify the sender immediately and delete this message. Any unauthorised use, disclosure or copying of this message is prohibited. E-mail is not a secure medium and we accept no liability for any damage caused by viruses transmitted with it.",
};

static DE: LangData = LangData {
    first: &[
        ("Jürgen", "juergen"),
        ("Anna", "anna"),
        ("Stefan", "stefan"),
        ("Katrin", "katrin"),
        ("Björn", "bjoern"),
        ("Sabine", "sabine"),
        ("Thomas", "thomas"),
        ("Ute", "ute"),
        ("Matthias", "matthias"),
        ("Jörg", "joerg"),
        ("Claudia", "claudia"),
        ("Lukas", "lukas"),
    ],
    last: &[
        ("Müller", "mueller"),
        ("Schmidt", "schmidt"),
        ("Schneider", "schneider"),
        ("Fischer", "fischer"),
        ("Weiß", "weiss"),
        ("Meyer", "meyer"),
        ("Wagner", "wagner"),
        ("Becker", "becker"),
        ("Schäfer", "schaefer"),
        ("Hoffmann", "hoffmann"),
        ("Köhler", "koehler"),
        ("Groß", "gross"),
    ],
    family_first: false,
    greet: &[
        "Guten Tag,",
        "Hallo zusammen,",
        "Sehr geehrte Damen und Herren,",
        "Hallo Support-Team,",
    ],
    body: &[
        "Seit gestern funktioniert der Export nicht mehr.",
        "Können Sie mir bitte die Rechnung {n} für März noch einmal schicken?",
        "Die Lieferung ist leider unvollständig angekommen.",
        "Ich habe das Passwort zurückgesetzt, aber die E-Mail kommt nicht an.",
        "Über eine kurze Rückmeldung würde ich mich freuen.",
        "Die Größe der Datei beträgt übrigens etwa 3 MB.",
        "Unser Zugang ist seit dem Update gesperrt.",
        "Bitte prüfen Sie, warum die Bestellung {n} storniert wurde.",
        "Wir möchten unser Abonnement um zwei Plätze erweitern.",
        "Die App stürzt beim Öffnen der Berichte ab.",
        "Auf der Rechnung fehlt unsere Umsatzsteuer-ID.",
        "Die Synchronisation mit dem Kalender schlägt regelmäßig fehl.",
        "Der Betrag von 1.250 € wurde zweimal abgebucht – bitte „dringend“ prüfen.",
    ],
    close: &[
        "Vielen Dank für Ihre schnelle Hilfe.\n\nMit freundlichen Grüßen",
        "Danke im Voraus!\n\nViele Grüße",
        "Besten Dank und freundliche Grüße",
    ],
    reply: &[
        "Gibt es schon Neuigkeiten?",
        "Ich wollte mich noch einmal wegen meiner Anfrage melden.",
        "Das Problem besteht leider weiterhin.",
        "Anbei noch die gewünschten Informationen: der Fehler tritt bei jedem Login auf.",
    ],
    subject: &[
        "Problem mit der Rechnung {n}",
        "Lieferung unvollständig",
        "Passwort zurücksetzen – keine E-Mail",
        "Frage zur Verlängerung",
        "Export funktioniert nicht",
        "Zugang gesperrt",
        "Bestellung {n} storniert?",
        "App stürzt ab",
        "Umsatzsteuer-ID fehlt",
    ],
    re: &["AW: ", "Re: "],
    wrote: "Am {date} schrieb {name}:",
    tld: "example.de",
    freemail: &["web.example.de", "gmx.example.de", "t-online.example.de"],
    tz_hours: 1,
    disclaimer: "Diese E-Mail enthält vertrauliche und/oder rechtlich geschützte Informationen. Wenn Sie nicht der richtige Adressat sind oder diese E-Mail irrtümlich erhalten haben, informieren Sie bitte sofort den Absender und vernichten Sie diese Mail. Das unerlaubte Kopieren sowie die unbefugte Weitergabe dieser Mail sind nicht gestattet. Geschäftsführer: Dr. Hans Meier, Amtsgericht München HRB 123456.",
};

static FR: LangData = LangData {
    first: &[
        ("François", "francois"),
        ("Élodie", "elodie"),
        ("Jérôme", "jerome"),
        ("Hélène", "helene"),
        ("Nicolas", "nicolas"),
        ("Céline", "celine"),
        ("Benoît", "benoit"),
        ("Amélie", "amelie"),
        ("Julien", "julien"),
        ("Manon", "manon"),
    ],
    last: &[
        ("Lefèvre", "lefevre"),
        ("Martin", "martin"),
        ("Bernard", "bernard"),
        ("Dubois", "dubois"),
        ("Moreau", "moreau"),
        ("Laurent", "laurent"),
        ("Girard", "girard"),
        ("Bonnet", "bonnet"),
        ("Lemaître", "lemaitre"),
        ("Fontaine", "fontaine"),
    ],
    family_first: false,
    greet: &["Bonjour,", "Bonjour à toute l'équipe,", "Madame, Monsieur,"],
    body: &[
        "Je n'arrive plus à me connecter depuis la mise à jour.",
        "Pourriez-vous vérifier ma dernière facture ?",
        "La commande n° {n} n'a toujours pas été livrée.",
        "Le problème est réapparu ce matin à 9 h.",
        "Nous souhaitons ajouter trois utilisateurs à notre équipe.",
        "L'export en CSV échoue avec le message « erreur inconnue ».",
        "Le montant facturé ne correspond pas au devis {n}.",
        "L'application se ferme dès que j'ouvre les rapports.",
        "Est-il possible de changer l'adresse de facturation ?",
        "Je n'ai pas reçu l'e-mail de réinitialisation du mot de passe.",
    ],
    close: &[
        "Merci d'avance pour votre réponse rapide.\n\nCordialement,",
        "Bien à vous,",
        "Merci beaucoup.\n\nBonne journée,",
    ],
    reply: &[
        "Avez-vous du nouveau ?",
        "Je me permets de relancer ma demande ci-dessous.",
        "Le problème persiste malheureusement.",
        "Voici les informations demandées : l'erreur apparaît à chaque connexion.",
    ],
    subject: &[
        "Problème de connexion",
        "Facture erronée",
        "Commande n° {n} non livrée",
        "Ajout d'utilisateurs",
        "Échec de l'export CSV",
        "Changement d'adresse de facturation",
        "Réinitialisation du mot de passe",
    ],
    re: &["RE: ", "Re: "],
    wrote: "Le {date}, {name} a écrit :",
    tld: "example.fr",
    freemail: &["orange.example.fr", "free.example.fr", "laposte.example.fr"],
    tz_hours: 1,
    disclaimer: "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention exclusive de ses destinataires. Toute utilisation ou diffusion non autorisée est interdite. Si vous avez reçu ce message par erreur, merci de le détruire et d'en avertir immédiatement l'expéditeur.",
};

static ES: LangData = LangData {
    first: &[
        ("José", "jose"),
        ("María", "maria"),
        ("Andrés", "andres"),
        ("Lucía", "lucia"),
        ("Sergio", "sergio"),
        ("Begoña", "begona"),
        ("Javier", "javier"),
        ("Inés", "ines"),
        ("Raúl", "raul"),
        ("Carmen", "carmen"),
    ],
    last: &[
        ("Núñez", "nunez"),
        ("García", "garcia"),
        ("Fernández", "fernandez"),
        ("López", "lopez"),
        ("Martínez", "martinez"),
        ("Sánchez", "sanchez"),
        ("Pérez", "perez"),
        ("Gómez", "gomez"),
        ("Ruiz", "ruiz"),
        ("Ibáñez", "ibanez"),
    ],
    family_first: false,
    greet: &["Hola,", "Buenos días,", "Estimado equipo de soporte:"],
    body: &[
        "El pedido {n} que hice la semana pasada todavía no ha llegado.",
        "¿Podrían enviarme una copia de la factura?",
        "No puedo iniciar sesión desde el móvil.",
        "La aplicación se cierra al abrir el informe.",
        "¿Es posible cambiar la dirección de envío?",
        "Nos han cobrado dos veces el mismo mes.",
        "La exportación a Excel falla con un error desconocido.",
        "Necesitamos añadir dos usuarios más a la cuenta.",
    ],
    close: &[
        "Muchas gracias por su atención.\n\nUn saludo,",
        "Quedo a la espera de su respuesta.\n\nSaludos cordiales,",
        "Gracias de antemano.",
    ],
    reply: &[
        "¿Hay alguna novedad?",
        "Les escribo de nuevo por mi consulta.",
        "El problema sigue sin resolverse.",
        "Aquí tienen la información que pidieron: el error ocurre siempre al entrar.",
    ],
    subject: &[
        "Pedido {n} no recibido",
        "Copia de la factura",
        "Error al iniciar sesión",
        "Cambio de dirección de envío",
        "Cobro duplicado",
        "Fallo en la exportación",
    ],
    re: &["RE: ", "Re: "],
    wrote: "El {date}, {name} escribió:",
    tld: "example.es",
    freemail: &["telefonica.example.es", "gmail.example"],
    tz_hours: 1,
    disclaimer: "",
};

static RU: LangData = LangData {
    first: &[
        ("Иван", "ivan"),
        ("Ольга", "olga"),
        ("Дмитрий", "dmitry"),
        ("Анна", "anna"),
        ("Сергей", "sergey"),
        ("Елена", "elena"),
        ("Алексей", "alexey"),
        ("Мария", "maria"),
        ("Пётр", "petr"),
    ],
    last: &[
        ("Петров", "petrov"),
        ("Смирнов", "smirnov"),
        ("Кузнецов", "kuznetsov"),
        ("Попов", "popov"),
        ("Соколов", "sokolov"),
        ("Лебедев", "lebedev"),
        ("Козлов", "kozlov"),
        ("Новиков", "novikov"),
        ("Фёдоров", "fedorov"),
    ],
    family_first: false,
    greet: &["Здравствуйте!", "Добрый день!", "Добрый день, коллеги!"],
    body: &[
        "Мой заказ {n} до сих пор не доставлен.",
        "Не могу войти в личный кабинет, пароль не подходит.",
        "В счёте указана неверная сумма, прошу проверить.",
        "Пожалуйста, ответьте как можно скорее.",
        "Прикладываю описание ошибки ниже.",
        "Хотим продлить подписку ещё на год.",
        "Приложение закрывается при открытии отчётов.",
        "Письмо для сброса пароля так и не пришло.",
        "Нам дважды выставили счёт за один и тот же месяц.",
    ],
    close: &[
        "Заранее спасибо.\n\nС уважением,",
        "Спасибо!\n\nС уважением,",
        "Жду ответа.\n\nВсего доброго,",
    ],
    reply: &[
        "Есть ли новости по моему вопросу?",
        "Напоминаю о своём обращении.",
        "Проблема по-прежнему не решена.",
        "Вот дополнительная информация: ошибка возникает при каждом входе.",
    ],
    subject: &[
        "Проблема с заказом {n}",
        "Ошибка при входе",
        "Вопрос по счёту",
        "Продление подписки",
        "Приложение закрывается",
        "Двойное списание",
    ],
    re: &["Re: ", "RE: "],
    wrote: "{date}, {name} пишет:",
    tld: "example.ru",
    freemail: &["yandex.example.ru", "mail.example.ru"],
    tz_hours: 3,
    disclaimer: "",
};

static JA: LangData = LangData {
    first: &[
        ("太郎", "taro"),
        ("花子", "hanako"),
        ("一郎", "ichiro"),
        ("美咲", "misaki"),
        ("健太", "kenta"),
        ("直子", "naoko"),
    ],
    last: &[
        ("山田", "yamada"),
        ("佐藤", "sato"),
        ("鈴木", "suzuki"),
        ("高橋", "takahashi"),
        ("田中", "tanaka"),
        ("伊藤", "ito"),
        ("渡辺", "watanabe"),
        ("中村", "nakamura"),
        ("小林", "kobayashi"),
        ("加藤", "kato"),
    ],
    family_first: true,
    greet: &["お世話になっております。"],
    body: &[
        "注文した商品がまだ届いていません。",
        "請求書の金額が間違っているようです。",
        "ログインできなくなりました。パスワードを再設定してください。",
        "添付のスクリーンショットをご覧ください。",
        "返品の手続きについて教えてください。",
        "アカウントの設定を変更したいです。",
        "至急ご確認をお願いいたします。",
    ],
    close: &["よろしくお願いいたします。"],
    reply: &[
        "その後いかがでしょうか。",
        "先日の問い合わせの件ですが、まだ回答をいただいておりません。",
    ],
    subject: &[
        "注文について ({n})",
        "請求書の件",
        "ログインできません",
        "返品のお願い",
        "アカウント設定の変更",
    ],
    re: &["Re: "],
    wrote: "{date}, {name} wrote:",
    tld: "example.jp",
    freemail: &["docomo.example.ne.jp", "yahoo.example.co.jp"],
    tz_hours: 9,
    disclaimer: "",
};

struct Customer {
    name: String,
    email: String,
    domain: String,
    lang: Lang,
    client: Client,
    phone: String,
}

/// An open conversation of one customer: what a follow-up quotes and refers to.
struct ThreadState {
    subject: String,
    quote: String,
    /// (message number, Message-ID) of the thread's latest messages, oldest first.
    messages: Vec<(usize, String)>,
}

#[derive(Default)]
struct CorpusStats {
    messages: u64,
    new_requests: u64,
    replies: u64,
    replies_references_only: u64,
    duplicates: u64,
    html_only: u64,
    alternative: u64,
    plain: u64,
    attachments: u64,
    attachment_bytes: u64,
    with_cc: u64,
    to_sales: u64,
    bytes: u64,
    largest: u64,
    charsets: BTreeMap<Charset, u64>,
    langs: BTreeMap<Lang, u64>,
    customers_used: u64,
    lag: usize,
    secs: f64,
}

impl CorpusStats {
    fn print(&self) {
        let pct = |n: u64| 100.0 * n as f64 / self.messages.max(1) as f64;
        println!();
        println!(
            "== Corpus (generated in {:.2} s, spooled to a temporary file; not part of the timings) ==",
            self.secs
        );
        println!(
            "{} messages, {:.1} MB: {} new requests ({:.0} %), {} replies ({:.0} %; {} with References only), {} redeliveries ({:.1} %)",
            self.messages,
            self.bytes as f64 / 1e6,
            self.new_requests,
            pct(self.new_requests),
            self.replies,
            pct(self.replies),
            self.replies_references_only,
            self.duplicates,
            pct(self.duplicates)
        );
        println!(
            "from {} distinct customers (pool of {CUSTOMERS}); {} to sales@, the rest to support@; {} with Cc",
            self.customers_used, self.to_sales, self.with_cc
        );
        println!(
            "formats: text/plain {} ({:.0} %), html-only {} ({:.0} %), multipart/alternative {} ({:.0} %); with a 50-500 KB attachment {} ({:.1} %, {:.0} MB, largest message {:.0} KB)",
            self.plain,
            pct(self.plain),
            self.html_only,
            pct(self.html_only),
            self.alternative,
            pct(self.alternative),
            self.attachments,
            pct(self.attachments),
            self.attachment_bytes as f64 / 1e6,
            self.largest as f64 / 1e3
        );
        println!(
            "charsets: {}",
            self.charsets
                .iter()
                .map(|(c, n)| format!("{} {n} ({:.0} %)", c.name(), pct(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "languages: {}",
            self.langs
                .iter()
                .map(|(l, n)| format!("{l:?} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

struct Generator {
    rng: StdRng,
    customers: Vec<Customer>,
    threads: Vec<Vec<ThreadState>>,
    with_threads: Vec<u32>,
    /// Earlier small messages that an MTA may deliver again: (message number, raw).
    redeliverable: VecDeque<(usize, u8, u8, Vec<u8>)>,
    used: Vec<bool>,
    clock: DateTime<Utc>,
    lag: usize,
    p_reply: f64,
    p_attachment: f64,
    stats: CorpusStats,
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

impl Generator {
    fn new(seed: u64, messages: usize, lag: usize, p_attachment: f64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let customers = make_customers(&mut rng);
        // About a third of all messages are replies; none can be before `lag`.
        let p_reply = if messages > lag {
            ((messages as f64 / 3.0) / (messages - lag) as f64).min(0.6)
        } else {
            0.0
        };
        Self {
            rng,
            threads: (0..customers.len()).map(|_| Vec::new()).collect(),
            used: vec![false; customers.len()],
            customers,
            with_threads: Vec::new(),
            redeliverable: VecDeque::new(),
            clock: Utc
                .with_ymd_and_hms(2025, 3, 3, 7, 0, 0)
                .single()
                .unwrap_or_default(),
            lag,
            p_reply,
            p_attachment,
            stats: CorpusStats::default(),
        }
    }

    /// Message number `i`: what it should become, its recipient index, format flags and bytes.
    fn next_message(&mut self, i: usize) -> (Expect, u8, u8, Vec<u8>) {
        self.clock += chrono::Duration::seconds(self.rng.random_range(1..=30));
        self.stats.messages += 1;
        // An MTA retry or a second path: the same message again, with one more Received line.
        if self.rng.random_bool(0.01)
            && let Some(pos) = self
                .redeliverable
                .iter()
                .position(|(n, ..)| n + self.lag <= i)
        {
            let (_, recipient, flags, raw) = self.redeliverable.remove(pos).unwrap_or_default();
            let mut again = format!(
                "Received: from relay2.acme.test (relay2.acme.test [10.0.0.12])\r\n\tby mx.acme.test (Postfix) with ESMTPS id {:X}; {}\r\n",
                self.rng.random::<u64>(),
                self.clock.to_rfc2822()
            )
            .into_bytes();
            again.extend_from_slice(&raw);
            self.stats.duplicates += 1;
            self.stats.bytes += again.len() as u64;
            return (Expect::Redelivery, recipient, flags, again);
        }
        let reply_to = if self.rng.random_bool(self.p_reply) {
            self.pick_thread(i)
        } else {
            None
        };
        let customer = match reply_to {
            Some((c, _, _)) => c,
            None => self.pick_customer(),
        };
        self.used[customer] = true;
        let (lang, name, domain, phone) = {
            let c = &self.customers[customer];
            (c.lang, c.name.clone(), c.domain.clone(), c.phone.clone())
        };
        let d = lang_data(lang);
        let charset = self.pick_charset(lang);
        *self.stats.charsets.entry(charset).or_default() += 1;
        *self.stats.langs.entry(lang).or_default() += 1;

        // Subject, body paragraphs and threading headers.
        let mut paras: Vec<Para> = Vec::new();
        let subject;
        let mut in_reply_to = None;
        let mut references = Vec::new();
        let quote_first;
        match reply_to {
            Some((_, t, m)) => {
                let (thread_subject, quote) = {
                    let thread = &self.threads[customer][t];
                    let upto = thread
                        .messages
                        .iter()
                        .position(|(n, _)| *n == m)
                        .unwrap_or(0);
                    references = thread.messages[..=upto]
                        .iter()
                        .map(|(_, id)| id.clone())
                        .collect();
                    (thread.subject.clone(), thread.quote.clone())
                };
                let re = *d.re.choose(&mut self.rng).unwrap_or(&"Re: ");
                subject = format!("{re}{thread_subject}");
                if self.rng.random_bool(0.9) {
                    in_reply_to = references.last().cloned();
                } else {
                    self.stats.replies_references_only += 1;
                }
                paras.push(Para::text(self.pick_fill(d.reply)));
                if self.rng.random_bool(0.4) {
                    paras.push(Para::text(self.pick_fill(d.body)));
                }
                quote_first = quote;
                self.stats.replies += 1;
            }
            None => {
                subject = self.pick_fill(d.subject);
                paras.push(Para::text(
                    d.greet.choose(&mut self.rng).unwrap_or(&"").to_string(),
                ));
                let sentences = self.rng.random_range(2..=7);
                let mut para = String::new();
                let mut first = String::new();
                for k in 0..sentences {
                    let s = self.pick_fill(d.body);
                    if k == 0 {
                        first = s.clone();
                    }
                    if !para.is_empty() {
                        para.push(if lang == Lang::Ja { '\n' } else { ' ' });
                    }
                    para.push_str(&s);
                    if self.rng.random_bool(0.35) {
                        paras.push(Para::text(std::mem::take(&mut para)));
                    }
                }
                if !para.is_empty() {
                    paras.push(Para::text(para));
                }
                quote_first = first;
                self.stats.new_requests += 1;
            }
        }
        for part in d.close.choose(&mut self.rng).unwrap_or(&"").split("\n\n") {
            paras.push(Para::text(part.to_string()));
        }
        paras.push(Para::signature(format!(
            "{name}\n{}\n{phone}",
            company_name(&domain)
        )));
        if !d.disclaimer.is_empty() && self.rng.random_bool(0.25) {
            paras.push(Para::signature(d.disclaimer.to_string()));
        }
        if reply_to.is_some() {
            let when = self.clock - chrono::Duration::hours(self.rng.random_range(2..72));
            let header = d
                .wrote
                .replace("{date}", &when.format("%a, %-d %b %Y at %H:%M").to_string())
                .replace("{name}", &name);
            paras.push(Para::text(header));
            paras.push(Para::quote(format!(
                "{}\n\n{quote_first}",
                d.greet.first().unwrap_or(&"")
            )));
        }

        // Format: ~15 % HTML only, ~20 % multipart/alternative, the rest text/plain; ~5 % attachment.
        let roll = self.rng.random::<f64>();
        let (html_only, alternative) = (roll < 0.15, (0.15..0.35).contains(&roll));
        let attachment = self.rng.random_bool(self.p_attachment);
        let mut flags = 0;
        if html_only {
            flags |= FLAG_HTML_ONLY;
            self.stats.html_only += 1;
        } else if alternative {
            flags |= FLAG_ALTERNATIVE;
            self.stats.alternative += 1;
        } else {
            self.stats.plain += 1;
        }

        let message_id = self.message_id(customer, i);
        let recipient = u8::from(self.rng.random_bool(0.1));
        self.stats.to_sales += u64::from(recipient);
        let raw = self.assemble(
            customer,
            charset,
            &subject,
            &message_id,
            in_reply_to.as_deref(),
            &references,
            &paras,
            html_only,
            alternative,
            attachment,
            recipient,
        );
        if attachment {
            flags |= FLAG_ATTACHMENT;
        }
        self.stats.bytes += raw.len() as u64;
        self.stats.largest = self.stats.largest.max(raw.len() as u64);

        // Remember the conversation for later follow-ups.
        match reply_to {
            Some((_, t, _)) => {
                let msgs = &mut self.threads[customer][t].messages;
                msgs.push((i, message_id));
                if msgs.len() > 8 {
                    msgs.remove(0);
                }
            }
            None => {
                let threads = &mut self.threads[customer];
                if threads.is_empty() {
                    self.with_threads.push(customer as u32);
                }
                if threads.len() >= 3 {
                    threads.remove(0);
                }
                threads.push(ThreadState {
                    subject: subject.clone(),
                    quote: quote_first,
                    messages: vec![(i, message_id)],
                });
            }
        }
        if !attachment && self.rng.random_bool(0.03) {
            self.redeliverable
                .push_back((i, recipient, flags, raw.clone()));
            if self.redeliverable.len() > 64 {
                self.redeliverable.pop_front();
            }
        }
        let expect = if reply_to.is_some() {
            Expect::Reply
        } else {
            Expect::NewRequest
        };
        (expect, recipient, flags, raw)
    }

    /// A customer with a conversation whose latest usable message is at least `lag` back:
    /// (customer, thread, message number replied to).
    fn pick_thread(&mut self, i: usize) -> Option<(usize, usize, usize)> {
        for _ in 0..6 {
            let c = *self.with_threads.choose(&mut self.rng)? as usize;
            let t = self.rng.random_range(0..self.threads[c].len());
            if let Some((n, _)) = self.threads[c][t]
                .messages
                .iter()
                .rev()
                .find(|(n, _)| n + self.lag <= i)
            {
                return Some((c, t, *n));
            }
        }
        None
    }

    /// Mildly skewed: some customers write far more often than others.
    fn pick_customer(&mut self) -> usize {
        let u: f64 = self.rng.random();
        ((u.powf(1.3) * self.customers.len() as f64) as usize).min(self.customers.len() - 1)
    }

    fn pick_fill(&mut self, templates: &[&str]) -> String {
        let t = *templates.choose(&mut self.rng).unwrap_or(&"");
        fill(&mut self.rng, t)
    }

    fn pick_charset(&mut self, lang: Lang) -> Charset {
        let options: &[(Charset, u32)] = match lang {
            Lang::En => &[
                (Charset::Utf8, 70),
                (Charset::Win1252, 15),
                (Charset::Ascii, 10),
                (Charset::Latin1, 5),
            ],
            Lang::De | Lang::Fr | Lang::Es => &[
                (Charset::Utf8, 55),
                (Charset::Latin1, 25),
                (Charset::Win1252, 20),
            ],
            Lang::Ru => &[(Charset::Koi8r, 50), (Charset::Utf8, 50)],
            Lang::Ja => &[
                (Charset::Iso2022jp, 55),
                (Charset::ShiftJis, 30),
                (Charset::Utf8, 15),
            ],
        };
        weighted(&mut self.rng, options)
    }

    fn message_id(&mut self, customer: usize, i: usize) -> String {
        let c = &self.customers[customer];
        let a = self.rng.random::<u64>();
        let b = self.rng.random::<u64>();
        match c.client {
            Client::Outlook => format!(
                "AM0PR04MB{:04}{:016X}@AM0PR04MB{:04}.eurprd04.prod.outlook.com",
                a % 10_000,
                b,
                (a >> 20) % 10_000
            ),
            Client::Gmail => format!("CA+{:016x}{:016x}{i:x}@mail.gmail.com", a, b),
            Client::AppleMail => format!(
                "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}@{}",
                a >> 32,
                a & 0xffff,
                b >> 48,
                (b >> 32) & 0xffff,
                b & 0xffff_ffff_ffff,
                c.domain
            ),
            Client::Thunderbird | Client::Mobile => {
                format!("{:016x}.{i}.{:08x}@{}", a, b as u32, c.domain)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &mut self,
        customer: usize,
        cs: Charset,
        subject: &str,
        message_id: &str,
        in_reply_to: Option<&str>,
        references: &[String],
        paras: &[Para],
        html_only: bool,
        alternative: bool,
        attachment: bool,
        recipient: u8,
    ) -> Vec<u8> {
        let c = &self.customers[customer];
        let d = lang_data(c.lang);
        let rng = &mut self.rng;
        let tz = FixedOffset::east_opt(d.tz_hours * 3600)
            .unwrap_or(FixedOffset::east_opt(0).expect("utc"));
        let date = self.clock.with_timezone(&tz).to_rfc2822();
        let ip = rng.random_range(1..255);
        let mut h = String::with_capacity(2048);
        let _ = write!(h, "Return-Path: <{}>\r\n", c.email);
        let _ = write!(
            h,
            "Received: from mail.{dom} (mail.{dom} [198.51.100.{ip}])\r\n\tby mx.acme.test (Postfix) with ESMTPS id 4Z{:010X}\r\n\tfor <{}>; {}\r\n",
            rng.random::<u64>() & 0xff_ffff_ffff,
            RECIPIENTS[usize::from(recipient)],
            self.clock.to_rfc2822(),
            dom = c.domain
        );
        if rng.random_bool(0.6) {
            let _ = write!(
                h,
                "Authentication-Results: mx.acme.test;\r\n\tdkim=pass header.d={dom} header.s=s1;\r\n\tspf=pass smtp.mailfrom={dom};\r\n\tdmarc=pass header.from={dom}\r\n",
                dom = c.domain
            );
        }
        let _ = write!(
            h,
            "From: {}\r\n",
            mailbox_header(&c.name, &c.email, cs, rng)
        );
        let _ = write!(
            h,
            "To: {}\r\n",
            if recipient == 0 {
                "Acme Support <support@acme.test>"
            } else {
                "Acme Sales <sales@acme.test>"
            }
        );
        if rng.random_bool(0.1) {
            let colleague = format!(
                "{}.{}@{}",
                d.first.choose(rng).map_or("team", |f| f.1),
                d.last.choose(rng).map_or("x", |l| l.1),
                c.domain
            );
            let _ = write!(h, "Cc: {colleague}\r\n");
            self.stats.with_cc += 1;
        }
        let _ = write!(h, "Subject: {}\r\n", encode_header_text(subject, cs, rng));
        let _ = write!(h, "Date: {date}\r\n");
        let _ = write!(h, "Message-ID: <{message_id}>\r\n");
        if let Some(id) = in_reply_to {
            let _ = write!(h, "In-Reply-To: <{id}>\r\n");
        }
        if !references.is_empty() {
            let refs: Vec<String> = references.iter().map(|r| format!("<{r}>")).collect();
            let _ = write!(h, "References: {}\r\n", refs.join("\r\n "));
        }
        match c.client {
            Client::Outlook => {
                h.push_str("X-Mailer: Microsoft Outlook 16.0\r\nThread-Index: AdqMz");
                let _ = write!(
                    h,
                    "{:012X}==\r\nContent-Language: {}\r\n",
                    rng.random::<u64>() & 0xffff_ffff_ffff,
                    lang_tag(c.lang)
                );
            }
            Client::Gmail => {}
            Client::AppleMail => h.push_str("X-Mailer: Apple Mail (2.3774.500.171.1.1)\r\n"),
            Client::Thunderbird => {
                h.push_str("User-Agent: Mozilla Thunderbird\r\nContent-Language: en-US\r\n")
            }
            Client::Mobile => h.push_str("X-Mailer: iPhone Mail (21E236)\r\n"),
        }
        h.push_str("MIME-Version: 1.0\r\n");

        let text_cte = text_cte(cs, rng);
        let html_cte = html_cte(cs, rng);
        let body_part = if html_only {
            leaf("text/html", cs, html_cte, &render_html(paras, c, cs, rng))
        } else if alternative {
            let boundary = boundary(rng);
            let text = leaf("text/plain", cs, text_cte, &render_text(paras));
            let html = leaf("text/html", cs, html_cte, &render_html(paras, c, cs, rng));
            multipart("alternative", &boundary, &[text, html])
        } else {
            leaf("text/plain", cs, text_cte, &render_text(paras))
        };
        let mut raw = h.into_bytes();
        if attachment {
            let boundary = boundary(rng);
            let att = attachment_part(rng, c.lang, &mut self.stats);
            raw.extend_from_slice(&multipart("mixed", &boundary, &[body_part, att]));
        } else {
            raw.extend_from_slice(&body_part);
        }
        raw
    }
}

fn make_customers(rng: &mut StdRng) -> Vec<Customer> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(CUSTOMERS);
    // Companies per language: several customers share a domain, as colleagues do.
    let mut companies: HashMap<Lang, Vec<String>> = HashMap::new();
    for i in 0..CUSTOMERS {
        let lang = weighted(
            rng,
            &[
                (Lang::En, 45),
                (Lang::De, 18),
                (Lang::Fr, 10),
                (Lang::Es, 9),
                (Lang::Ru, 9),
                (Lang::Ja, 9),
            ],
        );
        let d = lang_data(lang);
        let list = companies.entry(lang).or_insert_with(|| {
            let mut v = Vec::new();
            for a in COMPANY_A {
                for b in COMPANY_B {
                    v.push(format!("{a}{b}.{}", d.tld));
                }
            }
            v
        });
        let domain = if rng.random_bool(0.2) {
            d.freemail
                .choose(rng)
                .unwrap_or(&"mail.example")
                .to_string()
        } else {
            list[rng.random_range(0..list.len().min(120))].clone()
        };
        let (first, first_ascii) = *d.first.choose(rng).unwrap_or(&("Alex", "alex"));
        let (last, last_ascii) = *d.last.choose(rng).unwrap_or(&("Doe", "doe"));
        let name = if d.family_first {
            format!("{last} {first}")
        } else {
            format!("{first} {last}")
        };
        let mut email = format!("{first_ascii}.{last_ascii}@{domain}");
        if !seen.insert(email.clone()) {
            email = format!("{first_ascii}.{last_ascii}{i}@{domain}");
            seen.insert(email.clone());
        }
        let client = weighted(
            rng,
            &[
                (Client::Outlook, 35),
                (Client::Gmail, 30),
                (Client::AppleMail, 15),
                (Client::Thunderbird, 15),
                (Client::Mobile, 5),
            ],
        );
        let phone = format!(
            "Tel. +{} {} {}",
            [1, 49, 33, 34, 7, 81][lang as usize],
            rng.random_range(20..990),
            rng.random_range(100_000..9_999_999)
        );
        out.push(Customer {
            name,
            email,
            domain,
            lang,
            client,
            phone,
        });
    }
    out
}

fn weighted<T: Copy>(rng: &mut StdRng, options: &[(T, u32)]) -> T {
    let total: u32 = options.iter().map(|o| o.1).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (item, w) in options {
        if roll < *w {
            return *item;
        }
        roll -= w;
    }
    options[0].0
}

fn fill(rng: &mut StdRng, template: &str) -> String {
    if template.contains("{n}") {
        template.replace("{n}", &rng.random_range(10_000..99_999).to_string())
    } else {
        template.to_string()
    }
}

fn company_name(domain: &str) -> String {
    let stem = domain.split('.').next().unwrap_or(domain);
    let mut c = stem.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn lang_tag(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "en-US",
        Lang::De => "de-DE",
        Lang::Fr => "fr-FR",
        Lang::Es => "es-ES",
        Lang::Ru => "ru-RU",
        Lang::Ja => "ja-JP",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ParaKind {
    Text,
    Signature,
    Quote,
}

struct Para {
    kind: ParaKind,
    text: String,
}

impl Para {
    fn text(text: String) -> Self {
        Self {
            kind: ParaKind::Text,
            text,
        }
    }
    fn signature(text: String) -> Self {
        Self {
            kind: ParaKind::Signature,
            text,
        }
    }
    fn quote(text: String) -> Self {
        Self {
            kind: ParaKind::Quote,
            text,
        }
    }
}

fn render_text(paras: &[Para]) -> String {
    let mut out = String::new();
    for p in paras {
        if p.kind == ParaKind::Signature && !out.contains("\n-- \n") && p.text.contains('\n') {
            out.push_str("-- \n");
        }
        match p.kind {
            ParaKind::Quote => {
                for line in p.text.lines() {
                    out.push('>');
                    if !line.is_empty() {
                        out.push(' ');
                        out.push_str(line);
                    }
                    out.push('\n');
                }
            }
            _ => {
                out.push_str(&p.text);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>\n")
}

/// HTML as the customer's mail client writes it (Outlook's Word HTML is the bulky one).
fn render_html(paras: &[Para], c: &Customer, cs: Charset, rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(4096);
    match c.client {
        Client::Outlook => {
            let _ = writeln!(
                s,
                "<html xmlns:v=\"urn:schemas-microsoft-com:vml\" xmlns:o=\"urn:schemas-microsoft-com:office:office\" \
                 xmlns:w=\"urn:schemas-microsoft-com:office:word\" xmlns:m=\"http://schemas.microsoft.com/office/2004/12/omml\" \
                 xmlns=\"http://www.w3.org/TR/REC-html40\">\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset={}\">\n\
                 <meta name=\"Generator\" content=\"Microsoft Word 15 (filtered medium)\">\n<style><!--\n\
                 /* Font Definitions */\n@font-face\n\t{{font-family:\"Cambria Math\";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}}\n\
                 @font-face\n\t{{font-family:Calibri;\n\tpanose-1:2 15 5 2 2 2 4 3 2 4;}}\n/* Style Definitions */\n\
                 p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{{margin:0cm;\n\tfont-size:11.0pt;\n\tfont-family:\"Calibri\",sans-serif;\n\tmso-fareast-language:EN-US;}}\n\
                 a:link, span.MsoHyperlink\n\t{{mso-style-priority:99;\n\tcolor:#0563C1;\n\ttext-decoration:underline;}}\n\
                 span.EmailStyle17\n\t{{mso-style-type:personal-compose;\n\tfont-family:\"Calibri\",sans-serif;\n\tcolor:windowtext;}}\n\
                 .MsoChpDefault\n\t{{mso-style-type:export-only;\n\tfont-family:\"Calibri\",sans-serif;}}\n\
                 @page WordSection1\n\t{{size:612.0pt 792.0pt;\n\tmargin:70.85pt 70.85pt 2.0cm 70.85pt;}}\ndiv.WordSection1\n\t{{page:WordSection1;}}\n\
                 --></style><!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext=\"edit\" spidmax=\"1026\" />\n</xml><![endif]-->\n</head>\n\
                 <body lang=\"{}\" link=\"#0563C1\" vlink=\"#954F72\" style=\"word-wrap:break-word\">\n<div class=\"WordSection1\">",
                cs.name(),
                lang_tag(c.lang)
            );
            for p in paras {
                let style = match p.kind {
                    ParaKind::Signature => " style=\"font-size:9.0pt;color:#7F7F7F\"",
                    _ => "",
                };
                if p.kind == ParaKind::Quote {
                    s.push_str("<div style=\"border:none;border-left:solid #E1E1E1 1.5pt;padding:0cm 0cm 0cm 4.0pt\">\n");
                }
                let _ = writeln!(
                    s,
                    "<p class=\"MsoNormal\"><span{style}>{}<o:p></o:p></span></p>\n<p class=\"MsoNormal\"><o:p>&nbsp;</o:p></p>",
                    escape_html(&p.text)
                );
                if p.kind == ParaKind::Quote {
                    s.push_str("</div>\n");
                }
            }
            s.push_str("</div>\n</body>\n</html>\n");
        }
        Client::Gmail => {
            s.push_str("<div dir=\"ltr\">");
            for p in paras {
                match p.kind {
                    ParaKind::Text => {
                        let _ = writeln!(s, "<div>{}</div><div><br></div>", escape_html(&p.text));
                    }
                    ParaKind::Signature => {
                        let _ = writeln!(
                            s,
                            "<span class=\"gmail_signature_prefix\">-- </span><br><div dir=\"ltr\" class=\"gmail_signature\">{}</div>",
                            escape_html(&p.text)
                        );
                    }
                    ParaKind::Quote => {
                        let _ = writeln!(
                            s,
                            "<div class=\"gmail_quote\"><blockquote class=\"gmail_quote\" style=\"margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex\">{}</blockquote></div>",
                            escape_html(&p.text)
                        );
                    }
                }
            }
            s.push_str("</div>\n");
        }
        Client::AppleMail | Client::Thunderbird | Client::Mobile => {
            let _ = writeln!(
                s,
                "<!DOCTYPE html>\n<html><head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset={}\">\n</head>\n\
                 <body style=\"overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: after-white-space;\">",
                cs.name()
            );
            for p in paras {
                match p.kind {
                    ParaKind::Text => {
                        let _ = writeln!(s, "<p>{}</p>", escape_html(&p.text));
                    }
                    ParaKind::Signature => {
                        let _ = writeln!(
                            s,
                            "<div class=\"moz-signature\">-- <br>{}</div>",
                            escape_html(&p.text)
                        );
                    }
                    ParaKind::Quote => {
                        let _ = writeln!(
                            s,
                            "<blockquote type=\"cite\">{}</blockquote>",
                            escape_html(&p.text)
                        );
                    }
                }
            }
            let _ = writeln!(
                s,
                "<p><a href=\"https://www.{dom}/\">www.{dom}</a></p>",
                dom = c.domain
            );
            if c.client == Client::Mobile || rng.random_bool(0.2) {
                let _ = writeln!(
                    s,
                    "<img src=\"https://t.example.net/o/{:016x}.gif\" width=\"1\" height=\"1\" alt=\"\">",
                    rng.random::<u64>()
                );
            }
            s.push_str("</body></html>\n");
        }
    }
    s
}

fn text_cte(cs: Charset, rng: &mut StdRng) -> Cte {
    match cs {
        Charset::Utf8 => weighted(
            rng,
            &[
                (Cte::EightBit, 50),
                (Cte::QuotedPrintable, 35),
                (Cte::Base64, 15),
            ],
        ),
        Charset::Ascii | Charset::Iso2022jp => Cte::SevenBit,
        Charset::Latin1 => weighted(rng, &[(Cte::QuotedPrintable, 85), (Cte::EightBit, 15)]),
        Charset::Win1252 => weighted(rng, &[(Cte::QuotedPrintable, 70), (Cte::EightBit, 30)]),
        Charset::Koi8r => weighted(rng, &[(Cte::EightBit, 80), (Cte::Base64, 20)]),
        Charset::ShiftJis => weighted(rng, &[(Cte::EightBit, 50), (Cte::Base64, 50)]),
    }
}

fn html_cte(cs: Charset, rng: &mut StdRng) -> Cte {
    match cs {
        Charset::Ascii | Charset::Iso2022jp => Cte::SevenBit,
        _ => weighted(rng, &[(Cte::QuotedPrintable, 70), (Cte::Base64, 30)]),
    }
}

fn boundary(rng: &mut StdRng) -> String {
    format!(
        "----=_Part_{:016x}{:08x}",
        rng.random::<u64>(),
        rng.random::<u32>()
    )
}

/// A leaf part: its header lines, a blank line and the encoded body.
fn leaf(mime: &str, cs: Charset, cte: Cte, text: &str) -> Vec<u8> {
    let mut out = format!(
        "Content-Type: {mime}; charset=\"{}\"\r\nContent-Transfer-Encoding: {}\r\n\r\n",
        cs.name(),
        cte.name()
    )
    .into_bytes();
    let bytes = encode_text(text, cs);
    match cte {
        Cte::SevenBit | Cte::EightBit => out.extend_from_slice(&crlf(&bytes)),
        Cte::QuotedPrintable => out.extend_from_slice(&quoted_printable(&bytes)),
        Cte::Base64 => out.extend_from_slice(&base64_lines(&bytes)),
    }
    out
}

fn multipart(subtype: &str, boundary: &str, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("Content-Type: multipart/{subtype};\r\n\tboundary=\"{boundary}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n").into_bytes();
    for p in parts {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        out.extend_from_slice(p);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn attachment_part(rng: &mut StdRng, lang: Lang, stats: &mut CorpusStats) -> Vec<u8> {
    let size = rng.random_range(50_000..=500_000);
    let pdf = rng.random_bool(0.5);
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    let magic: &[u8] = if pdf {
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    } else {
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"
    };
    bytes[..magic.len()].copy_from_slice(magic);
    stats.attachments += 1;
    stats.attachment_bytes += size as u64;
    let n = rng.random_range(1000..9999);
    let (mime, name) = match (pdf, lang) {
        (true, Lang::De) => ("application/pdf", format!("Rechnung_März_{n}.pdf")),
        (true, Lang::Fr) => ("application/pdf", format!("facture_reçue_{n}.pdf")),
        (true, _) => ("application/pdf", format!("invoice-{n}.pdf")),
        (false, Lang::Ja) => ("image/png", format!("スクリーンショット_{n}.png")),
        (false, _) => ("image/png", format!("screenshot-{n}.png")),
    };
    let disposition = if name.is_ascii() {
        format!(
            "Content-Type: {mime}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
        )
    } else {
        // RFC 2231 for the file name, RFC 2047 for the old-style name parameter.
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!(
            "Content-Type: {mime}; name=\"=?UTF-8?B?{}?=\"\r\nContent-Disposition: attachment; filename*=UTF-8''{encoded}\r\n",
            base64(name.as_bytes())
        )
    };
    let mut out = format!("{disposition}Content-Transfer-Encoding: base64\r\n\r\n").into_bytes();
    out.extend_from_slice(&base64_lines(&bytes));
    out
}

/// `"Name" <addr>`, with the name RFC 2047-encoded when it is not ASCII.
fn mailbox_header(name: &str, email: &str, cs: Charset, rng: &mut StdRng) -> String {
    if name.is_ascii() {
        if name.contains(['\'', ',', '.']) {
            format!("\"{name}\" <{email}>")
        } else {
            format!("{name} <{email}>")
        }
    } else {
        format!("{} <{email}>", encoded_words(name, cs, rng))
    }
}

fn encode_header_text(s: &str, cs: Charset, rng: &mut StdRng) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        encoded_words(s, cs, rng)
    }
}

/// RFC 2047 encoded words, each a whole number of characters and at most 75 long.
fn encoded_words(s: &str, cs: Charset, rng: &mut StdRng) -> String {
    let cs = if cs == Charset::Ascii {
        Charset::Utf8
    } else {
        cs
    };
    let b = match cs {
        Charset::Koi8r | Charset::Iso2022jp | Charset::ShiftJis => true,
        Charset::Utf8 => rng.random_bool(0.5),
        _ => false,
    };
    let mut words = Vec::new();
    let mut chunk = String::new();
    let budget = if b { 36 } else { 45 };
    let flush = |chunk: &str, words: &mut Vec<String>| {
        let bytes = encode_text(chunk, cs);
        let body = if b { base64(&bytes) } else { q_encode(&bytes) };
        words.push(format!(
            "=?{}?{}?{body}?=",
            cs.name(),
            if b { 'B' } else { 'Q' }
        ));
    };
    for ch in s.chars() {
        let mut next = chunk.clone();
        next.push(ch);
        let len = encode_text(&next, cs).len();
        let cost = if b { len } else { len * 3 };
        if cost > budget && !chunk.is_empty() {
            flush(&chunk, &mut words);
            chunk.clear();
        }
        chunk.push(ch);
    }
    if !chunk.is_empty() {
        flush(&chunk, &mut words);
    }
    words.join("\r\n ")
}

fn q_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        match b {
            b' ' => out.push('_'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'!' | b'*' | b'+' | b'-' | b'/' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "={b:02X}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Charset and transfer encoders (the generator's; the gateway decodes with mail-parser)
// ---------------------------------------------------------------------------------------

/// Text in `cs`; characters the charset lacks are folded to ASCII look-alikes or `?`.
fn encode_text(s: &str, cs: Charset) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    match cs {
        Charset::Utf8 => out.extend_from_slice(s.as_bytes()),
        Charset::Ascii | Charset::Latin1 | Charset::Win1252 => {
            for ch in s.chars() {
                if let Some(b) = win1252_byte(ch).filter(|_| cs == Charset::Win1252) {
                    out.push(b);
                } else if (ch as u32) < 0x80
                    || (cs != Charset::Ascii && (0xA0..=0xFF).contains(&(ch as u32)))
                {
                    out.push(ch as u32 as u8);
                } else {
                    out.extend_from_slice(ascii_fold(ch).as_bytes());
                }
            }
        }
        Charset::Koi8r => {
            for ch in s.chars() {
                match koi8r_byte(ch) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(ascii_fold(ch).as_bytes()),
                }
            }
        }
        Charset::Iso2022jp => {
            let mut kanji = false;
            for ch in s.chars() {
                if let Some((a, b)) = jis(ch) {
                    if !kanji {
                        out.extend_from_slice(b"\x1b$B");
                        kanji = true;
                    }
                    out.extend_from_slice(&[a, b]);
                } else {
                    if kanji {
                        out.extend_from_slice(b"\x1b(B");
                        kanji = false;
                    }
                    out.extend_from_slice(ascii_fold(ch).as_bytes());
                }
            }
            if kanji {
                out.extend_from_slice(b"\x1b(B");
            }
        }
        Charset::ShiftJis => {
            for ch in s.chars() {
                match jis(ch) {
                    Some((a, b)) => out.extend_from_slice(&jis_to_sjis(a, b)),
                    None => out.extend_from_slice(ascii_fold(ch).as_bytes()),
                }
            }
        }
    }
    out
}

fn representable(ch: char, cs: Charset) -> bool {
    let latin1 = (0xA0..=0xFF).contains(&(ch as u32));
    ch.is_ascii()
        || match cs {
            Charset::Utf8 => true,
            Charset::Ascii => false,
            Charset::Latin1 => latin1,
            Charset::Win1252 => latin1 || win1252_byte(ch).is_some(),
            Charset::Koi8r => koi8r_byte(ch).is_some(),
            Charset::Iso2022jp | Charset::ShiftJis => jis(ch).is_some(),
        }
}

fn ascii_fold(ch: char) -> String {
    match ch {
        c if c.is_ascii() => c.to_string(),
        '“' | '”' | '„' | '«' | '»' => "\"".into(),
        '‘' | '’' => "'".into(),
        '–' | '—' => "-".into(),
        '€' => "EUR".into(),
        '…' => "...".into(),
        _ => "?".into(),
    }
}

fn win1252_byte(ch: char) -> Option<u8> {
    Some(match ch {
        '€' => 0x80,
        '‚' => 0x82,
        '„' => 0x84,
        '…' => 0x85,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '™' => 0x99,
        _ => return None,
    })
}

/// KOI8-R: 0xC0..=0xFF hold the Cyrillic letters in this order (lower case, then upper case).
const KOI8R_LETTERS: &str = "юабцдефгхийклмнопярстужвьызшэщчъЮАБЦДЕФГХИЙКЛМНОПЯРСТУЖВЬЫЗШЭЩЧЪ";

fn koi8r_byte(ch: char) -> Option<u8> {
    if ch.is_ascii() {
        return Some(ch as u8);
    }
    match ch {
        'ё' => Some(0xA3),
        'Ё' => Some(0xB3),
        _ => KOI8R_LETTERS
            .chars()
            .position(|c| c == ch)
            .map(|i| 0xC0 + i as u8),
    }
}

/// JIS X 0208 codes of the characters the Japanese sample text uses (checked against
/// Python's `iso2022_jp` and `shift_jis` codecs when this table was made).
const JIS_X0208: &[(char, u8, u8)] = &[
    ('、', 0x21, 0x22),
    ('。', 0x21, 0x23),
    ('い', 0x24, 0x24),
    ('う', 0x24, 0x26),
    ('え', 0x24, 0x28),
    ('お', 0x24, 0x2A),
    ('か', 0x24, 0x2B),
    ('が', 0x24, 0x2C),
    ('き', 0x24, 0x2D),
    ('く', 0x24, 0x2F),
    ('ご', 0x24, 0x34),
    ('さ', 0x24, 0x35),
    ('し', 0x24, 0x37),
    ('す', 0x24, 0x39),
    ('せ', 0x24, 0x3B),
    ('そ', 0x24, 0x3D),
    ('た', 0x24, 0x3F),
    ('だ', 0x24, 0x40),
    ('っ', 0x24, 0x43),
    ('つ', 0x24, 0x44),
    ('て', 0x24, 0x46),
    ('で', 0x24, 0x47),
    ('な', 0x24, 0x4A),
    ('に', 0x24, 0x4B),
    ('の', 0x24, 0x4E),
    ('ま', 0x24, 0x5E),
    ('ょ', 0x24, 0x67),
    ('よ', 0x24, 0x68),
    ('り', 0x24, 0x6A),
    ('る', 0x24, 0x6B),
    ('ろ', 0x24, 0x6D),
    ('わ', 0x24, 0x6F),
    ('を', 0x24, 0x72),
    ('ん', 0x24, 0x73),
    ('ア', 0x25, 0x22),
    ('イ', 0x25, 0x24),
    ('ウ', 0x25, 0x26),
    ('カ', 0x25, 0x2B),
    ('ク', 0x25, 0x2F),
    ('グ', 0x25, 0x30),
    ('シ', 0x25, 0x37),
    ('ス', 0x25, 0x39),
    ('ッ', 0x25, 0x43),
    ('ト', 0x25, 0x48),
    ('ド', 0x25, 0x49),
    ('パ', 0x25, 0x51),
    ('ョ', 0x25, 0x67),
    ('リ', 0x25, 0x6A),
    ('ロ', 0x25, 0x6D),
    ('ワ', 0x25, 0x6F),
    ('ン', 0x25, 0x73),
    ('ー', 0x21, 0x3C),
    ('一', 0x30, 0x6C),
    ('世', 0x40, 0x24),
    ('中', 0x43, 0x66),
    ('付', 0x49, 0x55),
    ('件', 0x37, 0x6F),
    ('伊', 0x30, 0x4B),
    ('会', 0x32, 0x71),
    ('佐', 0x3A, 0x34),
    ('健', 0x37, 0x72),
    ('先', 0x40, 0x68),
    ('再', 0x3A, 0x46),
    ('加', 0x32, 0x43),
    ('合', 0x39, 0x67),
    ('咲', 0x3A, 0x69),
    ('品', 0x49, 0x4A),
    ('商', 0x3E, 0x26),
    ('問', 0x4C, 0x64),
    ('回', 0x32, 0x73),
    ('変', 0x4A, 0x51),
    ('太', 0x42, 0x40),
    ('子', 0x3B, 0x52),
    ('定', 0x44, 0x6A),
    ('小', 0x3E, 0x2E),
    ('届', 0x46, 0x4F),
    ('山', 0x3B, 0x33),
    ('式', 0x3C, 0x30),
    ('後', 0x38, 0x65),
    ('急', 0x35, 0x5E),
    ('手', 0x3C, 0x6A),
    ('教', 0x36, 0x35),
    ('文', 0x4A, 0x38),
    ('日', 0x46, 0x7C),
    ('更', 0x39, 0x39),
    ('書', 0x3D, 0x71),
    ('木', 0x4C, 0x5A),
    ('村', 0x42, 0x3C),
    ('林', 0x4E, 0x53),
    ('株', 0x33, 0x74),
    ('様', 0x4D, 0x4D),
    ('橋', 0x36, 0x36),
    ('求', 0x35, 0x61),
    ('注', 0x43, 0x6D),
    ('添', 0x45, 0x3A),
    ('渡', 0x45, 0x4F),
    ('田', 0x45, 0x44),
    ('直', 0x44, 0x3E),
    ('確', 0x33, 0x4E),
    ('社', 0x3C, 0x52),
    ('答', 0x45, 0x7A),
    ('続', 0x42, 0x33),
    ('美', 0x48, 0x7E),
    ('至', 0x3B, 0x6A),
    ('花', 0x32, 0x56),
    ('藤', 0x46, 0x23),
    ('覧', 0x4D, 0x77),
    ('設', 0x40, 0x5F),
    ('話', 0x4F, 0x43),
    ('認', 0x47, 0x27),
    ('請', 0x40, 0x41),
    ('辺', 0x4A, 0x55),
    ('返', 0x4A, 0x56),
    ('違', 0x30, 0x63),
    ('郎', 0x4F, 0x3A),
    ('金', 0x36, 0x62),
    ('鈴', 0x4E, 0x6B),
    ('間', 0x34, 0x56),
    ('額', 0x33, 0x5B),
    ('願', 0x34, 0x6A),
    ('高', 0x39, 0x62),
];

fn jis(ch: char) -> Option<(u8, u8)> {
    JIS_X0208
        .binary_search_by(|(c, _, _)| c.cmp(&ch))
        .ok()
        .map(|i| (JIS_X0208[i].1, JIS_X0208[i].2))
}

fn jis_to_sjis(j1: u8, j2: u8) -> [u8; 2] {
    let s1 = j1.div_ceil(2) + if j1 <= 0x5E { 0x70 } else { 0xB0 };
    let s2 = if j1 % 2 == 1 {
        j2 + if j2 >= 0x60 { 0x20 } else { 0x1F }
    } else {
        j2 + 0x7E
    };
    [s1, s2]
}

fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Quoted-printable (RFC 2045): lines of at most 76 characters, soft breaks, CRLF.
fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3 / 2);
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut col = 0;
        for (k, &b) in line.iter().enumerate() {
            let last = k + 1 == line.len();
            let literal =
                ((b == b' ' || b == b'\t') && !last) || ((33..=126).contains(&b) && b != b'=');
            let width = if literal { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 body: lines of 76 characters, CRLF.
fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let flat = base64(bytes);
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 76 * 2 + 2);
    for line in flat.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The hand-made encoders against bytes produced by Python's codecs, and every sample
/// sentence against its charset, so the corpus never carries silently wrong bytes.
fn check_encoders() -> Result<(), String> {
    let cases = [
        (
            "Проблема с заказом",
            Charset::Koi8r,
            "8NLPwszFzcEg0yDawcvB2s/N",
        ),
        (
            "注文について",
            Charset::Iso2022jp,
            "GyRCQ21KOCRLJEQkJCRGGyhC",
        ),
        ("請求書の件", Charset::ShiftJis, "kL+LgY+RgsyMjw=="),
        (
            "Größe – „Test“ €",
            Charset::Win1252,
            "R3L232UgliCEVGVzdJMggA==",
        ),
    ];
    for (text, cs, want) in cases {
        let got = base64(&encode_text(text, cs));
        if got != want {
            return Err(format!(
                "{} encoder: {text:?} gave {got}, expected {want}",
                cs.name()
            ));
        }
    }
    for (lang, cs) in [
        (Lang::Ru, Charset::Koi8r),
        (Lang::Ja, Charset::Iso2022jp),
        (Lang::Ja, Charset::ShiftJis),
        (Lang::De, Charset::Win1252),
        (Lang::Fr, Charset::Latin1),
    ] {
        let d = lang_data(lang);
        let names = d.first.iter().chain(d.last).map(|n| n.0);
        for s in d
            .greet
            .iter()
            .chain(d.body)
            .chain(d.close)
            .chain(d.reply)
            .chain(d.subject)
            .copied()
            .chain(names)
        {
            if let Some(ch) = s.chars().find(|ch| !representable(*ch, cs)) {
                return Err(format!(
                    "{ch:?} in {s:?} is not representable in {}",
                    cs.name()
                ));
            }
        }
    }
    Ok(())
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
