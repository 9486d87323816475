//! HTTP API latency and outbox throughput (issue 5, item 8), on a database of a million
//! messages. Results and how to read them are in `docs/benchmarks.md`.
//!
//! ```text
//! cargo bench --bench api_load -- [--backend sqlite|postgres|both] [--messages N]
//!     [--tickets T] [--customers C] [--requests R] [--warmup W] [--connections 1,4]
//!     [--outbox N] [--outbox-concurrency 8,32] [--reuse] [--explain] [--count-sql]
//!     [--skip-api] [--skip-outbox] [--postgres-url URL]
//! ```
//!
//! How it works, per backend:
//! 1. The data set is written with direct SQL, not through the pipeline: `store::open` runs the
//!    migrations, `store::orgs` creates the organizations (Acme with 3 inboxes and 20 agents,
//!    Globex with a few of everything), then customers, tickets, messages and attachments
//!    are bulk-inserted with `INSERT ... SELECT` over a recursive CTE (SQLite) or
//!    `generate_series` (PostgreSQL), with deterministic pseudo-random attributes (a hash of
//!    the row number): statuses mostly closed and open ones among the newest, ~3 % spam,
//!    timestamps over a year, ids in time order across both organizations, message bodies of
//!    200 to 3,000 characters. The `ticket_list_counts` triggers of migration 0005 run as
//!    usual (tickets are inserted 5,000 per transaction: PostgreSQL cannot prune the counter
//!    rows' old versions within one) and the result is checked against a `GROUP BY` of the
//!    tickets; the ticket
//!    counters are set to the highest number. PostgreSQL is then `VACUUM ANALYZE`d (what
//!    autovacuum does on a live server); SQLite is not analysed (the gateway never runs
//!    ANALYZE). `--reuse` keeps the generated database (a file under `target/api_load-cache`,
//!    a `idk_api_load_cache_*` database on the server) and runs on a copy of it.
//! 2. API latency: the release `initdesk-gateway serve` runs as a child process on that
//!    database (its outbound relay is a closed port on 127.0.0.1 with retries an hour apart,
//!    so queued replies fail once and wait). K keep-alive connections (raw HTTP/1.1, one
//!    blocking thread each; each K of `--connections` in turn) send W warm-up requests,
//!    then R measured ones per kind: the
//!    ticket list (first page, and `?status=active`), an internal note and a visible reply
//!    on random tickets. Reported: requests/s, p50/p99/max latency, the daemon's CPU per
//!    request (and PostgreSQL's), its peak RSS.
//! 3. Outbox throughput: N visible replies are queued with `agent::reply` (500 per
//!    transaction), then `outbox::Sender` runs in this process against a private Postfix on
//!    127.0.0.1 whose transport map sends the customers' domains to `discard:`, timed until
//!    every one of the N rows is `sent`; once per `--outbox-concurrency`.
//! 4. `--explain`: query plans of the list and reply statements, an in-process breakdown of
//!    the two endpoints (each store call timed, SQL statements counted, no HTTP), four
//!    concurrent in-process writers with and without an async mutex around the write
//!    transaction, and on PostgreSQL prepared statements under `force_custom_plan` and
//!    `auto`; before step 2. `--count-sql` (implied by `--explain`) counts the SQL
//!    statements per sent outbox message.
//!
//! Without `--bench` (under `cargo test --all-targets`) it runs a smoke test: 2,000 messages,
//! SQLite only, 100 requests per kind, 100 outbox messages. The outbox part needs root (for
//! Postfix); without root it is skipped, and says so.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use initdesk_gateway::agent::{self, NewReply};
use initdesk_gateway::api::messages::render_messages;
use initdesk_gateway::api::pagination::{ListQuery, PageMeta};
use initdesk_gateway::api::tickets::{TicketPage, render_tickets};
use initdesk_gateway::outbox::{Sender, SenderSettings};
use initdesk_gateway::pipeline::ReplyTokens;
use initdesk_gateway::store::blobs::FsBlobStore;
use initdesk_gateway::store::views::{self, TicketFilter};
use initdesk_gateway::store::{self, orgs, outbox};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tokio_util::sync::CancellationToken;

/// Bump when the generated data changes: cached databases of another version are rebuilt.
const GEN_VERSION: u32 = 1;
/// Domains of the customers; the private Postfix discards mail to each of them.
const CUSTOMER_DOMAINS: u64 = 40;
/// Replies queued per transaction before the outbox run.
const QUEUE_BATCH: usize = 500;
/// Tickets inserted per transaction while generating.
const TICKET_CHUNK: u64 = 5000;

const USAGE: &str = "usage: cargo bench --bench api_load -- [options]
  --backend sqlite|postgres|both   databases (default both)
  --messages N                     messages of the big organization (default 1000000)
  --tickets T                      its tickets (default 200000)
  --customers C                    its customers (default 50000)
  --requests R                     measured requests per kind (default 2000)
  --warmup W                       warm-up requests per kind (default 200)
  --connections A,B                each kind is run with A, then B concurrent keep-alive
                                   connections (default 1,4)
  --outbox N                       replies queued per outbox run (default 5000; 0: none)
  --outbox-concurrency A,B         SenderSettings.concurrency of each run (default 8,32)
  --reuse                          keep the generated database and run on a copy of it
  --explain                        query plans and an in-process breakdown of each endpoint
  --count-sql                      also count the SQL statements per sent outbox message
  --skip-api | --skip-outbox       leave out one part
  --postgres-url URL               server (default $INITDESK_TEST_POSTGRES_URL or
                                   postgres://postgres@127.0.0.1:5432/test)";

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    backends: Vec<Backend>,
    messages: u64,
    tickets: u64,
    customers: u64,
    requests: usize,
    warmup: usize,
    connections: Vec<usize>,
    outbox: usize,
    outbox_concurrency: Vec<usize>,
    reuse: bool,
    explain: bool,
    count_sql: bool,
    skip_api: bool,
    skip_outbox: bool,
    postgres_url: String,
    smoke: bool,
}

impl Options {
    fn parse() -> Result<Options> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = !args.iter().any(|a| a == "--bench");
        let mut o = Options {
            backends: vec![Backend::Sqlite, Backend::Postgres],
            messages: 1_000_000,
            tickets: 200_000,
            customers: 50_000,
            requests: 2000,
            warmup: 200,
            connections: vec![1, 4],
            outbox: 5000,
            outbox_concurrency: vec![8, 32],
            reuse: false,
            explain: false,
            count_sql: false,
            skip_api: false,
            skip_outbox: false,
            postgres_url: std::env::var("INITDESK_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            smoke,
        };
        if smoke {
            // `cargo test --all-targets`: small and quick, SQLite only.
            o.backends = vec![Backend::Sqlite];
            o.messages = 2000;
            o.tickets = 400;
            o.customers = 100;
            o.requests = 100;
            o.warmup = 20;
            o.outbox = 100;
            return Ok(o);
        }
        let mut it = args.iter().filter(|a| *a != "--bench");
        while let Some(a) = it.next() {
            let mut value = || -> Result<String> {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value\n{USAGE}"))
            };
            let number = |v: String| -> Result<u64> {
                v.replace(['_', ','], "")
                    .parse()
                    .with_context(|| format!("{a} {v}: not a number"))
            };
            match a.as_str() {
                "--backend" => {
                    o.backends = match value()?.as_str() {
                        "sqlite" => vec![Backend::Sqlite],
                        "postgres" | "postgresql" | "pg" => vec![Backend::Postgres],
                        "both" => vec![Backend::Sqlite, Backend::Postgres],
                        v => bail!("--backend {v}: expected sqlite, postgres or both"),
                    }
                }
                "--messages" => o.messages = number(value()?)?,
                "--tickets" => o.tickets = number(value()?)?,
                "--customers" => o.customers = number(value()?)?,
                "--requests" => o.requests = number(value()?)? as usize,
                "--warmup" => o.warmup = number(value()?)? as usize,
                "--connections" => {
                    o.connections = value()?
                        .split(',')
                        .map(|v| v.trim().parse::<usize>().map(|n| n.max(1)))
                        .collect::<Result<_, _>>()
                        .context("--connections: numbers separated by commas")?
                }
                "--outbox" => o.outbox = number(value()?)? as usize,
                "--outbox-concurrency" => {
                    o.outbox_concurrency = value()?
                        .split(',')
                        .map(|v| v.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .context("--outbox-concurrency: numbers separated by commas")?
                }
                "--reuse" => o.reuse = true,
                "--explain" => o.explain = true,
                "--count-sql" => o.count_sql = true,
                "--skip-api" => o.skip_api = true,
                "--skip-outbox" => o.skip_outbox = true,
                "--postgres-url" => o.postgres_url = value()?,
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        ensure!(
            o.tickets >= 10 && o.customers >= 1 && o.messages >= o.tickets,
            "need at least 10 tickets, 1 customer and a message per ticket"
        );
        Ok(o)
    }
}

/// How much data each organization gets.
#[derive(Debug, Clone, Copy)]
struct Shape {
    customers: u64,
    tickets: u64,
    messages: u64,
    agents: u64,
}

fn shapes(o: &Options) -> (Shape, Shape) {
    let big = Shape {
        customers: o.customers,
        tickets: o.tickets,
        messages: o.messages,
        agents: 20,
    };
    // The second organization: a few of everything, in the same tables.
    let small = Shape {
        customers: (o.customers / 1000).max(10),
        tickets: (o.tickets / 600).max(30),
        messages: (o.messages / 600).max(150),
        agents: 3,
    };
    (big, small)
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

fn main() {
    let opts = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&opts) {
        eprintln!("api_load failed: {e:#}");
        std::process::exit(1);
    }
}

fn run(o: &Options) -> Result<()> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (big, small) = shapes(o);
    println!(
        "api_load{}: {} messages, {} tickets, {} customers (+ a second organization with {} / {} / {}); \
         {} requests per kind after {} warm-up, {:?} connections; outbox {} replies at concurrency {:?}",
        if o.smoke { " (smoke run)" } else { "" },
        big.messages,
        big.tickets,
        big.customers,
        small.messages,
        small.tickets,
        small.customers,
        o.requests,
        o.warmup,
        o.connections,
        o.outbox,
        o.outbox_concurrency
    );
    println!(
        "machine: {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg()
    );
    let root = is_root();
    let outbox_wanted = !o.skip_outbox && o.outbox > 0 && !o.outbox_concurrency.is_empty();
    let postfix = if outbox_wanted && root {
        Some(Postfix::start()?)
    } else {
        if outbox_wanted {
            println!(
                "\n*** OUTBOX PART SKIPPED: not root, so no private Postfix can be started \
                 (it needs root). Only the API part ran. ***\n"
            );
        }
        None
    };

    let mut api_rows = Vec::new();
    let mut outbox_rows = Vec::new();
    for &backend in &o.backends {
        println!("\n=== {} ===", backend.name());
        let world = rt.block_on(prepare(backend, o, big, small))?;
        let result = (|| -> Result<()> {
            if o.explain {
                rt.block_on(explain(&world, o))?;
            }
            if !o.skip_api {
                api_rows.extend(api_phase(&world, o)?);
            }
            if let Some(pf) = &postfix {
                rt.block_on(park_outbox(&world))?;
                for &c in &o.outbox_concurrency {
                    outbox_rows.push(rt.block_on(outbox_phase(&world, pf, o, c))?);
                }
            }
            Ok(())
        })();
        rt.block_on(world.cleanup());
        result?;
    }

    println!("\n## Results\n");
    if o.smoke {
        println!(
            "(smoke run: a tiny data set and a debug build; the figures say nothing about the targets)\n"
        );
    }
    if !api_rows.is_empty() {
        println!(
            "| backend | request | connections | requests | req/s | p50 ms | p99 ms | max ms | daemon CPU ms/req | PostgreSQL CPU ms/req | response bytes | daemon peak RSS MB |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &api_rows {
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {:.0} |",
                r.backend.name(),
                r.kind.label(),
                r.connections,
                r.requests,
                r.requests as f64 / r.seconds,
                r.p50,
                r.p99,
                r.max,
                r.daemon_cpu_ms,
                if r.backend == Backend::Postgres {
                    format!("{:.2}", r.pg_cpu_ms)
                } else {
                    "–".into()
                },
                r.bytes,
                r.rss_mb
            );
        }
        println!();
        for r in &api_rows {
            let target = r.kind.target_ms();
            println!(
                "target {} {} ({} conn.): p99 under {target} ms: {} (p99 {:.1} ms)",
                r.backend.name(),
                r.kind.label(),
                r.connections,
                if r.p99 < target { "met" } else { "NOT MET" },
                r.p99
            );
        }
    }
    if !outbox_rows.is_empty() {
        println!(
            "\n| backend | concurrency | replies | queued in s (replies/s) | drained in s | msg/s | Postfix done at s | retried | sender-process CPU s | PostgreSQL CPU s |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &outbox_rows {
            println!(
                "| {} | {} | {} | {:.2} ({:.0}) | {:.2} | {:.0} | {:.2} | {} | {:.1} | {} |",
                r.backend.name(),
                r.concurrency,
                r.n,
                r.queue_secs,
                r.n as f64 / r.queue_secs,
                r.seconds,
                r.n as f64 / r.seconds,
                r.relay_done,
                r.retried,
                r.cpu_s,
                if r.backend == Backend::Postgres {
                    format!("{:.1}", r.pg_cpu_s)
                } else {
                    "–".into()
                }
            );
        }
        println!();
        for r in &outbox_rows {
            let rate = r.n as f64 / r.seconds;
            println!(
                "target {} outbox concurrency {}: at least 500 msg/s: {} ({rate:.0} msg/s)",
                r.backend.name(),
                r.concurrency,
                if rate >= 500.0 { "met" } else { "NOT MET" }
            );
        }
    } else if outbox_wanted {
        println!("\noutbox part: SKIPPED (not root; Postfix needs root)");
    }
    drop(postfix);
    println!(
        "\napi_load done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The data set
// ---------------------------------------------------------------------------------------

/// A database ready for a run, and what the run needs to know about it.
struct World {
    backend: Backend,
    url: String,
    acme: i64,
    token: String,
    /// Ids of Acme's tickets.
    tickets: Vec<i64>,
    _dir: tempfile::TempDir,
    /// (server URL, database) to drop at the end.
    pg_drop: Option<(String, String)>,
}

impl World {
    async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg_drop {
            let _ = pg_admin(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await;
        }
    }
}

async fn pg_admin(admin_url: &str, sql: &str) -> Result<()> {
    let mut c = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut c)
        .await
        .with_context(|| sql.to_string())?;
    c.close().await?;
    Ok(())
}

async fn pg_database_exists(admin_url: &str, name: &str) -> Result<bool> {
    let mut c = sqlx::PgConnection::connect(admin_url).await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut c)
        .await?;
    c.close().await?;
    Ok(n > 0)
}

fn cache_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/api_load-cache")
}

fn migration_count(b: Backend) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(match b {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    });
    fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Generates (or copies from the cache) the database of one backend and opens a token.
async fn prepare(b: Backend, o: &Options, big: Shape, small: Shape) -> Result<World> {
    let dir = tempfile::Builder::new().prefix("api_load").tempdir()?;
    let key = format!(
        "v{GEN_VERSION}-mig{}-m{}-t{}-c{}",
        migration_count(b),
        big.messages,
        big.tickets,
        big.customers
    );
    let (url, pg_drop) = match b {
        Backend::Sqlite => {
            let db = dir.path().join("gateway.db");
            let url = format!("sqlite://{}", db.display());
            if o.reuse {
                fs::create_dir_all(cache_root())?;
                let cached = cache_root().join(format!("sqlite-{key}.db"));
                let marker = cache_root().join(format!("sqlite-{key}.ok"));
                if cached.exists() && marker.exists() {
                    println!(
                        "data set: cached {} ({})",
                        cached.display(),
                        fs::read_to_string(&marker)?.trim()
                    );
                } else {
                    let _ = fs::remove_file(&marker);
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = fs::remove_file(format!("{}{suffix}", cached.display()));
                    }
                    let report =
                        generate(b, &format!("sqlite://{}", cached.display()), big, small).await?;
                    fs::write(&marker, &report)?;
                }
                let t = Instant::now();
                fs::copy(&cached, &db)?;
                println!(
                    "copied the cached database in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            } else {
                generate(b, &url, big, small).await?;
            }
            (url, None)
        }
        Backend::Postgres => {
            let admin = o.postgres_url.clone();
            let run_name = format!("idk_api_load_{}", uuid::Uuid::new_v4().simple());
            let url = store::scratch::replace_db_name(&admin, &run_name);
            if o.reuse {
                fs::create_dir_all(cache_root())?;
                let cache_name = format!("idk_api_load_cache_{}", key.replace('-', "_"));
                let marker = cache_root().join(format!("postgres-{key}.ok"));
                if marker.exists() && pg_database_exists(&admin, &cache_name).await? {
                    println!(
                        "data set: cached database {cache_name} ({})",
                        fs::read_to_string(&marker)?.trim()
                    );
                } else {
                    let _ = fs::remove_file(&marker);
                    pg_admin(
                        &admin,
                        &format!("DROP DATABASE IF EXISTS {cache_name} WITH (FORCE)"),
                    )
                    .await?;
                    pg_admin(&admin, &format!("CREATE DATABASE {cache_name}")).await?;
                    let report = generate(
                        b,
                        &store::scratch::replace_db_name(&admin, &cache_name),
                        big,
                        small,
                    )
                    .await?;
                    fs::write(&marker, &report)?;
                }
                let t = Instant::now();
                pg_admin(
                    &admin,
                    &format!("CREATE DATABASE {run_name} TEMPLATE {cache_name}"),
                )
                .await?;
                println!(
                    "copied the cached database in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            } else {
                pg_admin(&admin, &format!("CREATE DATABASE {run_name}")).await?;
                if let Err(e) = generate(b, &url, big, small).await {
                    let _ = pg_admin(
                        &admin,
                        &format!("DROP DATABASE IF EXISTS {run_name} WITH (FORCE)"),
                    )
                    .await;
                    return Err(e);
                }
            }
            (url, Some((admin, run_name)))
        }
    };

    let store = store::open(&url, 1).await?;
    let mut tx = store.begin().await?;
    let acme = orgs::org_for_domain(&mut tx, "acme.test")
        .await?
        .context("no Acme in the data set")?
        .id;
    let token = orgs::create_token(&mut tx, acme).await?;
    tx.commit().await?;
    store.close().await;
    let mut raw = Raw::connect(b, &url).await?;
    let tickets = raw
        .i64s(&format!(
            "SELECT id FROM tickets WHERE organization_id = {acme} ORDER BY id"
        ))
        .await?;
    raw.close().await;
    Ok(World {
        backend: b,
        url,
        acme,
        token,
        tickets,
        _dir: dir,
        pg_drop,
    })
}

/// One connection for bulk SQL, either backend.
enum Raw {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

impl Raw {
    async fn connect(b: Backend, url: &str) -> Result<Raw> {
        Ok(match b {
            Backend::Sqlite => Raw::Sqlite(
                SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(30))
                    .connect()
                    .await?,
            ),
            Backend::Postgres => Raw::Pg(sqlx::PgConnection::connect(url).await?),
        })
    }

    /// A SQLite connection for bulk loading: no journal, no syncs, a big page cache.
    async fn sqlite_bulk(url: &str) -> Result<Raw> {
        Ok(Raw::Sqlite(
            SqliteConnectOptions::from_str(url)?
                .journal_mode(SqliteJournalMode::Off)
                .synchronous(SqliteSynchronous::Off)
                .foreign_keys(true)
                .pragma("cache_size", "-524288")
                .connect()
                .await?,
        ))
    }

    async fn exec(&mut self, sql: &str) -> Result<u64> {
        let n = match self {
            Raw::Sqlite(c) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Raw::Pg(c) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        };
        n.with_context(|| format!("SQL failed: {}", short(sql)))
    }

    async fn i64s(&mut self, sql: &str) -> Result<Vec<i64>> {
        self.column(sql, 0).await
    }

    /// Column `col` of every row.
    async fn column<T>(&mut self, sql: &str, col: usize) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>,
    {
        let v: Result<Vec<T>, sqlx::Error> = match self {
            Raw::Sqlite(c) => sqlx::query(AssertSqlSafe(sql.to_string()))
                .fetch_all(c)
                .await
                .and_then(|rows| rows.iter().map(|r| r.try_get::<T, _>(col)).collect()),
            Raw::Pg(c) => sqlx::query(AssertSqlSafe(sql.to_string()))
                .fetch_all(c)
                .await
                .and_then(|rows| rows.iter().map(|r| r.try_get::<T, _>(col)).collect()),
        };
        v.with_context(|| format!("SQL failed: {}", short(sql)))
    }

    async fn i64(&mut self, sql: &str) -> Result<i64> {
        self.i64s(sql)
            .await?
            .first()
            .copied()
            .with_context(|| format!("no row: {}", short(sql)))
    }

    /// Column `col` of every row, as text.
    async fn strings(&mut self, sql: &str, col: usize) -> Result<Vec<String>> {
        self.column(sql, col).await
    }

    async fn close(self) {
        let _ = match self {
            Raw::Sqlite(c) => c.close().await,
            Raw::Pg(c) => c.close().await,
        };
    }
}

fn short(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.len() > 300 {
        format!("{}...", &one[..one.floor_char_boundary(300)])
    } else {
        one
    }
}

/// A pseudo-random number in 0..1000003 from an SQL integer expression and a salt: the
/// same on both backends, so a ticket's attributes can be recomputed from its number.
fn h(x: &str, salt: u32) -> String {
    let m = format!("((({x}) * 48271 + {salt}) % 1000003)");
    format!("(({m} * {m}) % 1000003)")
}

/// `1..=n` as a CTE named `name(i)`.
fn series(b: Backend, name: &str, n: u64) -> String {
    match b {
        Backend::Sqlite => format!(
            "WITH RECURSIVE {name}(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM {name} WHERE i < {n})"
        ),
        Backend::Postgres => {
            format!("WITH {name}(i) AS (SELECT generate_series(1::bigint, {n}::bigint))")
        }
    }
}

/// An epoch-seconds SQL expression as the stored timestamp type.
fn ts(b: Backend, e: &str) -> String {
    match b {
        // What sqlx writes for DateTime<Utc>, without the fraction.
        Backend::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%S+00:00', {e}, 'unixepoch')"),
        Backend::Postgres => format!("to_timestamp({e})"),
    }
}

/// A message body: a slice of 200 to 2,999 characters of [`lorem`], picked by `seed`.
fn body_sql(seed: &str) -> String {
    format!(
        "substr('{}', CAST(1 + {} % 1000 AS INTEGER), CAST(200 + {} % 2800 AS INTEGER))",
        lorem(),
        h(seed, 14),
        h(seed, 15)
    )
}

/// About 4 KB of support-mail prose (no quotes, so it can sit in an SQL literal).
fn lorem() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let sentences = [
            "Hello, the delivery did not arrive and the tracking page shows no update since Monday.",
            "Could you please check what happened and tell me when I can expect it?",
            "I was charged twice for the same order, see the attached statement.",
            "The invoice lists the wrong company name and our VAT number is missing.",
            "Thank you for the quick answer, that solved the problem for now.",
            "We cannot log in since the last update; the page says the session expired.",
            "Please cancel the subscription at the end of the current billing period.",
            "The replacement part fits, but the manual still refers to the old model.",
            "Our team of twelve needs access to the shared workspace before Friday.",
            "I followed the steps from your previous mail and the error is still there.",
        ];
        let mut s = String::new();
        let mut i = 0usize;
        while s.len() < 4300 {
            s.push_str(sentences[(i * 7 + i / 10) % sentences.len()]);
            s.push(if i % 5 == 4 { '\n' } else { ' ' });
            i += 1;
        }
        s
    })
}

/// Writes the whole data set into the (empty or freshly migrated) database at `url`;
/// returns a one-line report for the cache marker.
async fn generate(b: Backend, url: &str, big: Shape, small: Shape) -> Result<String> {
    let total = Instant::now();
    println!(
        "generating the data set into {}",
        initdesk_gateway::cli::redact(url)
    );
    // Schema by the migrations, organizations, inboxes and agents by the store's own code.
    let store = store::open(url, 1).await?;
    let mut tx = store.begin().await?;
    let mut specs = Vec::new();
    for (name, domain, inboxes, shape) in [
        ("Acme", "acme.test", ["support", "sales", "billing"], big),
        (
            "Globex",
            "globex.test",
            ["help", "orders", "returns"],
            small,
        ),
    ] {
        let org =
            orgs::create_org(&mut tx, &orgs::NewOrg::named(name, &[domain.to_string()])).await?;
        let mut ib = Vec::new();
        for prefix in inboxes {
            ib.push(
                orgs::create_inbox(&mut tx, org.id, prefix, &format!("{name} {prefix}"), false)
                    .await?
                    .id,
            );
        }
        let mut users = Vec::new();
        for n in 1..=shape.agents {
            users.push(
                orgs::create_user(
                    &mut tx,
                    org.id,
                    &format!("agent{n}@{domain}"),
                    &format!("Agent {n}"),
                )
                .await?
                .id,
            );
        }
        ensure!(
            users.windows(2).all(|w| w[1] == w[0] + 1),
            "agent ids are not consecutive: {users:?}"
        );
        specs.push((org.id, domain, ib, users[0] - 1, shape));
    }
    tx.commit().await?;
    store.close().await;

    let mut raw = match b {
        Backend::Sqlite => Raw::sqlite_bulk(url).await?,
        Backend::Postgres => {
            let mut r = Raw::connect(b, url).await?;
            r.exec("SET synchronous_commit = off; SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'")
                .await?;
            r
        }
    };
    let step = |name: &str, t: Instant, n: u64| {
        println!("  {name}: {n} rows in {:.1} s", t.elapsed().as_secs_f64());
    };
    raw.exec("BEGIN").await?;

    // Per-organization parameters, read by every statement below.
    raw.exec(
        "CREATE TEMP TABLE gen_org (org BIGINT, nt BIGINT, cbase BIGINT, nc BIGINT, kmax BIGINT,
             ib1 BIGINT, ib2 BIGINT, ib3 BIGINT, ubase BIGINT, nu BIGINT, domain TEXT, cprefix TEXT)",
    )
    .await?;
    let mut cbase = 0;
    let mut values = Vec::new();
    for (i, (org, domain, ib, ubase, s)) in specs.iter().enumerate() {
        // Messages per ticket: 1..=kmax, kmax + 1 = twice the mean.
        let ratio = (s.messages as f64 / s.tickets as f64).round().max(1.0) as u64;
        let kmax = 2 * ratio - 1;
        values.push(format!(
            "({org}, {}, {cbase}, {}, {kmax}, {}, {}, {}, {ubase}, {}, '{domain}', '{}')",
            s.tickets,
            s.customers,
            ib[0],
            ib[1],
            ib[2],
            s.agents,
            if i == 0 { "customer" } else { "client" }
        ));
        cbase += s.customers;
    }
    raw.exec(&format!("INSERT INTO gen_org VALUES {}", values.join(", ")))
        .await?;
    let now = chrono::Utc::now().timestamp();
    let base = now - 365 * 86_400;
    let span = 350 * 86_400;

    // Customers: ids 1.. in organization order.
    let t = Instant::now();
    let max_c = big.customers.max(small.customers);
    let n = raw
        .exec(&format!(
            "{series}
             INSERT INTO customers (id, organization_id, name, email, email_norm, is_spam, created_at, updated_at)
             SELECT o.cbase + s.i, o.org, 'Customer ' || s.i,
                    o.cprefix || s.i || '@mail' || (s.i % {CUSTOMER_DOMAINS}) || '.customers.test',
                    o.cprefix || s.i || '@mail' || (s.i % {CUSTOMER_DOMAINS}) || '.customers.test',
                    ({hc} % 100 < 1), {ts}, {ts}
             FROM s JOIN gen_org o ON s.i <= o.nc ORDER BY o.cbase + s.i",
            series = series(b, "s", max_c),
            hc = h("s.i", 9),
            ts = ts(b, &format!("{base} + s.i * {span} / o.nc")),
        ))
        .await?;
    step("customers", t, n);

    // Tickets: numbered per organization, ids in creation order across both.
    let t = Instant::now();
    let max_t = big.tickets.max(small.tickets);
    raw.exec(match b {
        Backend::Sqlite => {
            "CREATE TEMP TABLE gen_t (id INTEGER PRIMARY KEY, org BIGINT, pid BIGINT, e BIGINT)"
        }
        Backend::Postgres => {
            "CREATE TEMP TABLE gen_t (id BIGINT PRIMARY KEY, org BIGINT, pid BIGINT, e BIGINT)"
        }
    })
    .await?;
    raw.exec(&format!(
        "INSERT INTO gen_t (id, org, pid, e)
         {series}
         SELECT ROW_NUMBER() OVER (ORDER BY {base} + s.i * {span} / o.nt, o.org, s.i), o.org, s.i, {base} + s.i * {span} / o.nt
         FROM s JOIN gen_org o ON s.i <= o.nt",
        series = series(b, "s", max_t),
    ))
    .await?;
    let r3 = format!("({} % 100)", h("g.pid", 3));
    // Mostly closed; open ones mostly among the newest tenth.
    let status = format!(
        "CASE WHEN g.pid * 10 > o.nt * 9
              THEN (CASE WHEN {r3} < 40 THEN 'active' WHEN {r3} < 60 THEN 'created' ELSE 'closed' END)
              ELSE (CASE WHEN {r3} < 3 THEN 'active' WHEN {r3} < 4 THEN 'created' WHEN {r3} < 5 THEN 'resolved' ELSE 'closed' END) END"
    );
    // In chunks of TICKET_CHUNK, each its own transaction: the counter trigger updates the
    // same few ticket_list_counts rows for every ticket, and within one transaction
    // PostgreSQL keeps every version of them (200,000 tickets in one transaction: 540 s,
    // quadratic; in chunks: seconds).
    let insert_tickets = format!(
            "INSERT INTO tickets (id, organization_id, public_id, inbox_id, customer_id, assignee_id, subject, status,
                 waiting_on, classification, is_spam, origin, description, description_html, external_recipient_emails,
                 tags, language, has_attachments, customer_visible_reply_count, created_by_role, created_by_user_id,
                 summary, sentiment_analysis_class, closed_at, created_at, updated_at, reply_domain)
             SELECT x.id, x.org, x.pid,
                 CASE WHEN x.r6 < 7 THEN o.ib1 WHEN x.r6 < 9 THEN o.ib2 ELSE o.ib3 END,
                 c.id,
                 CASE WHEN x.st = 'created' OR x.r7 >= 8 THEN CAST(NULL AS BIGINT) ELSE o.ubase + 1 + x.r8 % o.nu END,
                 'Order ' || (100000 + x.pid * 7919 % 900000) || ': ' ||
                     CASE x.r9 % 4 WHEN 0 THEN 'the delivery did not arrive' WHEN 1 THEN 'question about the invoice'
                                   WHEN 2 THEN 'cannot log in' ELSE 'refund request' END,
                 x.st,
                 CASE WHEN x.st = 'active' THEN (CASE WHEN x.r7 % 2 = 0 THEN 'customer' ELSE 'associate' END)
                      WHEN x.st = 'created' THEN 'associate' ELSE '' END,
                 CASE WHEN x.st IN ('closed', 'resolved') THEN (CASE WHEN x.r9 % 3 = 0 THEN 'customer_inactivity' ELSE 'resolved' END)
                      ELSE '' END,
                 (c.is_spam OR x.r5 < 2),
                 'email',
                 {description},
                 '',
                 CASE WHEN x.r11 < 5
                      THEN '[\"' || c.email || '\", \"cc' || x.pid || '@mail' || (x.pid % {CUSTOMER_DOMAINS}) || '.customers.test\"]'
                      ELSE '[\"' || c.email || '\"]' END,
                 CASE WHEN x.r9 % 10 = 0 THEN '[\"billing\"]' ELSE '[]' END,
                 'en',
                 (x.r10 < 5),
                 0, 'customer', CAST(NULL AS BIGINT), '', 'pending',
                 CASE WHEN x.st IN ('closed', 'resolved') THEN {closed_at} END,
                 {created_at}, {updated_at}, o.domain
             FROM (SELECT g.id, g.org, g.pid, g.e,
                          1 + {hk} % o.kmax AS k, 600 + {hgap} % 129600 AS gap, {status} AS st,
                          {h5} % 100 AS r5, {h6} % 10 AS r6, {h7} % 10 AS r7, {h8} AS r8, {h9} AS r9,
                          {h10} % 100 AS r10, {h11} % 100 AS r11, o.cbase + 1 + {h4} % o.nc AS cid
                   FROM gen_t g JOIN gen_org o ON o.org = g.org WHERE g.id BETWEEN @LO@ AND @HI@) x
             JOIN gen_org o ON o.org = x.org
             JOIN customers c ON c.organization_id = x.org AND c.id = x.cid
             ORDER BY x.id",
            description = body_sql("x.pid * 16 + 1"),
            closed_at = ts(b, "x.e + (x.k - 1) * x.gap + 3600"),
            created_at = ts(b, "x.e"),
            updated_at = ts(b, "x.e + (x.k - 1) * x.gap"),
            hk = h("g.pid", 1),
            hgap = h("g.pid", 2),
            h4 = h("g.pid", 4),
            h5 = h("g.pid", 5),
            h6 = h("g.pid", 6),
            h7 = h("g.pid", 7),
            h8 = h("g.pid", 8),
            h9 = h("g.pid", 9),
            h10 = h("g.pid", 10),
            h11 = h("g.pid", 11),
    );
    raw.exec("COMMIT").await?;
    let (mut n, mut lo) = (0, 1);
    let last = big.tickets + small.tickets;
    while lo <= last {
        let hi = lo + TICKET_CHUNK - 1;
        raw.exec("BEGIN").await?;
        n += raw
            .exec(
                &insert_tickets
                    .replace("@LO@", &lo.to_string())
                    .replace("@HI@", &hi.to_string()),
            )
            .await?;
        raw.exec("COMMIT").await?;
        lo = hi + 1;
    }
    raw.exec("BEGIN").await?;
    step("tickets (ticket_list_counts by the 0005 triggers)", t, n);

    // Messages: 1..=kmax per ticket (first the customer's request, then agent replies, notes
    // and customer answers alternating), hours to a day and a half apart, ids in time order.
    let t = Instant::now();
    let kmax_all =
        2 * (big.messages.div_ceil(big.tickets)).max(small.messages.div_ceil(small.tickets)) + 1;
    raw.exec(match b {
        Backend::Sqlite => "CREATE TEMP TABLE gen_m (id INTEGER PRIMARY KEY, tid BIGINT, org BIGINT, pid BIGINT, k BIGINT, me BIGINT)",
        Backend::Postgres => "CREATE TEMP TABLE gen_m (id BIGINT PRIMARY KEY, tid BIGINT, org BIGINT, pid BIGINT, k BIGINT, me BIGINT)",
    })
    .await?;
    raw.exec(&format!(
        "INSERT INTO gen_m (id, tid, org, pid, k, me)
         {series}
         SELECT ROW_NUMBER() OVER (ORDER BY y.me, y.tid, y.k), y.tid, y.org, y.pid, y.k, y.me
         FROM (SELECT g.id AS tid, g.org, g.pid, kk.i AS k, g.e + (kk.i - 1) * (600 + {hgap} % 129600) AS me
               FROM gen_t g JOIN gen_org o ON o.org = g.org JOIN kk ON kk.i <= 1 + {hk} % o.kmax) y",
        series = series(b, "kk", kmax_all),
        hgap = h("g.pid", 2),
        hk = h("g.pid", 1),
    ))
    .await?;
    let seed = "(m.pid * 16 + m.k)";
    let note = format!("(m.k % 2 = 0 AND {} % 5 = 0)", h(seed, 12));
    let reply = format!("(m.k % 2 = 0 AND {} % 5 <> 0)", h(seed, 12));
    let agent = format!("(1 + {} % o.nu)", h(seed, 13));
    let body = body_sql(seed);
    let n = raw
        .exec(&format!(
            "INSERT INTO messages (id, organization_id, ticket_id, role, direction, author_user_id, sender_customer_id,
                 sender_email, sender_name, content, content_html, is_visible_to_customer, external_recipient_emails,
                 subject, message_id_header, in_reply_to, references_header, reply_to, threaded_by, thread_note,
                 auth_results, is_auto_reply, spam_reason, processing_notes, language, raw_sha256, dedupe_key,
                 delivery_state, created_at, updated_at)
             SELECT m.id, m.org, m.tid,
                 CASE WHEN m.k % 2 = 1 THEN 'customer' ELSE 'associate' END,
                 CASE WHEN m.k % 2 = 1 THEN 'inbound' WHEN {note} THEN 'internal' ELSE 'outbound' END,
                 CASE WHEN m.k % 2 = 1 THEN CAST(NULL AS BIGINT) ELSE o.ubase + {agent} END,
                 CASE WHEN m.k % 2 = 1 THEN c.id ELSE CAST(NULL AS BIGINT) END,
                 CASE WHEN m.k % 2 = 1 THEN c.email ELSE 'agent' || {agent} || '@' || o.domain END,
                 CASE WHEN m.k % 2 = 1 THEN c.name ELSE 'Agent ' || {agent} END,
                 {body},
                 CASE WHEN m.k % 2 = 1 AND {h16} % 5 = 0 THEN '<p>' || {body} || '</p>' ELSE '' END,
                 (m.k % 2 = 1 OR {h12} % 5 <> 0),
                 CASE WHEN {reply} THEN t.external_recipient_emails ELSE '[]' END,
                 CASE WHEN m.k = 1 THEN t.subject WHEN m.k % 2 = 1 THEN 'Re: ' || t.subject ELSE '' END,
                 CASE WHEN m.k % 2 = 1 THEN 'm' || m.id || '.' || m.org || '@mail' || (c.id % {CUSTOMER_DOMAINS}) || '.customers.test'
                      WHEN {note} THEN CAST(NULL AS TEXT) ELSE 'o' || m.id || '@' || o.domain END,
                 '', '', '', '', '', '', FALSE, '', '',
                 CASE WHEN m.k % 2 = 1 THEN 'en' ELSE '' END,
                 CAST(NULL AS TEXT),
                 CASE WHEN m.k % 2 = 1 THEN 'd' || m.id ELSE CAST(NULL AS TEXT) END,
                 CASE WHEN {reply} THEN 'sent' ELSE CAST(NULL AS TEXT) END,
                 {me}, {me}
             FROM gen_m m
             JOIN gen_org o ON o.org = m.org
             JOIN tickets t ON t.organization_id = m.org AND t.id = m.tid
             JOIN customers c ON c.organization_id = m.org AND c.id = t.customer_id
             {order}",
            h12 = h(seed, 12),
            h16 = h(seed, 16),
            me = ts(b, "m.me"),
            // SQLite walks gen_m by rowid (no sort); PostgreSQL's hash joins keep the probe
            // order, and a sort of a million wide rows would only cost time.
            order = if b == Backend::Sqlite { "ORDER BY m.id" } else { "" },
        ))
        .await?;
    step("messages", t, n);

    let t = Instant::now();
    let n = raw
        .exec(&format!(
            "UPDATE tickets SET customer_visible_reply_count = v.n
             FROM (SELECT m.org, m.tid, COUNT(*) AS n FROM gen_m m WHERE {reply} GROUP BY m.org, m.tid) v
             WHERE tickets.organization_id = v.org AND tickets.id = v.tid"
        ))
        .await?;
    step("visible reply counts", t, n);

    // One PDF on the first message of each ticket that has attachments.
    let t = Instant::now();
    let pad = match b {
        Backend::Sqlite => "substr('000000000000' || t.id, -12, 12)",
        Backend::Postgres => "lpad(t.id::text, 12, '0')",
    };
    let n = raw
        .exec(&format!(
            "INSERT INTO attachments (id, organization_id, ticket_id, message_id, name, content_type, size, sha256,
                 content_id, is_inline, created_at)
             SELECT '0a0b0c0d-0000-4000-8000-' || {pad}, t.organization_id, t.id,
                    (SELECT MIN(m.id) FROM messages m WHERE m.organization_id = t.organization_id AND m.ticket_id = t.id),
                    'statement-' || t.public_id || '.pdf', 'application/pdf', 20000 + t.id % 400000,
                    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', '', FALSE, t.created_at
             FROM tickets t WHERE t.has_attachments"
        ))
        .await?;
    step("attachments", t, n);

    raw.exec(
        "UPDATE ticket_counters SET last_public_id =
             (SELECT COALESCE(MAX(public_id), 0) FROM tickets WHERE tickets.organization_id = ticket_counters.organization_id)",
    )
    .await?;
    if b == Backend::Postgres {
        for table in ["customers", "tickets", "messages"] {
            raw.exec(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            ))
            .await?;
        }
    }
    for table in ["gen_org", "gen_t", "gen_m"] {
        raw.exec(&format!("DROP TABLE {table}")).await?;
    }
    let t = Instant::now();
    raw.exec("COMMIT").await?;
    step("commit", t, 0);

    // The trigger-kept counts must equal a GROUP BY of the tickets.
    let key =
        "organization_id || '/' || inbox_id || '/' || status || '/' || CAST(is_spam AS INTEGER)";
    let mut kept = raw
        .strings(
            &format!("SELECT {key} || '=' || n FROM ticket_list_counts WHERE n <> 0"),
            0,
        )
        .await?;
    let mut counted = raw
        .strings(
            &format!(
                "SELECT {key} || '=' || COUNT(*) FROM tickets GROUP BY organization_id, inbox_id, status, is_spam"
            ),
            0,
        )
        .await?;
    kept.sort();
    counted.sort();
    ensure!(
        kept == counted,
        "ticket_list_counts disagrees with the tickets:\nkept    {kept:?}\ncounted {counted:?}"
    );
    let counters = raw
        .i64(
            "SELECT COUNT(*) FROM ticket_counters c
             WHERE c.last_public_id <> (SELECT COALESCE(MAX(public_id), 0) FROM tickets t WHERE t.organization_id = c.organization_id)",
        )
        .await?;
    ensure!(counters == 0, "ticket_counters disagree with the tickets");

    let t = Instant::now();
    let size_mb = match b {
        Backend::Sqlite => {
            raw.exec("PRAGMA journal_mode = WAL").await?;
            raw.close().await;
            let path = store::sqlite_path(url).context("sqlite path")?;
            fs::metadata(path)?.len() as f64 / 1e6
        }
        Backend::Postgres => {
            raw.exec("VACUUM ANALYZE").await?;
            step("VACUUM ANALYZE", t, 0);
            let size = raw
                .i64("SELECT pg_database_size(current_database())")
                .await?;
            raw.close().await;
            size as f64 / 1e6
        }
    };
    let mut raw = Raw::connect(b, url).await?;
    let summary = summary(&mut raw).await?;
    raw.close().await;
    let report = format!(
        "generated in {:.0} s, {size_mb:.0} MB: {summary}",
        total.elapsed().as_secs_f64()
    );
    println!("data set {report}");
    Ok(report)
}

/// Row counts and the status mix, for the report.
async fn summary(raw: &mut Raw) -> Result<String> {
    let mut parts = Vec::new();
    for table in ["customers", "tickets", "messages", "attachments"] {
        parts.push(format!(
            "{} {table}",
            raw.i64(&format!("SELECT COUNT(*) FROM {table}")).await?
        ));
    }
    let statuses = raw
        .strings(
            "SELECT status || ' ' || COUNT(*) FROM tickets WHERE organization_id = 1 AND NOT is_spam
             GROUP BY status ORDER BY COUNT(*) DESC",
            0,
        )
        .await?;
    let spam = raw
        .i64("SELECT COUNT(*) FROM tickets WHERE organization_id = 1 AND is_spam")
        .await?;
    let avg = raw
        .i64("SELECT CAST(AVG(LENGTH(content) + LENGTH(content_html)) AS BIGINT) FROM messages")
        .await?;
    Ok(format!(
        "{}; Acme's tickets: {}, spam {spam}; average message body {avg} characters",
        parts.join(", "),
        statuses.join(", ")
    ))
}

// ---------------------------------------------------------------------------------------
// API latency against the daemon
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    ListActive,
    Note,
    Reply,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::List => "GET tickets/ (first page)",
            Kind::ListActive => "GET tickets/?status=active",
            Kind::Note => "POST messages/ (internal note)",
            Kind::Reply => "POST messages/ (visible reply)",
        }
    }

    fn target_ms(self) -> f64 {
        match self {
            Kind::List | Kind::ListActive => 20.0,
            Kind::Note | Kind::Reply => 30.0,
        }
    }

    fn request(
        self,
        org: i64,
        tickets: &[i64],
        rng: &mut StdRng,
    ) -> (&'static str, String, Vec<u8>) {
        match self {
            Kind::List => ("GET", format!("/organizations/{org}/tickets/"), Vec::new()),
            Kind::ListActive => (
                "GET",
                format!("/organizations/{org}/tickets/?status=active"),
                Vec::new(),
            ),
            Kind::Note | Kind::Reply => {
                let ticket = tickets[rng.random_range(0..tickets.len())];
                let text = lorem();
                let start = rng.random_range(0..1000);
                let len = rng.random_range(200..1200);
                let content = text[start..start + len].replace('\n', " ");
                let body = serde_json::json!({
                    "content": content,
                    "is_visible_to_customer": self == Kind::Reply,
                });
                (
                    "POST",
                    format!("/organizations/{org}/tickets/{ticket}/messages/"),
                    body.to_string().into_bytes(),
                )
            }
        }
    }

    fn expected_status(self) -> u16 {
        match self {
            Kind::List | Kind::ListActive => 200,
            Kind::Note | Kind::Reply => 201,
        }
    }
}

struct ApiRow {
    backend: Backend,
    kind: Kind,
    connections: usize,
    requests: usize,
    seconds: f64,
    p50: f64,
    p99: f64,
    max: f64,
    daemon_cpu_ms: f64,
    pg_cpu_ms: f64,
    bytes: usize,
    rss_mb: f64,
}

fn api_phase(w: &World, o: &Options) -> Result<Vec<ApiRow>> {
    let daemon = Daemon::start(w)?;
    let result = (|| -> Result<Vec<ApiRow>> {
        // One look at each list, checked against the data.
        let mut http = Http::open(daemon.http_port)?;
        for kind in [Kind::List, Kind::ListActive] {
            let mut rng = StdRng::seed_from_u64(1);
            let (method, path, body) = kind.request(w.acme, &w.tickets, &mut rng);
            let (status, bytes) = http.call(method, &path, &w.token, &body)?;
            ensure!(
                status == 200,
                "{path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            );
            let page: serde_json::Value = serde_json::from_slice(&bytes)?;
            let count = page["count"].as_i64().unwrap_or(-1);
            let results = page["results"].as_array().map_or(0, Vec::len);
            println!(
                "{path}: count {count}, {results} on the page, {} bytes",
                bytes.len()
            );
            ensure!(
                count > 0 && results == 25.min(count as usize),
                "unexpected page: count {count}, {results} results"
            );
        }
        drop(http);
        let mut rows = Vec::new();
        let runs = o
            .connections
            .iter()
            .flat_map(|&c| [Kind::List, Kind::ListActive, Kind::Note, Kind::Reply].map(|k| (c, k)));
        for (connections, kind) in runs {
            let warm = load(w, daemon.http_port, kind, o.warmup, connections, 7)?;
            ensure!(
                warm.failures == 0,
                "{}: {}",
                kind.label(),
                warm.first_error.unwrap_or_default()
            );
            let cpu0 = daemon.cpu_secs();
            let pg0 = postgres_cpu();
            let r = load(w, daemon.http_port, kind, o.requests, connections, 11)?;
            let cpu = daemon.cpu_secs() - cpu0;
            let pg = postgres_cpu() - pg0;
            ensure!(
                r.failures == 0,
                "{}: {} failed requests, first: {}",
                kind.label(),
                r.failures,
                r.first_error.unwrap_or_default()
            );
            let row = ApiRow {
                backend: w.backend,
                kind,
                connections,
                requests: r.latencies.len(),
                seconds: r.seconds,
                p50: pct(&r.latencies, 0.50),
                p99: pct(&r.latencies, 0.99),
                max: pct(&r.latencies, 1.0),
                daemon_cpu_ms: cpu * 1000.0 / r.latencies.len().max(1) as f64,
                pg_cpu_ms: pg * 1000.0 / r.latencies.len().max(1) as f64,
                bytes: r.bytes / r.latencies.len().max(1),
                rss_mb: daemon.peak_rss_mb(),
            };
            println!(
                "{connections} conn. {:<32} {:>5} requests {:>6.0}/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  daemon CPU {:.2} ms/req{}",
                kind.label(),
                row.requests,
                row.requests as f64 / row.seconds,
                row.p50,
                row.p99,
                row.max,
                row.daemon_cpu_ms,
                if w.backend == Backend::Postgres {
                    format!(", PostgreSQL CPU {:.2} ms/req", row.pg_cpu_ms)
                } else {
                    String::new()
                }
            );
            rows.push(row);
        }
        Ok(rows)
    })();
    let log = daemon.stop();
    if result.is_err() {
        eprintln!("daemon log:\n{log}");
    }
    result
}

/// Latency percentile `p` (0..=1, nearest rank) in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

struct LoadResult {
    latencies: Vec<Duration>,
    seconds: f64,
    failures: usize,
    first_error: Option<String>,
    bytes: usize,
}

/// `n` requests of `kind` over `connections` keep-alive connections, closed loop.
fn load(
    w: &World,
    port: u16,
    kind: Kind,
    n: usize,
    connections: usize,
    seed: u64,
) -> Result<LoadResult> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(LoadResult {
        latencies: Vec::with_capacity(n),
        seconds: 0.0,
        failures: 0,
        first_error: None,
        bytes: 0,
    });
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for c in 0..connections {
            let (next, out) = (&next, &out);
            handles.push(s.spawn(move || -> Result<()> {
                let mut rng = StdRng::seed_from_u64(seed * 1000 + c as u64);
                let mut http = Http::open(port)?;
                let mut lat = Vec::new();
                let (mut failures, mut bytes, mut first_error) = (0, 0, None);
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let (method, path, body) = kind.request(w.acme, &w.tickets, &mut rng);
                    let t = Instant::now();
                    let answer = http.call(method, &path, &w.token, &body);
                    let d = t.elapsed();
                    match answer {
                        Ok((status, resp)) if status == kind.expected_status() => {
                            lat.push(d);
                            bytes += resp.len();
                        }
                        Ok((status, resp)) => {
                            failures += 1;
                            first_error.get_or_insert_with(|| {
                                format!(
                                    "{method} {path}: {status} {}",
                                    String::from_utf8_lossy(&resp)
                                )
                            });
                        }
                        Err(e) => {
                            failures += 1;
                            first_error.get_or_insert_with(|| format!("{method} {path}: {e}"));
                            http = Http::open(port)?;
                        }
                    }
                }
                let mut o = out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                o.latencies.extend(lat);
                o.failures += failures;
                o.bytes += bytes;
                if o.first_error.is_none() {
                    o.first_error = first_error;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        }
        Ok(())
    })?;
    let mut r = out.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    r.seconds = start.elapsed().as_secs_f64();
    r.latencies.sort();
    Ok(r)
}

/// One HTTP/1.1 keep-alive connection, blocking.
struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Http {
    fn open(port: u16) -> Result<Http> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Http {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Sends one request; returns the status and the body.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Initdesk-Token: {token}\r\n");
        if method != "GET" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut buf = req.into_bytes();
        buf.extend_from_slice(body);
        self.w.write_all(&buf)?;

        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut resp = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                let mut chunk = vec![0; size + 2];
                self.r.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                resp.extend_from_slice(&chunk[..size]);
            }
        } else {
            resp.resize(length, 0);
            self.r.read_exact(&mut resp)?;
        }
        Ok((status, resp))
    }
}

/// `initdesk-gateway serve` as a child process on the world's database.
struct Daemon {
    child: Child,
    http_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Daemon {
    fn start(w: &World) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("api_load_daemon")
            .tempdir()?;
        let (smtp, http, closed) = (free_port()?, free_port()?, free_port()?);
        // No organizations in the file: the database has them. The relay is a closed port:
        // a reply's mail fails once and waits an hour (retries stay out of the figures).
        let config = format!(
            "[smtp]\nhostname = \"bench.test\"\nshutdown_grace_secs = 2\n\n[http]\npublic_url = \"http://127.0.0.1:{http}\"\n\n[outbound]\nrelay = \"smtp://127.0.0.1:{closed}\"\nretry_base_secs = 3600\n"
        );
        fs::write(dir.path().join("gateway.toml"), config)?;
        let log = fs::File::create(dir.path().join("gateway.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_initdesk-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("gateway.toml"))
            .current_dir(dir.path())
            .env_remove("INITDESK_CONFIG")
            .env("INITDESK_DATABASE_URL", &w.url)
            .env("INITDESK_STORAGE_DATA_DIR", dir.path().join("data"))
            .env("INITDESK_OUTBOUND_SECRET_FILE", dir.path().join("secret"))
            .env("INITDESK_SMTP_LISTEN", format!("127.0.0.1:{smtp}"))
            .env("INITDESK_HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting initdesk-gateway serve")?;
        let mut d = Daemon {
            child,
            http_port: http,
            dir,
        };
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                bail!("initdesk-gateway serve exited ({status}):\n{}", d.log());
            }
            let ready = Http::open(http)
                .and_then(|mut c| c.call("GET", "/readyz", "", &[]))
                .is_ok_and(|(s, _)| s == 200);
            if ready {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                let log = d.log();
                let _ = d.stop();
                bail!("initdesk-gateway serve not ready after 120 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "daemon ready in {:.1} s (pid {})",
            t.elapsed().as_secs_f64(),
            d.child.id()
        );
        Ok(d)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn status_kb(&self, field: &str) -> f64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn peak_rss_mb(&self) -> f64 {
        self.status_kb("VmHWM:") / 1024.0
    }

    fn cpu_secs(&self) -> f64 {
        proc_cpu(&format!("/proc/{}/stat", self.child.id()))
    }

    /// SIGTERM, then up to 30 s for it to stop; returns its log.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Daemon {
    /// A bench that fails (or whose output pipe closes) must not leave its daemon running
    /// and taking CPU from the next measurement.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of a process, from its `/proc/<pid>/stat`.
fn proc_cpu(stat_path: &str) -> f64 {
    let stat = fs::read_to_string(stat_path).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// User + system CPU seconds of every `postgres` process on this machine.
fn postgres_cpu() -> f64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in dir.flatten() {
        let path = e.path().join("stat");
        let Ok(stat) = fs::read_to_string(&path) else {
            continue;
        };
        if stat
            .split_once(" (")
            .is_some_and(|(_, rest)| rest.starts_with("postgres)"))
        {
            total += proc_cpu(&path.to_string_lossy());
        }
    }
    total
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

// ---------------------------------------------------------------------------------------
// Outbox throughput through a private Postfix
// ---------------------------------------------------------------------------------------

struct OutboxRow {
    backend: Backend,
    concurrency: usize,
    n: usize,
    queue_secs: f64,
    seconds: f64,
    relay_done: f64,
    retried: i64,
    cpu_s: f64,
    pg_cpu_s: f64,
}

/// Moves mail still waiting from the API part (replies to the closed relay) out of the way,
/// so the outbox runs send only what they queued.
async fn park_outbox(w: &World) -> Result<()> {
    let mut raw = Raw::connect(w.backend, &w.url).await?;
    let n = raw
        .exec(
            "UPDATE outbox SET state = 'pending', claimed_by = NULL, claimed_until_ms = NULL,
                 next_attempt_ms = 9000000000000 WHERE state IN ('pending', 'sending')",
        )
        .await?;
    raw.close().await;
    if n > 0 {
        println!("parked {n} outbox rows left from the API part");
    }
    Ok(())
}

async fn outbox_phase(
    w: &World,
    pf: &Postfix,
    o: &Options,
    concurrency: usize,
) -> Result<OutboxRow> {
    let n = o.outbox.min(w.tickets.len());
    // The daemon's pool size (database.max_connections = 8).
    let store = store::open(&w.url, 8).await?;
    let mut raw = Raw::connect(w.backend, &w.url).await?;
    let baseline = raw.i64("SELECT COALESCE(MAX(id), 0) FROM outbox").await?;

    // Queue n visible replies on n different tickets, QUEUE_BATCH per transaction.
    let mut ids = w.tickets.clone();
    ids.shuffle(&mut StdRng::seed_from_u64(concurrency as u64));
    ids.truncate(n);
    let t = Instant::now();
    for chunk in ids.chunks(QUEUE_BATCH) {
        let mut tx = store.begin().await?;
        for (i, &ticket) in chunk.iter().enumerate() {
            let start = (ticket as usize * 31 + i) % 1000;
            let req = NewReply {
                content: format!(
                    "Hello,\n\n{}\n\nBest regards,\nAgent",
                    &lorem()[start..start + 400]
                ),
                is_visible_to_customer: Some(true),
                ..NewReply::default()
            };
            agent::reply(&mut tx, w.acme, ticket, &req)
                .await
                .map_err(|e| anyhow::anyhow!("reply on ticket {ticket}: {e}"))?;
        }
        tx.commit().await?;
    }
    let queue_secs = t.elapsed().as_secs_f64();
    let queued = raw
        .i64(&format!(
            "SELECT COUNT(*) FROM outbox WHERE id > {baseline} AND kind = 'email' AND state = 'pending'"
        ))
        .await?;
    ensure!(queued == n as i64, "{queued} rows queued, not {n}");

    let removed_before = pf.removed();
    let tally = (o.count_sql || o.explain).then(sql_counter);
    let sql0 = tally.as_ref().map(SqlTally::take);
    let blobs = tempfile::Builder::new()
        .prefix("api_load_blobs")
        .tempdir()?;
    let sender = Sender::new(
        store.clone(),
        Arc::new(FsBlobStore::new(blobs.path())),
        ReplyTokens::new(b"api-load-bench-reply-token-secret".to_vec()),
        SenderSettings {
            relay: format!("smtp://127.0.0.1:{}", pf.port),
            hello_name: "gateway.bench.test".into(),
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            concurrency,
            ca_file: String::new(),
            holder: "api-load".into(),
            public_url: "http://127.0.0.1:8080".into(),
        },
    )?;
    let stop = CancellationToken::new();
    let cpu0 = proc_cpu("/proc/self/stat");
    let pg0 = postgres_cpu();
    let start = Instant::now();
    let task = tokio::spawn(sender.run(stop.clone()));
    let limit = Duration::from_secs(if o.smoke { 60 } else { 600 });
    let done_sql = format!(
        "SELECT COUNT(*) FROM outbox WHERE organization_id = {} AND id > {baseline} AND state IN ('sent', 'failed')",
        w.acme
    );
    // The count reads every row of the phase, on the database the sender is measured
    // against (polled each 50 ms, it was a tenth of PostgreSQL's CPU): looked at less often
    // while much is left, every 20 ms near the end.
    loop {
        let done = raw.i64(&done_sql).await?;
        if done >= n as i64 || start.elapsed() > limit {
            break;
        }
        let rate = (done as f64 / start.elapsed().as_secs_f64()).max(100.0);
        let left_ms = (n as f64 - done as f64) * 1000.0 / rate;
        tokio::time::sleep(Duration::from_millis(
            (left_ms / 4.0).clamp(20.0, 500.0) as u64
        ))
        .await;
    }
    let seconds = start.elapsed().as_secs_f64();
    if let (Some(t), Some(before)) = (&tally, sql0) {
        // Includes this loop's polls (one statement each 50 ms).
        print_sql("outbox: per sent message", t.take(), before, n);
    }
    let cpu_s = proc_cpu("/proc/self/stat") - cpu0;
    let pg_cpu_s = postgres_cpu() - pg0;
    stop.cancel();
    let _ = task.await;

    let mut tx = store.begin_read().await?;
    let rows = outbox::list(&mut tx, w.acme).await?;
    tx.rollback().await?;
    let mine: Vec<_> = rows.iter().filter(|r| r.0 > baseline).collect();
    let not_sent: Vec<_> = mine.iter().filter(|r| r.2 != "sent").collect();
    let retried = mine.iter().filter(|r| r.3 > 1).count() as i64;
    ensure!(
        mine.len() == n && not_sent.is_empty(),
        "outbox: {} of {} rows not sent after {seconds:.0} s, e.g. {:?}\n{}",
        not_sent.len(),
        mine.len(),
        not_sent.first(),
        tail(&pf.log(), 20)
    );
    // Postfix took each message (the 250 came after its queue file was on disk); wait until
    // it has also discarded them all.
    let relay_done = loop {
        if pf.removed() >= removed_before + n {
            break start.elapsed().as_secs_f64();
        }
        if start.elapsed() > limit + Duration::from_secs(60) {
            bail!(
                "Postfix removed {} of {n} messages:\n{}",
                pf.removed() - removed_before,
                tail(&pf.log(), 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    raw.close().await;
    store.close().await;
    println!(
        "outbox concurrency {concurrency}: {n} replies queued in {queue_secs:.2} s ({:.0}/s), sent in {seconds:.2} s = {:.0} msg/s \
         (Postfix discarded the last at {relay_done:.2} s), {retried} retried, sender-process CPU {cpu_s:.1} s{}",
        n as f64 / queue_secs,
        n as f64 / seconds,
        if w.backend == Backend::Postgres {
            format!(", PostgreSQL CPU {pg_cpu_s:.1} s")
        } else {
            String::new()
        }
    );
    Ok(OutboxRow {
        backend: w.backend,
        concurrency,
        n,
        queue_secs,
        seconds,
        relay_done,
        retried,
        cpu_s,
        pg_cpu_s,
    })
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A private Postfix on 127.0.0.1 (config, queue and data in a temp dir, as in
/// tests/it/postfix.rs) whose transport map sends every customer domain to `discard:`.
struct Postfix {
    dir: tempfile::TempDir,
    config_dir: PathBuf,
    port: u16,
}

fn sbin(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` is not installed (scripts/test.sh installs Postfix)"))
}

impl Postfix {
    fn start() -> Result<Postfix> {
        let postfix = sbin("postfix")?;
        let dir = tempfile::Builder::new()
            .prefix("api_load_postfix")
            .tempdir()?;
        // The daemons drop root: they must reach the queue and data directories.
        Command::new("chmod").arg("755").arg(dir.path()).status()?;
        let root = dir.path();
        let config_dir = root.join("etc");
        fs::create_dir_all(&config_dir)?;
        fs::create_dir_all(root.join("queue"))?;
        let port = free_port()?;
        let transport = (0..CUSTOMER_DOMAINS)
            .map(|i| format!("mail{i}.customers.test=discard:"))
            .collect::<Vec<_>>()
            .join(", ");
        // 127.0.0.1 is in mynetworks, so it may relay; the transport map discards.
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {config}
queue_directory = {root}/queue
data_directory = {root}/data
myhostname = relay.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
transport_maps = inline:{{ {transport} }}
alias_maps =
alias_database =
local_recipient_maps =
smtp_dns_support_level = disabled
smtpd_tls_security_level = none
in_flow_delay = {in_flow_delay}
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
biff = no
",
            config = config_dir.display(),
            root = root.display(),
            // Postfix slows down senders when its queue manager falls behind (1 s per
            // message at most); INITDESK_BENCH_IN_FLOW_DELAY=0s shows the sender without it.
            in_flow_delay =
                std::env::var("INITDESK_BENCH_IN_FLOW_DELAY").unwrap_or_else(|_| "1s".into()),
        );
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"
        );
        fs::write(config_dir.join("main.cf"), main_cf)?;
        fs::write(config_dir.join("master.cf"), master_cf)?;
        let pf = Postfix {
            dir,
            config_dir,
            port,
        };
        for action in ["check", "start"] {
            let out = Command::new(&postfix)
                .arg("-c")
                .arg(&pf.config_dir)
                .arg(action)
                .stdin(Stdio::null())
                .output()?;
            ensure!(
                out.status.success(),
                "postfix {action} failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                pf.log()
            );
        }
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(20),
                "the private Postfix does not listen on 127.0.0.1:{port}:\n{}",
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("private Postfix on 127.0.0.1:{port}, customer domains -> discard:");
        Ok(pf)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Messages Postfix is done with (qmgr's "removed").
    fn removed(&self) -> usize {
        self.log().matches(": removed").count()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid: Option<u32> = fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Ok(postfix) = sbin("postfix") {
            let _ = Command::new(postfix)
                .arg("-c")
                .arg(&self.config_dir)
                .arg("stop")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(pid) = pid {
            let t = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// --explain: query plans and an in-process breakdown
// ---------------------------------------------------------------------------------------

/// Durations in ms, for percentiles.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn add(&mut self, t: Instant) {
        self.0.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }

    fn line(&mut self, what: &str) -> String {
        self.0.sort_by(f64::total_cmp);
        let p = |q: f64| {
            let rank = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len().max(1));
            self.0.get(rank - 1).copied().unwrap_or(0.0)
        };
        format!(
            "  {what:<44} p50 {:>7.3} ms  p99 {:>7.3} ms",
            p(0.5),
            p(0.99)
        )
    }
}

async fn explain(w: &World, o: &Options) -> Result<()> {
    let org = w.acme;
    let mut raw = Raw::connect(w.backend, &w.url).await?;
    let page = "SELECT * FROM tickets WHERE organization_id = {org} AND id IN (
                    SELECT id FROM tickets WHERE {filter} ORDER BY id DESC LIMIT 25 OFFSET 0) ORDER BY id DESC";
    let last = *w.tickets.last().context("no tickets")?;
    let first_page = format!(
        "FROM tickets WHERE organization_id = {org} AND is_spam = FALSE ORDER BY id DESC LIMIT 25"
    );
    let list = |v: Vec<i64>| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let page_ids = list(raw.i64s(&format!("SELECT id {first_page}")).await?);
    let page_customers = list(
        raw.i64s(&format!("SELECT customer_id {first_page}"))
            .await?,
    );
    let token_hash = store::blobs::sha256_hex(w.token.as_bytes());
    let statements = [
        (
            "auth: token",
            format!("SELECT organization_id FROM api_tokens WHERE token_hash = '{token_hash}'"),
        ),
        (
            "list: count",
            format!("SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM ticket_list_counts WHERE organization_id = {org} AND is_spam = FALSE"),
        ),
        (
            "list: page",
            page.replace("{org}", &org.to_string())
                .replace("{filter}", &format!("organization_id = {org} AND is_spam = FALSE")),
        ),
        (
            "list ?status=active: count",
            format!("SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM ticket_list_counts WHERE organization_id = {org} AND is_spam = FALSE AND status = 'active'"),
        ),
        (
            "list ?status=active: page",
            page.replace("{org}", &org.to_string()).replace(
                "{filter}",
                &format!("organization_id = {org} AND is_spam = FALSE AND status = 'active'"),
            ),
        ),
        (
            "render: customers of a page",
            format!("SELECT id, organization_id, name, email, is_spam FROM customers WHERE organization_id = {org} AND id IN ({page_customers})"),
        ),
        (
            "render: attachments of a page",
            format!("SELECT * FROM attachments WHERE organization_id = {org} AND ticket_id IN ({page_ids}) ORDER BY created_at, id"),
        ),
        (
            "reply: last visible snapshot",
            format!("SELECT external_recipient_emails FROM messages WHERE organization_id = {org} AND ticket_id = {last}
                     AND is_visible_to_customer = TRUE AND role <> 'system' ORDER BY id DESC LIMIT 1"),
        ),
        (
            "compose: thread",
            format!("SELECT * FROM messages WHERE organization_id = {org} AND ticket_id = {last} ORDER BY id"),
        ),
        (
            "sender: claim",
            "SELECT id FROM outbox WHERE (state = 'pending' AND next_attempt_ms <= 1) OR (state = 'sending' AND claimed_until_ms < 1)
             ORDER BY next_attempt_ms, id LIMIT 64".to_string(),
        ),
    ];
    println!("\nquery plans ({}):", w.backend.name());
    for (what, sql) in &statements {
        let plan = match w.backend {
            Backend::Sqlite => raw.strings(&format!("EXPLAIN QUERY PLAN {sql}"), 3).await?,
            Backend::Postgres => {
                // The second run: planned with warm caches, as on a busy connection.
                let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
                raw.strings(&explain, 0).await?;
                raw.strings(&explain, 0).await?
            }
        };
        println!("- {what}:\n    {}", plan.join("\n    "));
    }
    if let Raw::Pg(c) = &mut raw {
        plan_cache(c, org, &w.tickets, if o.smoke { 20 } else { 300 }).await?;
    }
    raw.close().await;

    // The endpoints' store calls one by one, in this process, one at a time.
    let sql = sql_counter();
    let store = store::open(&w.url, 8).await?;
    let iterations = if o.smoke { 20 } else { 300 };
    let public_url = "http://127.0.0.1:8080";
    println!(
        "\nin-process breakdown ({}, {iterations} iterations each, no HTTP, nothing else running):",
        w.backend.name()
    );
    for status in [None, Some("active")] {
        let (mut auth, mut begin, mut count, mut page, mut render, mut json, mut end, mut total) =
            Default::default();
        let filter = TicketFilter {
            status: status.map(str::to_string),
            ..TicketFilter::default()
        };
        let q = ListQuery::new(
            &format!("/organizations/{org}/tickets/"),
            status
                .map_or(String::new(), |s| format!("status={s}"))
                .as_str(),
        );
        let sql0 = sql.take();
        for _ in 0..iterations {
            let t0 = Instant::now();
            let t = Instant::now();
            let mut tx = store.begin_read().await?;
            orgs::org_for_token(&mut tx, &w.token).await?;
            tx.rollback().await?;
            Samples::add(&mut auth, t);
            let t = Instant::now();
            let mut tx = store.begin_read().await?;
            Samples::add(&mut begin, t);
            let t = Instant::now();
            let n = views::count_tickets(&mut tx, org, &filter).await?;
            Samples::add(&mut count, t);
            let win = q
                .page_request()
                .and_then(|r| r.window(n))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let t = Instant::now();
            let rows = views::ticket_page(&mut tx, org, &filter, win.limit, win.offset).await?;
            Samples::add(&mut page, t);
            let t = Instant::now();
            let out = render_tickets(&mut tx, org, public_url, rows)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Samples::add(&mut render, t);
            let t = Instant::now();
            tx.rollback().await?;
            Samples::add(&mut end, t);
            let t = Instant::now();
            let body =
                serde_json::to_vec(&TicketPage::new(PageMeta::new(&q, public_url, &win), out))?;
            std::hint::black_box(body);
            Samples::add(&mut json, t);
            Samples::add(&mut total, t0);
        }
        let label = status.map_or("list".to_string(), |s| format!("list ?status={s}"));
        print_sql(&label, sql.take(), sql0, iterations);
        for (s, what) in [
            (&mut auth, "auth (read tx + token lookup)"),
            (&mut begin, "begin read tx"),
            (&mut count, "count_tickets"),
            (&mut page, "ticket_page"),
            (&mut render, "render_tickets (4 queries)"),
            (&mut end, "rollback"),
            (&mut json, "JSON encoding"),
            (&mut total, "total"),
        ] {
            println!("{}", s.line(&format!("{label}: {what}")));
        }
    }
    let mut rng = StdRng::seed_from_u64(99);
    for visible in [false, true] {
        let (mut begin, mut reply, mut render, mut commit, mut total) = Default::default();
        let sql0 = sql.take();
        for _ in 0..iterations {
            let ticket = w.tickets[rng.random_range(0..w.tickets.len())];
            let req = NewReply {
                content: lorem()[..600].to_string(),
                is_visible_to_customer: Some(visible),
                ..NewReply::default()
            };
            let t0 = Instant::now();
            let t = Instant::now();
            let mut tx = store.begin().await?;
            Samples::add(&mut begin, t);
            let t = Instant::now();
            let created = agent::reply(&mut tx, org, ticket, &req)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Samples::add(&mut reply, t);
            let t = Instant::now();
            let rows: Vec<_> =
                initdesk_gateway::store::views::message(&mut tx, org, created.message_id)
                    .await?
                    .into_iter()
                    .collect();
            render_messages(&mut tx, org, public_url, rows)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Samples::add(&mut render, t);
            let t = Instant::now();
            tx.commit().await?;
            Samples::add(&mut commit, t);
            Samples::add(&mut total, t0);
        }
        let label = if visible {
            "visible reply"
        } else {
            "internal note"
        };
        print_sql(label, sql.take(), sql0, iterations);
        for (s, what) in [
            (&mut begin, "begin write tx"),
            (&mut reply, "agent::reply"),
            (&mut render, "read back + render_messages"),
            (&mut commit, "commit"),
            (&mut total, "total"),
        ] {
            println!("{}", s.line(&format!("{label}: {what}")));
        }
    }
    contention(w, &store, if o.smoke { 10 } else { 100 }).await?;
    store.close().await;
    Ok(())
}

/// Four writers at once in this process, as four API clients posting notes: how long
/// `begin()` waits for the write lock, and the whole write; then the same with the four
/// serialized by an in-process async mutex (what a single-writer queue would do).
async fn contention(w: &World, store: &store::Store, per_task: usize) -> Result<()> {
    println!(
        "\nfour concurrent writers in this process ({}, {per_task} internal notes each):",
        w.backend.name()
    );
    // The first round opens the pool's connections and is not reported.
    for (serialized, per_task, report) in [
        (false, 3, false),
        (false, per_task, true),
        (true, per_task, true),
    ] {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let mut tasks = Vec::new();
        for task in 0..4u64 {
            let (store, lock, tickets, org) =
                (store.clone(), lock.clone(), w.tickets.clone(), w.acme);
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(500 + task);
                let (mut waits, mut totals) = (Vec::new(), Vec::new());
                for _ in 0..per_task {
                    let ticket = tickets[rng.random_range(0..tickets.len())];
                    let req = NewReply {
                        content: lorem()[..400].to_string(),
                        is_visible_to_customer: Some(false),
                        ..NewReply::default()
                    };
                    let t0 = Instant::now();
                    let guard = if serialized {
                        Some(lock.lock().await)
                    } else {
                        None
                    };
                    let mut tx = store.begin().await?;
                    waits.push(t0.elapsed().as_secs_f64() * 1000.0);
                    agent::reply(&mut tx, org, ticket, &req)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    tx.commit().await?;
                    drop(guard);
                    totals.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::Ok((waits, totals))
            }));
        }
        let (mut waits, mut totals) = (Samples::default(), Samples::default());
        for t in tasks {
            let (a, b) = t.await??;
            waits.0.extend(a);
            totals.0.extend(b);
        }
        if !report {
            continue;
        }
        let label = if serialized {
            "serialized by an async mutex"
        } else {
            "as today"
        };
        let (wmax, tmax) = (waits.max(), totals.max());
        println!(
            "{}  max {wmax:>7.1} ms",
            waits.line(&format!("{label}: wait for the write lock"))
        );
        println!(
            "{}  max {tmax:>7.1} ms",
            totals.line(&format!("{label}: whole write"))
        );
    }
    Ok(())
}

/// PostgreSQL: the same prepared statements executed with a custom plan every time (what
/// the gateway's connections use, `plan_cache_mode = force_custom_plan`) and with
/// PostgreSQL's default (a generic plan after five executions).
async fn plan_cache(c: &mut sqlx::PgConnection, org: i64, tickets: &[i64], n: usize) -> Result<()> {
    println!(
        "\nplan_cache_mode (PostgreSQL, {n} executions of each prepared statement, one connection):"
    );
    let page = "SELECT * FROM tickets WHERE organization_id = $1 AND id IN (
                    SELECT id FROM tickets WHERE organization_id = $1 AND is_spam = $2
                    ORDER BY id DESC LIMIT $3 OFFSET $4)
                ORDER BY id DESC";
    let by_id = "SELECT * FROM tickets WHERE organization_id = $1 AND id = $2";
    let snapshot = "SELECT external_recipient_emails FROM messages
                    WHERE organization_id = $1 AND ticket_id = $2 AND is_visible_to_customer = TRUE
                      AND role <> 'system'
                    ORDER BY id DESC LIMIT 1";
    for mode in ["force_custom_plan", "auto"] {
        sqlx::raw_sql(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut *c)
            .await?;
        let mut rng = StdRng::seed_from_u64(3);
        let (mut a, mut b, mut d) = (Samples::default(), Samples::default(), Samples::default());
        for _ in 0..n {
            let t = Instant::now();
            sqlx::query(page)
                .bind(org)
                .bind(false)
                .bind(25i64)
                .bind(0i64)
                .fetch_all(&mut *c)
                .await?;
            a.add(t);
            let ticket = tickets[rng.random_range(0..tickets.len())];
            let t = Instant::now();
            sqlx::query(by_id)
                .bind(org)
                .bind(ticket)
                .fetch_all(&mut *c)
                .await?;
            b.add(t);
            let t = Instant::now();
            sqlx::query(snapshot)
                .bind(org)
                .bind(ticket)
                .fetch_all(&mut *c)
                .await?;
            d.add(t);
        }
        println!("{}", a.line(&format!("{mode}: ticket_page")));
        println!("{}", b.line(&format!("{mode}: ticket_by_id")));
        println!("{}", d.line(&format!("{mode}: last visible snapshot")));
    }
    sqlx::raw_sql("RESET plan_cache_mode")
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// Counts the statements sqlx runs (its `sqlx::query` events) and their time, in this process.
#[derive(Clone, Default)]
struct SqlTally(Arc<Mutex<(u64, f64)>>);

impl SqlTally {
    fn take(&self) -> (u64, f64) {
        self.0.lock().map(|g| *g).unwrap_or_default()
    }
}

struct SqlLayer(SqlTally);

struct ElapsedVisitor(f64);

impl tracing::field::Visit for ElapsedVisitor {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.0 = value;
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut v = ElapsedVisitor(0.0);
        event.record(&mut v);
        if let Ok(mut t) = (self.0).0.lock() {
            t.0 += 1;
            t.1 += v.0;
        }
    }
}

/// The process-wide statement counter, installed on first use.
fn sql_counter() -> SqlTally {
    static TALLY: std::sync::OnceLock<SqlTally> = std::sync::OnceLock::new();
    TALLY
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let tally = SqlTally::default();
            let filter = tracing_subscriber::filter::Targets::new()
                .with_target("sqlx::query", tracing::Level::TRACE);
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::Layer::with_filter(SqlLayer(tally.clone()), filter),
            );
            let _ = tracing::subscriber::set_global_default(subscriber);
            tally
        })
        .clone()
}

fn print_sql(label: &str, now: (u64, f64), before: (u64, f64), iterations: usize) {
    let n = (now.0 - before.0) as f64 / iterations as f64;
    let secs = (now.1 - before.1) / iterations as f64;
    println!(
        "  {label}: {n:.1} SQL statements per request, sqlx's time for them {:.3} ms",
        secs * 1000.0
    );
}
