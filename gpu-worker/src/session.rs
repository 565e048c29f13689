//! One broker session of a worker: consume the assigned queues, follow
//! assignment changes, and run held jobs up to the worker's concurrency, in the
//! order placement wants (see `placement::choose`). While every slot is
//! busy, the job the next free slot would run is claimed ahead
//! (`session::ahead`), so that it waits only for the slot.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuq_common::record::Assignment;
use tokio::sync::mpsc::{self, error::SendError};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::BrokerError;
use crate::consumers::{Consumers, Held, QueueKey};
use crate::fair::{lock, Candidate, FairScheduler, Pick, RunTimes};
use crate::job::{handle_delivery, Handled, JobContext, SlotSource};
use crate::placement::{choose, desired_queues, Affinity, Choice};
use crate::pull::PullMode;
use crate::sub_queues::{queue_keys, KnownSubQueues};

mod ahead;
use ahead::{ahead_pick, Ahead};

/// Why a worker stops of its own accord (the session sees both causes first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The shutdown token was cancelled.
    Shutdown,
    /// A model thread is stuck past its job's timeout; restart the process.
    RestartRequested,
}

/// Why one broker session ended.
pub enum SessionEnd {
    Stop(ExitReason),
    /// The connection or a consumer failed; reconnect.
    Lost(String),
}

/// What a broker session shares with the worker's life.
pub struct Session<'a> {
    pub served: &'a [String],
    pub permits: &'a Arc<Semaphore>,
    pub tracker: &'a TaskTracker,
    pub shutdown: &'a CancellationToken,
    pub restart: &'a CancellationToken,
    /// Orders held jobs across tenants; outlives sessions (the shares
    /// continue across a reconnect).
    pub fair: &'a Arc<Mutex<FairScheduler>>,
}

/// How long a free worker waits for a job of a loaded model before starting
/// one that needs a load: a few broker round trips, against loads of seconds.
const AFFINITY_GRACE: Duration = Duration::from_millis(50);

/// How soon a worker whose held jobs all belong to tenants at their
/// `max_running` looks again.
const LIMITED_RETRY: Duration = Duration::from_millis(100);

/// One broker session: consume the assigned queues, following assignment
/// changes, and run held jobs (loaded models first) until stop or failure;
/// models with several queues are fetched from while busy (`crate::pull`).
// Longer than 80 lines: one select loop whose arms share the session's state; split, each part would take all of it.
pub async fn consume(
    context: Arc<JobContext>,
    session: Session<'_>,
    assignment: &mut watch::Receiver<Option<Assignment>>,
    known: &mut watch::Receiver<KnownSubQueues>,
) -> SessionEnd {
    let config = Arc::clone(&context.config);
    let budget = context.pool.budget_mib();
    if let Err(error) = context
        .broker
        .set_prefetch(config.worker.effective_prefetch())
        .await
    {
        return SessionEnd::Lost(error.to_string());
    }
    let mut consumers = Consumers::new(
        Arc::clone(&context.broker),
        &context.worker_id,
        config.queues.delivery_limit,
        session.tracker.clone(),
    );
    let mut pull = PullMode::new();
    let mut queues = desired_queues(assignment.borrow_and_update().as_ref(), session.served);
    let mut serve = queue_keys(&queues.models, &known.borrow_and_update(), budget);
    pull.set_served(&serve);
    if let Err(error) = consumers.apply(&pull.consumed(&serve), &serve).await {
        return SessionEnd::Lost(error.to_string());
    }
    let publish_queues = |consumers: &Consumers| {
        context.stats.set_queues(
            consumers.serving().into_iter().collect(),
            consumers.waiting(),
        )
    };
    publish_queues(&consumers);
    context.stats.set_ready();
    tracing::info!(models = ?queues.models, concurrency = config.worker.concurrency, "consuming");
    let affinity = config.placement.enabled.then(|| Affinity {
        starve_after: Duration::from_millis(config.placement.max_queue_wait_ms),
        grace: AFFINITY_GRACE,
    });
    let mut permit: Option<OwnedSemaphorePermit> = None;
    // A job claimed ahead, until it has its slot (the session takes none meanwhile).
    let mut ahead: Option<oneshot::Receiver<()>> = None;
    let mut free_since: Option<Instant> = None;
    let mut assignment_open = true;
    let mut known_open = true;
    // Jobs handed back unclaimed (their tenant at max_running), to hold again.
    let (given_back, mut returned) = mpsc::unbounded_channel::<Held>();
    let start = |job: Held, slot: SlotSource| {
        start_job(
            &context,
            session.fair,
            session.tracker,
            job,
            slot,
            &given_back,
        )
    };
    loop {
        let mut grace_until: Option<Instant> = None;
        let mut started = false;
        // A stuck model thread asked for a restart: start nothing more.
        if session.restart.is_cancelled() {
            return SessionEnd::Stop(ExitReason::RestartRequested);
        }
        if permit.is_some() && !consumers.held.is_empty() {
            let now = Instant::now();
            let since = *free_since.get_or_insert(now);
            let choice = match affinity {
                None => Choice::Run(0),
                Some(_) => {
                    let held: Vec<(&str, Instant)> = consumers
                        .held
                        .iter()
                        .map(|h| (h.model.as_str(), h.received))
                        .collect();
                    let loaded = loaded_models(&context);
                    choose(&held, &loaded, &queues, affinity, since, now)
                }
            };
            // The queue's next job is on its way only while it is consumed.
            let lookahead = pull.is_empty() || pull.listening();
            match choice {
                Choice::Run(index) => {
                    let same_model = affinity.is_some();
                    match fair_pick(
                        &consumers.held,
                        index,
                        same_model,
                        session.fair,
                        now,
                        lookahead,
                    ) {
                        Pick::Run(index) => {
                            let job = consumers.held.remove(index).expect("chosen job is held");
                            start(job, SlotSource::Held(permit.take().expect("free slot")));
                            started = true;
                        }
                        // The queue whose job just ended comes first: its next is on its way.
                        Pick::Wait(until) => grace_until = Some(until),
                        // Every such job's tenant is at its max_running: look again soon.
                        Pick::Blocked => grace_until = Some(now + LIMITED_RETRY),
                    }
                }
                Choice::Wait(until) => grace_until = Some(until),
            }
        }
        if permit.is_some() && !started && pull.due() {
            let loaded = loaded_models(&context);
            let fetched = pull
                .fetch(&context.broker, session.fair, &loaded, &queues, affinity)
                .await;
            match fetched {
                Ok(Some(job)) => {
                    start(job, SlotSource::Held(permit.take().expect("free slot")));
                    started = true;
                }
                // Every queue is empty: consume them until the slots fill.
                Ok(None) => {
                    pull.listen();
                    if let Err(error) = consumers.apply(&pull.consumed(&serve), &serve).await {
                        return SessionEnd::Lost(error.to_string());
                    }
                }
                Err(error) => return SessionEnd::Lost(error.to_string()),
            }
        }
        if started {
            free_since = None;
            // Full: hold no more jobs of models that can be fetched.
            if session.permits.available_permits() == 0 && pull.pause() {
                if let Err(error) = consumers.apply(&pull.consumed(&serve), &serve).await {
                    return SessionEnd::Lost(error.to_string());
                }
            }
            publish_queues(&consumers);
            continue;
        }
        // Every slot busy: claim the job the next free one would run now.
        if permit.is_none() && ahead.is_none() && session.permits.available_permits() == 0 {
            let now = Instant::now();
            let held = &consumers.held;
            let loaded = || loaded_models(&context);
            match ahead_pick(held, loaded, &queues, affinity, session.fair, now) {
                Ahead::Claim(index) => {
                    let job = consumers.held.remove(index).expect("picked job is held");
                    let (waiting, done) = oneshot::channel();
                    let permits = Arc::clone(session.permits);
                    start(job, SlotSource::Ahead { permits, waiting });
                    ahead = Some(done);
                    publish_queues(&consumers);
                    continue;
                }
                Ahead::At(at) => grace_until = Some(grace_until.map_or(at, |g| g.min(at))),
                Ahead::No => {}
            }
        }
        let wants_permit =
            permit.is_none() && ahead.is_none() && (!consumers.held.is_empty() || pull.due());
        tokio::select! {
            _ = session.shutdown.cancelled() => return SessionEnd::Stop(ExitReason::Shutdown),
            _ = session.restart.cancelled() => return SessionEnd::Stop(ExitReason::RestartRequested),
            changed = assignment.changed(), if assignment_open => {
                if changed.is_err() {
                    assignment_open = false;
                    continue;
                }
                queues = desired_queues(assignment.borrow_and_update().as_ref(), session.served);
                serve = queue_keys(&queues.models, &known.borrow(), budget);
                if &serve != consumers.serving_queues() {
                    tracing::info!(models = ?queues.models, main = ?queues.main, "consuming (placement)");
                }
                if let Err(error) = follow(&mut consumers, &mut pull, &serve).await {
                    return SessionEnd::Lost(error.to_string());
                }
                publish_queues(&consumers);
            }
            changed = known.changed(), if known_open => {
                if changed.is_err() {
                    known_open = false;
                    continue;
                }
                serve = queue_keys(&queues.models, &known.borrow_and_update(), budget);
                if let Err(error) = follow(&mut consumers, &mut pull, &serve).await {
                    return SessionEnd::Lost(error.to_string());
                }
                publish_queues(&consumers);
            }
            Some(held) = returned.recv() => {
                consumers.held.push_front(held);
                publish_queues(&consumers);
            }
            received = consumers.receive() => {
                if let Err(error) = received {
                    return SessionEnd::Lost(error.to_string());
                }
                publish_queues(&consumers);
            }
            _ = async { ahead.as_mut().expect("guarded").await }, if ahead.is_some() => ahead = None,
            acquired = Arc::clone(session.permits).acquire_owned(), if wants_permit => {
                permit = Some(acquired.expect("semaphore never closed"));
            }
            _ = tokio::time::sleep_until(grace_until.unwrap_or_else(Instant::now)), if grace_until.is_some() => {}
        }
    }
}

/// Serves `serve` from now on: which models are in pull mode, and which
/// queues are consumed, follow it.
async fn follow(
    consumers: &mut Consumers,
    pull: &mut PullMode,
    serve: &BTreeSet<QueueKey>,
) -> Result<(), BrokerError> {
    pull.set_served(serve);
    let consume = pull.consumed(serve);
    if serve != consumers.serving_queues() || consume != consumers.consuming_queues() {
        consumers.apply(&consume, serve).await?;
    }
    Ok(())
}

/// Models resident in the pool now.
fn loaded_models(context: &JobContext) -> BTreeSet<String> {
    let residents = context.pool.snapshot().0;
    residents.into_iter().map(|r| r.model).collect()
}

/// Runs `job` in a task of its own on the slot `slot` gives it, charged
/// to its tenant; a job its tenant's `max_running` refused comes back
/// through `given_back`.
fn start_job(
    context: &Arc<JobContext>,
    scheduler: &Arc<Mutex<FairScheduler>>,
    tracker: &TaskTracker,
    job: Held,
    slot: SlotSource,
    given_back: &mpsc::UnboundedSender<Held>,
) {
    let context = Arc::clone(context);
    let scheduler = Arc::clone(scheduler);
    let charge = lock(&scheduler).started(&job.sub.tenant, job.sub.level, &job.model);
    let given_back = given_back.clone();
    tracker.spawn(async move {
        let began = Instant::now();
        let (model, sub) = (job.model.clone(), job.sub);
        // The slot is freed when the run ends, before the outcome is recorded.
        let run_times = RunTimes::new(&scheduler, &charge);
        match handle_delivery(context, job.model, job.delivery, slot, run_times).await {
            Handled::Ended { ran_from } => {
                // Charged from its slot: a job claimed ahead waited first.
                let ran = ran_from.unwrap_or(began).elapsed();
                lock(&scheduler).finished(charge, ran, Instant::now())
            }
            Handled::GivenBack(delivery) => {
                lock(&scheduler).given_back(charge);
                let held = Held {
                    model,
                    sub,
                    delivery: *delivery,
                    received: job.received,
                };
                if let Err(SendError(held)) = given_back.send(held) {
                    held.delivery.requeue().await; // the session has ended
                }
            }
        }
    });
}

/// The held job a free slot runs: among the jobs of the model placement
/// chose (`chosen`'s; any model without placement), the one fair share
/// picks (`crate::fair`), or a short wait, or none (each of their tenants
/// is at its `max_running`).
fn fair_pick(
    held: &std::collections::VecDeque<Held>,
    chosen: usize,
    same_model_only: bool,
    scheduler: &Mutex<FairScheduler>,
    now: Instant,
    lookahead: bool,
) -> Pick {
    let model = held[chosen].model.as_str();
    let (indices, candidates): (Vec<usize>, Vec<Candidate<'_>>) = held
        .iter()
        .enumerate()
        .filter(|(_, h)| !same_model_only || h.model == model)
        .map(|(index, h)| {
            let candidate = Candidate {
                tenant: &h.sub.tenant,
                level: h.sub.level,
                model: &h.model,
            };
            (index, candidate)
        })
        .unzip();
    match lock(scheduler).pick(&candidates, now, lookahead) {
        Pick::Run(pick) => Pick::Run(indices[pick]),
        other => other,
    }
}
