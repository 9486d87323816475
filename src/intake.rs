//! Group commit for the listeners: every session prepares its message (parse, render,
//! attachment files) in its own task, hands it here and waits; one task commits all that
//! queued in a single transaction ([`Pipeline::commit_prepared`]) and answers each session.
//! While one commit runs, the next messages prepare and gather, so the serial part is only
//! the database work, and durability costs one fsync per batch, not per message.

use tokio::sync::{mpsc, oneshot};

use crate::pipeline::{Delivery, IngestError, Outcome, Pipeline, PreparedDelivery};
use crate::store::StoreError;

/// Messages committed together at most.
const MAX_BATCH: usize = 256;

type Results = Vec<Result<Outcome, IngestError>>;

struct Job {
    deliveries: Vec<PreparedDelivery>,
    reply: oneshot::Sender<Results>,
}

/// The handle sessions submit to; cheap to clone. The committer stops when every handle is gone.
#[derive(Clone, Debug)]
pub struct Intake {
    jobs: mpsc::Sender<Job>,
    pipeline: Pipeline,
}

impl Intake {
    /// Starts the committer for `pipeline` on a thread of its own.
    ///
    /// Every statement of a commit hands off to the database driver and back; polled by the
    /// runtime's workers, each return queued behind every busy SMTP session's task, and the
    /// serial commit, the limit of the whole listener, waited on them. On its own thread it
    /// is woken directly (still within the runtime, for timers and blocking work).
    pub fn start(pipeline: Pipeline) -> (Intake, tokio::task::JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(1024);
        let runtime = tokio::runtime::Handle::current();
        let committer = pipeline.clone();
        let task =
            tokio::task::spawn_blocking(move || runtime.block_on(commit_loop(committer, rx)));
        (Intake { jobs, pipeline }, task)
    }

    /// Commits `deliveries` (one per recipient of a message) and returns one result each.
    pub async fn submit(&self, deliveries: Vec<Delivery>) -> Results {
        let n = deliveries.len();
        let (reply, answer) = oneshot::channel();
        let gone = || {
            (0..n)
                .map(|_| {
                    Err(IngestError::Temporary(StoreError::Io(
                        std::io::Error::other("the committer has stopped"),
                    )))
                })
                .collect()
        };
        let mut deliveries = self.pipeline.prepare_all(deliveries).await;
        // Off the serial commit: each session waits for its own files' fsyncs.
        self.pipeline.make_files_durable(&mut deliveries).await;
        if self.jobs.send(Job { deliveries, reply }).await.is_err() {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

async fn commit_loop(pipeline: Pipeline, mut rx: mpsc::Receiver<Job>) {
    // One commit at a time (commits are serial anyway); whatever queued meanwhile is the
    // next batch.
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].deliveries.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.deliveries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit(&pipeline, jobs, count).await;
    }
}

async fn commit(pipeline: &Pipeline, jobs: Vec<Job>, count: usize) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.deliveries.len()).collect();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut all = Vec::with_capacity(count);
    for job in jobs {
        all.extend(job.deliveries);
        replies.push(job.reply);
    }
    metrics::histogram!("initdesk_commit_batch_messages").record(count as f64);
    let started = std::time::Instant::now();
    let (results, durable) = pipeline.commit_prepared_then_sync(all).await;
    metrics::histogram!("initdesk_commit_write_seconds").record(started.elapsed().as_secs_f64());
    // The next batch commits while this one's log reaches the disk; its sessions hear back
    // only after that.
    tokio::spawn(async move {
        let results = Pipeline::once_durable(results, durable).await;
        metrics::histogram!("initdesk_commit_seconds").record(started.elapsed().as_secs_f64());
        answer(results, replies, sizes);
    });
}

fn answer(results: Results, replies: Vec<oneshot::Sender<Results>>, sizes: Vec<usize>) {
    for r in &results {
        let outcome = match r {
            Ok(o) => o.kind(),
            Err(IngestError::Temporary(_) | IngestError::Failed(_)) => "temporary_failure",
            Err(IngestError::UnknownRecipient(_)) => "unknown_recipient",
            Err(IngestError::Unusable(_)) => "rejected",
        };
        metrics::counter!("initdesk_messages_total", "outcome" => outcome).increment(1);
    }
    let mut results = results.into_iter();
    for (reply, size) in replies.into_iter().zip(sizes) {
        // A session that gave up (client gone) no longer listens; its mail is committed anyway.
        let _ = reply.send(results.by_ref().take(size).collect());
    }
}
