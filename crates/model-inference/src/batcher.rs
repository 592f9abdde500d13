//! Dynamic micro-batching.
//!
//! Requests go into one bounded queue; a fixed pool of OS threads (never the
//! async runtime's workers) each take the first waiting request, gather more
//! until the batch is full or `max_delay` has passed (zero: take whatever is
//! already queued), and run them as one model call. A place in the queue is
//! taken before a request's body is parsed ([`Batcher::admit`]): when the queue
//! is full a request waits a bounded time for room, then the handler sheds it
//! with 429; a request whose deadline passed while it waited is answered
//! without running it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::engine::{Engine, EngineError, MAX_CONCRETE_BATCH, Session};
use crate::metrics::InferenceMetrics;

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most rows in one model run; also the most rows one request may carry.
    pub max_batch_rows: usize,
    /// How long the first request of a batch may wait for company.
    pub max_delay: Duration,
    /// Requests that may wait for a worker before new ones are refused.
    pub queue_capacity: usize,
    pub workers: usize,
}

/// Post-processing that silently degrades predictions, for experiments that
/// must catch a regression that still answers 200 (see FAULT_SCORE_*).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreFault {
    /// Added to the logit.
    pub shift: f32,
    /// Standard deviation of Gaussian noise added to the logit.
    pub noise: f32,
}

impl ScoreFault {
    pub fn is_active(&self) -> bool {
        self.shift != 0.0 || self.noise != 0.0
    }

    /// Rewrites the `logit` and `probability` columns consistently.
    fn apply(&self, logit: &mut [f32], probability: &mut [f32]) {
        for (l, p) in logit.iter_mut().zip(probability.iter_mut()) {
            *l += self.shift + self.noise * standard_normal();
            *p = 1.0 / (1.0 + (-*l).exp());
        }
    }
}

fn standard_normal() -> f32 {
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    let u = 1.0 - fastrand::f32();
    let v = fastrand::f32();
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// One request's rows and where to send its answer.
struct Job {
    input: Vec<f32>,
    rows: usize,
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, InferError>>,
    /// Its place in the queue, given back when a worker takes the job.
    admission: Option<Admission>,
}

/// A place in the queue, taken before the request body is parsed.
#[derive(Debug)]
pub struct Admission {
    _place: OwnedSemaphorePermit,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InferError {
    #[error("the inference queue is full")]
    QueueFull,
    #[error("the request's deadline passed while it was queued")]
    DeadlineExceeded,
    #[error("the inference workers have stopped")]
    Stopped,
    #[error("{0}")]
    Engine(String),
}

#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
    /// One permit per queue slot: a request holds one from admission until a
    /// worker takes it, so the channel itself is never found full.
    room: Arc<Semaphore>,
    metrics: InferenceMetrics,
}

/// Column indices of the outputs the score fault rewrites.
#[derive(Debug, Clone, Copy)]
struct ScoreColumns {
    logit: usize,
    probability: usize,
}

impl Batcher {
    /// Starts the workers, each with its own engine session.
    pub fn start(
        engine: Arc<Engine>,
        cfg: BatchConfig,
        fault: ScoreFault,
        metrics: InferenceMetrics,
    ) -> Result<Self, EngineError> {
        let spec = engine.spec();
        let score_cols = match (spec.output_index("logit"), spec.output_index("probability")) {
            (Some(logit), Some(probability)) => Some(ScoreColumns { logit, probability }),
            _ => None,
        };
        if fault.is_active() && score_cols.is_none() {
            tracing::warn!(
                "FAULT_SCORE_* is set but the model has no logit/probability outputs; ignoring it"
            );
        }
        let score_fault = score_cols
            .filter(|_| fault.is_active())
            .map(|cols| (fault, cols));

        // crossbeam's blocking `recv` spins and yields a few times before it
        // parks. Kept on purpose: on a core shared with the runtime thread the
        // yields let it read more requests first, so batches fill (48 rows on
        // average at c=64 pinned); a queue whose workers sleep at once ran
        // batches of one at twice the CPU per request (BENCHMARKS.md, session 21).
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.queue_capacity);
        for i in 0..cfg.workers.max(1) {
            let mut session = engine.session()?;
            // Warm every concrete plan (and the full batch) before going ready,
            // so no request pays a plan's first-run allocations.
            let concrete = cfg.max_batch_rows.min(MAX_CONCRETE_BATCH);
            for rows in (1..=concrete).chain([cfg.max_batch_rows]) {
                session.run(&vec![0.0; rows * spec.n_features], rows)?;
            }
            let worker = Worker {
                session,
                rx: rx.clone(),
                cfg,
                score_fault,
                metrics: metrics.clone(),
                carry: None,
            };
            thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| EngineError::Run(format!("spawning inference worker: {e}")))?;
        }
        Ok(Self {
            tx,
            room: Arc::new(Semaphore::new(cfg.queue_capacity)),
            metrics,
        })
    }

    /// A place in the queue, waiting up to `wait` (first come, first served)
    /// when it is full; `None` means shed. Called before the body is parsed,
    /// so a shed request costs little more than reading it, and a waiting one
    /// holds its connection: a keep-alive client with a bounded pool (an
    /// Envoy sidecar) is slowed down instead of refused and straight back.
    pub async fn admit(&self, wait: Duration) -> Option<Admission> {
        if let Ok(permit) = Arc::clone(&self.room).try_acquire_owned() {
            return Some(Admission { _place: permit });
        }
        if wait.is_zero() {
            return None;
        }
        match tokio::time::timeout(wait, Arc::clone(&self.room).acquire_owned()).await {
            Ok(Ok(permit)) => Some(Admission { _place: permit }),
            _ => None,
        }
    }

    /// Queues `rows` rows (row-major in `input`) and waits for their outputs.
    pub async fn infer(
        &self,
        admission: Admission,
        input: Vec<f32>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, InferError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            rows,
            deadline,
            enqueued: Instant::now(),
            reply,
            admission: Some(admission),
        };
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.set(self.tx.len() as i64);
            }
            Err(TrySendError::Full(_)) => return Err(InferError::QueueFull),
            Err(TrySendError::Disconnected(_)) => return Err(InferError::Stopped),
        }
        answer.await.unwrap_or(Err(InferError::Stopped))
    }
}

/// Off the queue: its place goes to the next request waiting for one.
fn taken(mut job: Job) -> Job {
    job.admission = None;
    job
}

struct Worker {
    session: Session,
    rx: Receiver<Job>,
    cfg: BatchConfig,
    score_fault: Option<(ScoreFault, ScoreColumns)>,
    metrics: InferenceMetrics,
    /// A job taken from the queue that did not fit the last batch.
    carry: Option<Job>,
}

impl Worker {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.metrics.queue_depth.set(self.rx.len() as i64);
            self.run_batch(batch);
        }
    }

    /// Blocks for the first job, then gathers more. `None` when the queue is closed.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let first = match self.carry.take() {
            Some(job) => job,
            None => taken(self.rx.recv().ok()?),
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let gather_until = Instant::now() + self.cfg.max_delay;
        while rows < self.cfg.max_batch_rows {
            let next = if self.cfg.max_delay.is_zero() {
                match self.rx.try_recv() {
                    Ok(job) => taken(job),
                    Err(_) => break,
                }
            } else {
                match self.rx.recv_deadline(gather_until) {
                    Ok(job) => taken(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            };
            if rows + next.rows > self.cfg.max_batch_rows {
                self.carry = Some(next);
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        Some(batch)
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let now = Instant::now();
        let mut live = Vec::with_capacity(batch.len());
        for job in batch {
            if job.reply.is_closed() {
                continue; // the caller gave up; don't spend compute on it
            }
            if job.deadline.is_some_and(|d| d <= now) {
                let _ = job.reply.send(Err(InferError::DeadlineExceeded));
                continue;
            }
            let waited = now.duration_since(job.enqueued);
            self.metrics.queue_wait.observe(waited.as_secs_f64());
            self.metrics.stats.queued(waited);
            live.push(job);
        }
        if live.is_empty() {
            return;
        }
        let rows: usize = live.iter().map(|j| j.rows).sum();
        let started = Instant::now();
        let input = if live.len() == 1 {
            std::mem::take(&mut live[0].input)
        } else {
            live.iter().flat_map(|j| j.input.iter().copied()).collect()
        };
        let result = self.session.run_owned(input, rows);
        let took = started.elapsed();
        self.metrics.compute.observe(took.as_secs_f64());
        self.metrics.batch_rows.observe(rows as f64);

        let mut outputs = match result {
            Ok(o) => {
                self.metrics.stats.executed(rows, live.len(), took);
                o
            }
            Err(e) => {
                tracing::error!(error = %e, rows, "model run failed");
                for job in live {
                    let _ = job.reply.send(Err(InferError::Engine(e.to_string())));
                }
                return;
            }
        };
        if let Some((fault, cols)) = self.score_fault
            && let Ok([logit, prob]) = outputs.get_disjoint_mut([cols.logit, cols.probability])
        {
            fault.apply(logit, prob);
        }
        // Each output is [rows, width]; hand every job its own row range.
        let widths: Vec<usize> = outputs.iter().map(|o| o.len() / rows.max(1)).collect();
        let mut row = 0;
        for job in live {
            let mine: Vec<Vec<f32>> = outputs
                .iter()
                .zip(&widths)
                .map(|(o, w)| o[row * w..(row + job.rows) * w].to_vec())
                .collect();
            row += job.rows;
            let _ = job.reply.send(Ok(mine));
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    /// A batcher whose queue nobody drains, to observe the bound exactly.
    fn stalled(capacity: usize) -> (Batcher, Receiver<Job>) {
        let metrics = InferenceMetrics::register(&mut Registry::default(), "m", "v1", 8);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let room = Arc::new(Semaphore::new(capacity));
        (Batcher { tx, room, metrics }, rx)
    }

    #[tokio::test]
    async fn a_full_queue_sheds_after_the_admission_wait_and_a_freed_place_goes_to_the_waiter() {
        let (batcher, rx) = stalled(2);
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move {
                    let place = b.admit(Duration::ZERO).await.expect("room for two");
                    b.infer(place, vec![0.0], 1, None).await
                })
            })
            .collect();
        while rx.len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(batcher.metrics.queue_depth.get(), 2);

        // Full: no wait sheds at once; a bounded wait sheds when it ends.
        assert!(batcher.admit(Duration::ZERO).await.is_none());
        let t = Instant::now();
        assert!(batcher.admit(Duration::from_millis(50)).await.is_none());
        assert!(t.elapsed() >= Duration::from_millis(50));

        // A worker taking a job hands its place to the request waiting for one.
        let b = batcher.clone();
        let waiter = tokio::spawn(async move { b.admit(Duration::from_secs(10)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "nothing has left the queue yet");
        let first = taken(rx.recv().unwrap());
        assert!(waiter.await.unwrap(), "the freed place went to the waiter");

        // A job dropped unanswered (a worker died) answers Stopped rather than hanging.
        drop(first);
        drop(rx.recv().unwrap());
        for q in queued {
            assert_eq!(q.await.unwrap(), Err(InferError::Stopped));
        }
        drop(rx);
        let place = batcher
            .admit(Duration::ZERO)
            .await
            .expect("places were given back");
        assert_eq!(
            batcher.infer(place, vec![0.0], 1, None).await,
            Err(InferError::Stopped)
        );
    }

    #[test]
    fn score_fault_keeps_probability_consistent_with_logit() {
        let mut logit = vec![-2.0_f32, 0.0, 3.0];
        let mut prob = vec![0.0_f32; 3];
        ScoreFault {
            shift: 1.5,
            noise: 0.0,
        }
        .apply(&mut logit, &mut prob);
        assert_eq!(logit, vec![-0.5, 1.5, 4.5]);
        for (l, p) in logit.iter().zip(&prob) {
            assert!((p - 1.0 / (1.0 + (-l).exp())).abs() < 1e-6);
        }
        let mut noisy = vec![0.0_f32; 1000];
        let mut p = vec![0.0_f32; 1000];
        ScoreFault {
            shift: 0.0,
            noise: 1.0,
        }
        .apply(&mut noisy, &mut p);
        let mean = noisy.iter().sum::<f32>() / 1000.0;
        let var = noisy.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 1000.0;
        assert!(
            mean.abs() < 0.2 && (0.7..1.3).contains(&var),
            "noise mean {mean} var {var}"
        );
    }
}
