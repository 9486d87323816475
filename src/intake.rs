//! Group commit for the listeners: every session hands its message here and waits; one task
//! commits all that queued in a single transaction ([`Pipeline::ingest_batch`]) and answers
//! each session. While one commit's fsync runs, the next batch gathers, so durability costs
//! one fsync per batch, not per message.

use tokio::sync::{mpsc, oneshot};

use crate::pipeline::{Delivery, IngestError, Outcome, Pipeline};
use crate::store::StoreError;

/// Messages committed together at most.
const MAX_BATCH: usize = 256;

type Results = Vec<Result<Outcome, IngestError>>;

struct Job {
    deliveries: Vec<Delivery>,
    reply: oneshot::Sender<Results>,
}

/// The handle sessions submit to; cheap to clone. The committer stops when every handle is gone.
#[derive(Clone, Debug)]
pub struct Intake {
    jobs: mpsc::Sender<Job>,
}

impl Intake {
    /// Starts the committer task for `pipeline`.
    pub fn start(pipeline: Pipeline) -> (Intake, tokio::task::JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(1024);
        let task = tokio::spawn(commit_loop(pipeline, rx));
        (Intake { jobs }, task)
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
        if self.jobs.send(Job { deliveries, reply }).await.is_err() {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

async fn commit_loop(pipeline: Pipeline, mut rx: mpsc::Receiver<Job>) {
    // Two batches in flight: one prepares (CPU) while the other commits (database); the
    // pipeline's commit lock keeps commits in order.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
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
        let pipeline = pipeline.clone();
        tasks.spawn(async move {
            commit(pipeline, jobs, count).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn commit(pipeline: Pipeline, jobs: Vec<Job>, count: usize) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.deliveries.len()).collect();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut all = Vec::with_capacity(count);
    for job in jobs {
        all.extend(job.deliveries);
        replies.push(job.reply);
    }
    metrics::histogram!("initdesk_commit_batch_messages").record(count as f64);
    let started = std::time::Instant::now();
    let results = pipeline.ingest_batch(all).await;
    metrics::histogram!("initdesk_commit_seconds").record(started.elapsed().as_secs_f64());
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
