//! Lease-based leader election with fencing: the client-go algorithm on `Api<Lease>`.
//!
//! Owns the Lease: create on 404, take over an expired or released lease with a PUT carrying the
//! observed resourceVersion (a race loses with 409), renew by PUT every retry period, demote when
//! no renew succeeded within the renew deadline, release on shutdown. Expiry is judged by when
//! *this* replica observed the record change, never by the remote `renewTime`. It publishes
//! [`Leadership`] on a watch channel; every side effect elsewhere checks [`Fence::is_current`].
//! It must never write a Lease field it does not manage (strategy, preferredHolder, labels,
//! annotations are kept as read) and never starts or stops the pipeline itself (`app` does).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, api::PostParams};
use rand::Rng as _;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

mod lease_watch;

pub use crate::fence::{Fence, Leadership, LeadershipWatch, LeaseId};
use crate::{
    config::LeaderConfig,
    telemetry::error_chain,
    telemetry::{Liveness, Metrics, StatusBoard},
};
pub use lease_watch::watch_lease;

/// Share of the retry period added as random jitter to a follower's wait.
const FOLLOWER_JITTER: f64 = 0.2;
/// A follower wakes this long after the observed expiry, to not race its own clock.
const EXPIRY_SLACK: Duration = Duration::from_millis(5);
/// Longest a follower waits after repeated API errors, as a multiple of the retry period.
const MAX_ERROR_BACKOFF_FACTOR: u32 = 4;
/// Attempts to release the lease when its resourceVersion moved under us.
const RELEASE_ATTEMPTS: usize = 3;

/// The Lease object a term was won on.
fn lease_id(lease: &Lease) -> LeaseId {
    LeaseId {
        namespace: lease.metadata.namespace.clone().unwrap_or_default(),
        name: lease.metadata.name.clone().unwrap_or_default(),
        uid: lease.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Requests to the elector from the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Release the lease (if held) and stay follower for `hold_off`.
    StepDown {
        /// How long to stay follower.
        hold_off: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// Raise the term `from` above `past`.
    AdvanceEpoch {
        /// The term the request is about (ignored if no longer held).
        from: i64,
        /// The store's term to pass.
        past: i64,
    },
    /// Compete for the lease or not.
    Campaign(bool),
}

/// Asks the elector to step down or to advance its epoch; cheap to clone.
#[derive(Debug, Clone)]
pub struct ElectorHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl ElectorHandle {
    /// A handle whose requests arrive on the returned receiver (what an elector reads; tests).
    #[must_use]
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }

    /// Release the lease (if held) and stay follower for `hold_off`, so another replica leads.
    pub fn step_down(&self, hold_off: Duration, reason: impl Into<String>) {
        let _ = self.tx.send(Request::StepDown {
            hold_off,
            reason: reason.into(),
        });
    }

    /// Compete for the lease (`true`, the default) or not: a replica whose node cannot reach
    /// the store stays out of the election instead of winning a term it cannot serve.
    pub fn campaign(&self, on: bool) {
        let _ = self.tx.send(Request::Campaign(on));
    }

    /// Raise the term `from` (if still held) to an epoch above `past` by a conditional write of
    /// the Lease: the store holds a term `past` from a Lease that was deleted or renamed.
    pub fn advance_epoch(&self, from: i64, past: i64) {
        let _ = self.tx.send(Request::AdvanceEpoch { from, past });
    }
}

/// Errors talking to the Lease API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API call failed.
    #[error("lease API call {op} failed")]
    Api {
        /// `get`, `create` or `replace`.
        op: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The API call did not answer in time.
    #[error("lease API call {op} timed out after {after:?}")]
    Timeout {
        /// `get`, `create` or `replace`.
        op: &'static str,
        /// The time allowed.
        after: Duration,
    },
}

impl Error {
    fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => status
                .details
                .as_ref()
                .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
                .filter(|d| !d.is_zero()),
            _ => None,
        }
    }
}

/// `type Result<T> = Result<T, leader::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What this replica last saw of the Lease, and when it saw it change.
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    holder: String,
    lease_duration: Duration,
    changed_at: Instant,
}

/// The lease as this replica holds it.
#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    epoch: i64,
    last_renew_start: Instant,
    failing_since: Option<Instant>,
    /// Leadership is published from here on: a Lease this replica had to create may have been
    /// deleted under a leader that still acts until its renew deadline.
    acting_from: Instant,
    published: bool,
}

/// Outcome of one acquire attempt, for tests and the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This replica now leads.
    Acquired,
    /// Another replica holds a valid lease, or won the race.
    Held,
    /// The API failed; try again later.
    Failed,
}

/// One replica's elector.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    tx: watch::Sender<Option<Leadership>>,
    metrics: Option<Metrics>,
    board: Option<Arc<StatusBoard>>,
    observed: Option<Observed>,
    held: Option<Held>,
    consecutive_errors: u32,
    wake: Arc<Notify>,
    commands: mpsc::UnboundedReceiver<Request>,
    handle: ElectorHandle,
    hold_off_until: Option<Instant>,
    liveness: Option<Arc<Liveness>>,
    /// The Lease (uid) and epoch this process last held: a Lease naming this identity that does
    /// not match was written by another process using the same identity.
    last_held: Option<(String, i64)>,
    clash: bool,
    campaigning: bool,
}

impl Elector {
    /// An elector for the Lease `config.lease_name` in the namespace of `api`.
    #[must_use]
    pub fn new(api: Api<Lease>, config: LeaderConfig) -> Self {
        let (tx, _) = watch::channel(None);
        let (handle, commands) = ElectorHandle::channel();
        Self {
            api,
            config,
            tx,
            metrics: None,
            board: None,
            observed: None,
            held: None,
            consecutive_errors: 0,
            wake: Arc::new(Notify::new()),
            commands,
            handle,
            hold_off_until: None,
            liveness: None,
            last_held: None,
            clash: false,
            campaigning: true,
        }
    }

    /// Beats `liveness` on every turn of the loop.
    #[must_use]
    pub fn with_liveness(mut self, liveness: Arc<Liveness>) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// A handle to ask this elector to step down or advance its epoch.
    #[must_use]
    pub fn handle(&self) -> ElectorHandle {
        self.handle.clone()
    }

    /// Reports into these metrics and this status board.
    #[must_use]
    pub fn with_telemetry(mut self, metrics: Metrics, board: Arc<StatusBoard>) -> Self {
        self.metrics = Some(metrics);
        self.board = Some(board);
        self.publish_status();
        self
    }

    /// Subscribes to leadership changes.
    #[must_use]
    pub fn subscribe(&self) -> LeadershipWatch {
        self.tx.subscribe()
    }

    /// A handle that wakes a waiting follower at once (for example when a watch saw the Lease
    /// change).
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// This replica's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// True while this replica holds the lease (it may still be past its renew deadline; use
    /// [`Fence::is_current`] before side effects).
    #[must_use]
    pub fn is_leading(&self) -> bool {
        self.held.is_some()
    }

    /// Runs acquire/renew until `stop` is cancelled, then returns the elector so the caller can
    /// [`release`](Self::release) the lease once its side effects have stopped.
    pub async fn run(mut self, stop: CancellationToken) -> Self {
        tracing::info!(
            holder = %self.config.identity,
            lease = %self.config.lease_name,
            "Starting leader election"
        );
        loop {
            if let Some(liveness) = &self.liveness {
                liveness.elector_beat();
            }
            if stop.is_cancelled() {
                return self;
            }
            let now = Instant::now();
            let holding_off =
                !self.campaigning || self.hold_off_until.is_some_and(|until| now < until);
            let next = if self.held.is_some() {
                self.renew_once().await
            } else if holding_off {
                // Turn the loop at least every retry period, so liveness sees it running.
                let turn = now + self.config.retry_period;
                match self.hold_off_until {
                    Some(until) if now < until => until.min(turn),
                    _ => turn,
                }
            } else {
                if self.hold_off_until.take().is_some() {
                    tracing::info!(holder = %self.config.identity, "Back-off over; competing for the lease again");
                    self.publish_status();
                }
                let started = Instant::now();
                let attempt = self.try_acquire_once().await;
                started + self.follower_wait(attempt)
            };
            let wake = Arc::clone(&self.wake);
            tokio::select! {
                () = stop.cancelled() => return self,
                () = tokio::time::sleep_until(next.into()) => {}
                () = wake.notified(), if self.held.is_none() && !holding_off => {}
                Some(command) = self.commands.recv() => self.handle_command(command).await,
            }
        }
    }

    /// One acquire attempt (GET, then POST on 404 or PUT with the observed resourceVersion when
    /// the lease is expired or released).
    pub async fn try_acquire_once(&mut self) -> Attempt {
        let fetched = self
            .call("get", self.api.get_opt(&self.config.lease_name))
            .await;
        let lease = match fetched {
            Ok(Some(lease)) => lease,
            Ok(None) => return self.create().await,
            Err(error) => return self.api_failed(&error),
        };
        let now = Instant::now();
        self.observe(&lease, now);
        let Some(observed) = self.observed.clone() else {
            return Attempt::Failed;
        };
        // A Lease naming this identity that this process did not hold is another process's
        // (the same identity configured twice) until it expires like anyone else's.
        let holder_valid = !observed.holder.is_empty()
            && !self.held_by_this_process(&lease)
            && now < observed.changed_at + observed.lease_duration;
        if holder_valid {
            self.consecutive_errors = 0;
            return Attempt::Held;
        }
        let old_transitions = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        // Every acquisition is a new term, even by the identity that held it last: a pipeline of
        // the earlier term that has not stopped yet must never become current again.
        let transitions = old_transitions.saturating_add(1);
        let mut desired = lease;
        let spec = desired.spec.get_or_insert_with(LeaseSpec::default);
        let stamp = MicroTime(jiff::Timestamp::now());
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration_seconds());
        spec.acquire_time = Some(stamp.clone());
        spec.renew_time = Some(stamp);
        spec.lease_transitions = Some(transitions);
        let start = Instant::now();
        match self.replace(&desired).await {
            Ok(updated) => {
                self.become_leader(updated, start, &observed.holder, start);
                Attempt::Acquired
            }
            Err(error) if error.is_conflict() => {
                tracing::debug!(holder = %self.config.identity, "Lost the race for the lease");
                self.consecutive_errors = 0;
                Attempt::Held
            }
            Err(error) => self.api_failed(&error),
        }
    }

    async fn create(&mut self) -> Attempt {
        let stamp = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.lease_name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.lease_duration_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let start = Instant::now();
        match self
            .call("create", self.api.create(&PostParams::default(), &lease))
            .await
        {
            Ok(created) => {
                // The Lease did not exist: it may have been deleted under a leader that keeps
                // acting until its renew deadline. Act only once that has passed.
                let acting_from = start + self.config.renew_deadline;
                self.become_leader(created, start, "", acting_from);
                Attempt::Acquired
            }
            Err(error) if error.is_conflict() => {
                self.consecutive_errors = 0;
                Attempt::Held
            }
            Err(error) => self.api_failed(&error),
        }
    }

    /// One renew attempt; returns when the next one is due.
    async fn renew_once(&mut self) -> Instant {
        let start = Instant::now();
        let Some(held) = self.held.as_ref() else {
            return start;
        };
        let deadline = held.last_renew_start + self.config.renew_deadline;
        if start >= deadline {
            self.demote("no successful renew within the renew deadline");
            return start;
        }
        let mut desired = held.lease.clone();
        let spec = desired.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration_seconds());
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        let budget = self.config.retry_period.min(deadline - start);
        let result = match tokio::time::timeout(
            budget,
            self.api
                .replace(&self.config.lease_name, &PostParams::default(), &desired),
        )
        .await
        {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(source)) => Err(Error::Api {
                op: "replace",
                source,
            }),
            Err(_) => Err(Error::Timeout {
                op: "replace",
                after: budget,
            }),
        };
        match result {
            Ok(lease) => {
                if let Some(metrics) = &self.metrics {
                    metrics
                        .lease_renew_duration
                        .observe(start.elapsed().as_secs_f64());
                }
                self.observe(&lease, Instant::now());
                if let Some(held) = self.held.as_mut() {
                    if let Some(since) = held.failing_since.take() {
                        tracing::info!(
                            holder = %self.config.identity,
                            epoch = held.epoch,
                            failing_for = ?since.elapsed(),
                            "Lease renewals succeed again"
                        );
                    }
                    held.lease = lease;
                    held.last_renew_start = start;
                }
                self.publish_leadership(start);
                self.publish_status();
                let next = start + self.config.retry_period;
                match &self.held {
                    // Publish as soon as the wait for a possible earlier leader is over.
                    Some(held) if !held.published => next.min(held.acting_from),
                    _ => next,
                }
            }
            Err(error) => {
                if let Some(metrics) = &self.metrics {
                    metrics.lease_renew_failures.inc();
                }
                if error.is_conflict() {
                    // Someone else wrote the Lease: find out whether it is still ours.
                    match self
                        .call("get", self.api.get_opt(&self.config.lease_name))
                        .await
                    {
                        Ok(Some(current)) => {
                            self.observe(&current, Instant::now());
                            let holder = holder_of(&current);
                            let same_term = self.held.as_ref().is_some_and(|held| {
                                holder == self.config.identity
                                    && transitions_of(&current) == held.epoch
                                    && current.metadata.uid == held.lease.metadata.uid
                            });
                            if same_term {
                                if let Some(held) = self.held.as_mut() {
                                    held.lease = current;
                                }
                                return Instant::now();
                            }
                            if holder == self.config.identity {
                                self.report_clash();
                                self.demote("the lease was taken by another process using this replica's identity");
                            } else {
                                self.demote(&format!("the lease is now held by `{holder}`"));
                            }
                        }
                        Ok(None) => self.demote("the lease was deleted"),
                        Err(_) => self.note_renew_failure(&error),
                    }
                } else if error.status_code() == Some(404) {
                    self.demote("the lease was deleted");
                } else {
                    self.note_renew_failure(&error);
                }
                let now = Instant::now();
                match &self.held {
                    Some(held) => {
                        let deadline = held.last_renew_start + self.config.renew_deadline;
                        (start + self.config.retry_period).min(deadline).max(now)
                    }
                    None => now,
                }
            }
        }
    }

    fn note_renew_failure(&mut self, error: &Error) {
        if let Some(held) = self.held.as_mut()
            && held.failing_since.is_none()
        {
            held.failing_since = Some(Instant::now());
            tracing::warn!(
                holder = %self.config.identity,
                epoch = held.epoch,
                error = %error_chain(error),
                "Lease renewal failed; retrying until the renew deadline"
            );
        }
    }

    /// Releases the lease if this replica holds it: empty holder and `leaseDurationSeconds: 1`
    /// (client-go's `ReleaseOnCancel`), so a follower takes over within one retry period.
    /// Publishes "not leading" first. Returns whether a release was written.
    pub async fn release(&mut self) -> bool {
        let Some(held) = self.held.take() else {
            return false;
        };
        self.tx.send_replace(None);
        if let Some(metrics) = &self.metrics {
            metrics.leader.set(0);
        }
        let mut lease = held.lease;
        for _ in 0..RELEASE_ATTEMPTS {
            if holder_of(&lease) != self.config.identity {
                break;
            }
            let mut desired = lease.clone();
            let spec = desired.spec.get_or_insert_with(LeaseSpec::default);
            let stamp = MicroTime(jiff::Timestamp::now());
            spec.holder_identity = Some(String::new());
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(stamp.clone());
            spec.renew_time = Some(stamp);
            match self.replace(&desired).await {
                Ok(_) => {
                    tracing::info!(holder = %self.config.identity, epoch = held.epoch, "Released the lease");
                    self.publish_status();
                    return true;
                }
                Err(error) if error.is_conflict() => {
                    match self
                        .call("get", self.api.get_opt(&self.config.lease_name))
                        .await
                    {
                        Ok(Some(current)) => lease = current,
                        _ => break,
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        holder = %self.config.identity,
                        error = %error_chain(&error),
                        "Could not release the lease; followers take over when it expires"
                    );
                    break;
                }
            }
        }
        self.publish_status();
        false
    }

    fn become_leader(
        &mut self,
        lease: Lease,
        start: Instant,
        previous: &str,
        acting_from: Instant,
    ) {
        self.consecutive_errors = 0;
        let epoch = transitions_of(&lease);
        self.last_held = Some((lease.metadata.uid.clone().unwrap_or_default(), epoch));
        self.observe(&lease, Instant::now());
        self.held = Some(Held {
            lease,
            epoch,
            last_renew_start: start,
            failing_since: None,
            acting_from,
            published: false,
        });
        if let Some(metrics) = &self.metrics {
            metrics.leader_transitions.inc();
        }
        tracing::info!(
            holder = %self.config.identity,
            epoch,
            previous_holder = previous,
            "Became leader"
        );
        if acting_from > Instant::now() {
            tracing::info!(
                holder = %self.config.identity,
                epoch,
                wait = ?acting_from.saturating_duration_since(Instant::now()),
                "Created the Lease; waiting out the renew deadline of a leader it may have been deleted under"
            );
        }
        self.publish_leadership(start);
        self.publish_status();
    }

    /// Publishes the held term to the pipeline once it may act, with its validity from the renew
    /// that started at `renewed_at`.
    fn publish_leadership(&mut self, renewed_at: Instant) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        if Instant::now() < held.acting_from {
            return;
        }
        if !held.published {
            held.published = true;
            // Not ready before anyone can see this replica lead: the pipeline marks itself
            // ready once it has listed or resumed.
            if let Some(board) = &self.board {
                board.set_not_ready(crate::telemetry::PIPELINE_READY, "leader pipeline starting");
            }
            if let Some(metrics) = &self.metrics {
                metrics.leader.set(1);
            }
        }
        self.tx.send_replace(Some(Leadership {
            holder: self.config.identity.clone(),
            epoch: held.epoch,
            valid_until: renewed_at + self.config.renew_deadline,
            lease: lease_id(&held.lease),
        }));
    }

    fn held_by_this_process(&self, lease: &Lease) -> bool {
        holder_of(lease) == self.config.identity
            && self.last_held.as_ref().is_some_and(|(uid, epoch)| {
                lease.metadata.uid.as_deref().unwrap_or_default() == uid
                    && transitions_of(lease) == *epoch
            })
    }

    fn report_clash(&mut self) {
        if !self.clash {
            self.clash = true;
            if let Some(metrics) = &self.metrics {
                metrics.identity_clash.set(1);
            }
            tracing::error!(
                identity = %self.config.identity,
                lease = %self.config.lease_name,
                "Another process holds the lease under this replica's identity: give every replica \
                 its own (leave leader.identity unset, or set it to ${{POD_NAME}}); this replica \
                 will not take the lease while the other one renews it"
            );
            self.publish_status();
        }
    }

    async fn handle_command(&mut self, command: Request) {
        match command {
            Request::StepDown { hold_off, reason } => {
                self.hold_off_until = Some(Instant::now() + hold_off);
                if self.held.is_some() {
                    if let Some(metrics) = &self.metrics {
                        metrics.leader_stepdowns.inc();
                    }
                    tracing::warn!(
                        holder = %self.config.identity,
                        reason,
                        ?hold_off,
                        "Stepping down: releasing the lease and staying follower so another replica leads"
                    );
                    self.release().await;
                }
                self.publish_status();
            }
            Request::AdvanceEpoch { from, past } => self.advance_epoch(from, past).await,
            Request::Campaign(on) => {
                if on != self.campaigning {
                    self.campaigning = on;
                    self.publish_status();
                }
            }
        }
    }

    /// Writes `leaseTransitions` above `past` if this replica still holds the term `from`. The
    /// write carries the held resourceVersion, so it fails if anyone else wrote the Lease since:
    /// only the current holder can raise the epoch.
    async fn advance_epoch(&mut self, from: i64, past: i64) {
        let Some(held) = self.held.as_ref() else {
            return;
        };
        if held.epoch != from || from > past {
            return;
        }
        let Ok(target) = i32::try_from(past.saturating_add(1)) else {
            tracing::error!(
                past,
                "The store's term is beyond what a Lease can count; cannot advance"
            );
            return;
        };
        let mut desired = held.lease.clone();
        let spec = desired.spec.get_or_insert_with(LeaseSpec::default);
        spec.lease_transitions = Some(target);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        let start = Instant::now();
        match self.replace(&desired).await {
            Ok(updated) => {
                self.observe(&updated, Instant::now());
                self.last_held = Some((
                    updated.metadata.uid.clone().unwrap_or_default(),
                    i64::from(target),
                ));
                if let Some(held) = self.held.as_mut() {
                    held.lease = updated;
                    held.epoch = i64::from(target);
                    held.last_renew_start = start;
                }
                tracing::warn!(
                    holder = %self.config.identity,
                    from,
                    to = target,
                    "Advanced the lease epoch past the store's: the Lease was recreated or renamed since the store's last term"
                );
                self.publish_leadership(start);
                self.publish_status();
            }
            Err(error) => {
                tracing::warn!(
                    holder = %self.config.identity,
                    error = %error_chain(&error),
                    "Could not advance the lease epoch; the next renewal tells whether this replica still leads"
                );
            }
        }
    }

    fn demote(&mut self, reason: &str) {
        if let Some(held) = self.held.take() {
            self.tx.send_replace(None);
            if let Some(metrics) = &self.metrics {
                metrics.leader.set(0);
            }
            tracing::warn!(
                holder = %self.config.identity,
                epoch = held.epoch,
                reason,
                "Lost leadership"
            );
            self.publish_status();
        }
    }

    /// Records the lease as seen now; the change time moves only when the record changed.
    fn observe(&mut self, lease: &Lease, now: Instant) {
        let resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
        let holder = holder_of(lease);
        let lease_duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(self.config.lease_duration, Duration::from_secs);
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != resource_version);
        if !changed {
            return;
        }
        let holder_changed = self.observed.as_ref().is_none_or(|o| o.holder != holder);
        if holder_changed && self.held.is_none() && holder != self.config.identity {
            tracing::info!(holder = %holder, "Observed lease holder");
        }
        if self.held.is_none() && holder == self.config.identity {
            // Renewed under this identity, but not by this process.
            if !holder_changed && !self.held_by_this_process(lease) {
                self.report_clash();
            }
        } else if holder != self.config.identity && self.clash {
            self.clash = false;
            if let Some(metrics) = &self.metrics {
                metrics.identity_clash.set(0);
            }
            tracing::info!(identity = %self.config.identity, holder = %holder, "The lease is no longer held under this replica's identity");
        }
        self.observed = Some(Observed {
            resource_version,
            holder,
            lease_duration,
            changed_at: now,
        });
        self.publish_status();
    }

    /// How long a follower waits after an attempt: the jittered retry period, but no later than
    /// just after the observed expiry, and longer after repeated API errors.
    fn follower_wait(&self, attempt: Attempt) -> Duration {
        let retry = self.config.retry_period;
        let jitter = retry.mul_f64(rand::rng().random_range(0.0..FOLLOWER_JITTER));
        match attempt {
            Attempt::Acquired => Duration::ZERO,
            Attempt::Failed => {
                let factor = 2u32
                    .saturating_pow(self.consecutive_errors.saturating_sub(1))
                    .min(MAX_ERROR_BACKOFF_FACTOR);
                retry * factor + jitter
            }
            Attempt::Held => {
                let wait = retry + jitter;
                match &self.observed {
                    Some(o) if !o.holder.is_empty() => {
                        let expiry = o.changed_at + o.lease_duration + EXPIRY_SLACK;
                        wait.min(expiry.saturating_duration_since(Instant::now()))
                    }
                    _ => wait,
                }
            }
        }
    }

    fn api_failed(&mut self, error: &Error) -> Attempt {
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
        if self.consecutive_errors == 1 {
            tracing::warn!(
                holder = %self.config.identity,
                error = %error_chain(error),
                "Lease API call failed; retrying with backoff"
            );
        }
        if let Some(after) = error.retry_after() {
            tracing::debug!(retry_after = ?after, "API server asked to retry later");
        }
        Attempt::Failed
    }

    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        let after = self.config.retry_period.max(Duration::from_secs(1));
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(Error::Api { op, source }),
            Err(_) => Err(Error::Timeout { op, after }),
        }
    }

    /// Writes `desired` (its resourceVersion makes the write conditional), bounded like every
    /// Lease call.
    async fn replace(&self, desired: &Lease) -> Result<Lease> {
        self.call(
            "replace",
            self.api
                .replace(&self.config.lease_name, &PostParams::default(), desired),
        )
        .await
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn publish_status(&self) {
        let Some(board) = &self.board else {
            return;
        };
        let (role, epoch, since_renew) = match &self.held {
            Some(held) if !held.published => (
                "leader-waiting",
                Some(held.epoch),
                Some(held.last_renew_start.elapsed().as_secs_f64()),
            ),
            Some(held) => (
                "leader",
                Some(held.epoch),
                Some(held.last_renew_start.elapsed().as_secs_f64()),
            ),
            None => ("follower", None, None),
        };
        let hold_off = self
            .hold_off_until
            .map(|until| {
                until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            })
            .filter(|s| *s > 0.0);
        board.publish(
            "leader",
            serde_json::json!({
                "role": role,
                "identity": self.config.identity,
                "lease": self.config.lease_name,
                "holder": self.observed.as_ref().map(|o| o.holder.clone()),
                "epoch": epoch,
                "seconds_since_last_renew": since_renew,
                "stepped_down_for_seconds": hold_off,
                "identity_clash": self.clash,
                "campaigning": self.campaigning,
            }),
        );
    }
}

fn transitions_of(lease: &Lease) -> i64 {
    i64::from(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0),
    )
}

fn holder_of(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_is_current_only_within_its_term_and_validity() {
        let (tx, rx) = watch::channel(None);
        let fence = Fence::new(rx, 3);
        assert!(!fence.is_current());
        tx.send_replace(Some(Leadership {
            holder: "a".into(),
            epoch: 3,
            valid_until: Instant::now() + Duration::from_secs(60),
            lease: LeaseId::default(),
        }));
        assert!(fence.is_current());
        tx.send_replace(Some(Leadership {
            holder: "a".into(),
            epoch: 4,
            valid_until: Instant::now() + Duration::from_secs(60),
            lease: LeaseId::default(),
        }));
        assert!(!fence.is_current(), "a new term invalidates the old fence");
        tx.send_replace(Some(Leadership {
            holder: "a".into(),
            epoch: 3,
            valid_until: Instant::now()
                .checked_sub(Duration::from_millis(1))
                .unwrap(),
            lease: LeaseId::default(),
        }));
        assert!(!fence.is_current(), "an expired term is not current");
        tx.send_replace(None);
        assert!(!fence.is_current());
    }
}
