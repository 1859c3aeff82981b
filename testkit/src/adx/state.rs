//! The ADX emulator's state: ingested rows and extent tags per table, issued AAD tokens and
//! authorization contexts, accepted credentials, fault knobs and counters.
//!
//! Owns every mutable thing the server and the ingestion worker share, behind short-held locks.
//! It must never store or expose a client secret beyond comparing it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::kql::{CountQuery, Expr, Schema, equals_text};

/// Messages' raw text kept for conformance checks.
const KEPT_MESSAGES: usize = 10_000;

/// Credentials the emulated AAD accepts.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Management and streaming requests need a current emulator-issued bearer token.
    pub require_token: bool,
    /// `(client_id, client_secret)` pairs for the client-secret grant.
    pub client_secrets: Vec<(String, String)>,
    /// `(client_id, assertion)` pairs for the client-assertion grant; empty accepts any
    /// non-empty assertion from any client.
    pub assertions: Vec<(String, String)>,
}

/// Fault knobs (`POST /emulator/faults`, or the methods on [`AdxState`]). Count-based faults
/// apply to management and streaming requests in arrival order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRequest {
    /// Answer the next `count` requests 429 with `Retry-After: retry_after_secs`.
    pub throttle: Option<Throttle>,
    /// Answer the next `count` requests with `status` (500 or 503).
    pub errors: Option<ErrorBurst>,
    /// Reject the next `count` streaming requests with a permanent 400 (`@permanent: true`).
    pub permanent: Option<u32>,
    /// Store the rows of the next `count` streaming requests, then answer 504, as a gateway
    /// that gave up while the engine committed: the client cannot tell that they landed.
    pub lose_answers: Option<u32>,
    /// Hold the answer of every streaming request this long after its rows are stored (0: no
    /// delay), so that a client can die or stop between the commit and the answer.
    pub answer_delay_ms: Option<u64>,
    /// Added to every management, streaming and token request.
    pub latency_ms: Option<u64>,
    /// Answer every management and streaming request 503 for this long from now.
    pub outage_secs: Option<f64>,
    /// `expires_in` of tokens issued from now on.
    pub token_lifetime_secs: Option<u64>,
    /// Invalidate every token issued so far (the next request with one gets 401).
    pub expire_tokens: bool,
    /// Lifetime of the SAS handed out from now on.
    pub sas_lifetime_secs: Option<u64>,
    /// Pause (true) or resume (false) the ingestion worker.
    pub pause_worker: Option<bool>,
    /// Tables whose streaming ingestion policy is off from now on (replaces the list; empty:
    /// on for every table). Streaming into one answers a permanent 400
    /// `BadRequest_StreamingIngestionPolicyNotEnabled`.
    pub streaming_policy_off: Option<Vec<String>>,
    /// The largest gzip body a streaming request may carry (default 4 MiB); a larger one is
    /// refused with a permanent `Stream_InputStreamTooLarge`.
    pub streaming_limit_bytes: Option<u64>,
    /// The status of that refusal: 413 (default) or 400.
    pub too_large_status: Option<u16>,
    /// Answer every query 403, as ADX answers a principal that holds Database Ingestor but not
    /// Database Viewer (true), or answer queries again (false).
    pub query_forbidden: Option<bool>,
    /// Answer every `.show` command on a table or database 403, as ADX answers a principal
    /// without a role that may see the table's metadata (true), or answer them again (false).
    pub show_forbidden: Option<bool>,
    /// Queued ingestion takes effect between `[min, max]` milliseconds after the message was
    /// first seen (the DM's batching; real ADX: 30 s to 5 min). `[0, 0]`: at once.
    pub ingest_delay_ms: Option<[u64; 2]>,
    /// Queued ingestions into these tables fail permanently with a mapping error
    /// (`BadRequest_MappingReferenceWasNotFound`) from now on (replaces the list; empty: none).
    pub mapping_broken: Option<Vec<String>>,
}

/// A burst of 429s.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Throttle {
    /// How many requests.
    pub count: u32,
    /// The `Retry-After` seconds.
    pub retry_after_secs: u64,
}

/// A burst of 5xx answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ErrorBurst {
    /// How many requests.
    pub count: u32,
    /// The status.
    pub status: u16,
}

/// What a request should suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with this `Retry-After`.
    Throttle(u64),
    /// This status.
    Status(u16),
    /// A permanent 400.
    Permanent,
}

#[derive(Debug)]
struct Faults {
    throttle: Option<Throttle>,
    errors: Option<ErrorBurst>,
    permanent: u32,
    lose_answers: u32,
    answer_delay: Duration,
    latency: Duration,
    outage_until: Option<Instant>,
    token_lifetime: Duration,
    sas_lifetime: Duration,
    streaming_off: HashSet<String>,
    streaming_limit: usize,
    too_large_status: u16,
    query_forbidden: bool,
    show_forbidden: bool,
    ingest_delay: (Duration, Duration),
    mapping_broken: HashSet<String>,
}

/// Counters, as `GET /emulator/stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdxStats {
    /// Management commands answered 200.
    pub mgmt_requests: u64,
    /// Streaming requests that stored rows.
    pub streaming_requests: u64,
    /// Rows stored by streaming.
    pub streaming_rows: u64,
    /// Queue messages ingested.
    pub queued_ingestions: u64,
    /// Rows stored by queued ingestion.
    pub queued_rows: u64,
    /// Queued ingestions skipped because an `ingestIfNotExists` tag already existed.
    pub skipped_existing: u64,
    /// Queued ingestions that failed (a message went to the failed-ingestions queue).
    pub failed_ingestions: u64,
    /// Queue messages whose JSON broke the §1.5 contract.
    pub malformed_messages: u64,
    /// Queue messages whose `RawDataSize` differed from the uncompressed blob size.
    pub raw_size_mismatches: u64,
    /// JSON lines that did not parse (format `json` skips them).
    pub bad_lines: u64,
    /// Tokens issued (all grants).
    pub tokens_issued: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests answered by a fault knob (429, 5xx, permanent 400, outage, lost answer).
    pub faults_injected: u64,
    /// Queries answered 200 (`POST /v1/rest/query`).
    pub queries: u64,
    /// Engine `.show … ingestion mappings` commands answered 200.
    pub show_commands: u64,
    /// Ingestion status rows the worker wrote (`IngestionStatusInTable`).
    pub status_rows_written: u64,
    /// Of those, rows the client had not inserted (`Pending`) before enqueueing.
    pub status_rows_missing: u64,
}

/// One management or streaming request, as the emulator answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the answer was sent.
    pub at: Instant,
    /// A streaming request (else management).
    pub streaming: bool,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct TableData {
    rows: Vec<Map<String, Value>>,
    tags: HashSet<String>,
}

/// Everything the server and worker share.
#[derive(Debug)]
pub struct AdxState {
    /// Tables and mappings (from the KQL manifest).
    pub schema: Schema,
    tables: Mutex<HashMap<(String, String), TableData>>,
    tokens: Mutex<HashMap<String, Instant>>,
    contexts: Mutex<HashSet<String>>,
    auth: Mutex<AuthSettings>,
    faults: Mutex<Faults>,
    stats: Mutex<AdxStats>,
    messages: Mutex<Vec<String>>,
    requests: Mutex<Vec<RequestRecord>>,
    handed_out: Mutex<Vec<String>>,
    paused: std::sync::atomic::AtomicBool,
    held_answers: std::sync::atomic::AtomicUsize,
}

/// A streaming answer being held after its rows were stored; counted while it lives.
pub(super) struct HeldAnswer<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for HeldAnswer<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random_hex(bytes: usize) -> String {
    use std::fmt::Write as _;
    (0..bytes).fold(String::with_capacity(bytes * 2), |mut out, _| {
        let _ = write!(out, "{:02x}", rand::random::<u8>());
        out
    })
}

impl AdxState {
    pub(super) fn new(schema: Schema, auth: AuthSettings) -> Self {
        Self {
            schema,
            tables: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            contexts: Mutex::new(HashSet::new()),
            auth: Mutex::new(auth),
            faults: Mutex::new(Faults {
                throttle: None,
                errors: None,
                permanent: 0,
                lose_answers: 0,
                answer_delay: Duration::ZERO,
                latency: Duration::ZERO,
                outage_until: None,
                token_lifetime: Duration::from_secs(3599),
                sas_lifetime: Duration::from_secs(24 * 3600),
                streaming_off: HashSet::new(),
                streaming_limit: super::server::STREAMING_LIMIT,
                too_large_status: 413,
                query_forbidden: false,
                show_forbidden: false,
                ingest_delay: (Duration::ZERO, Duration::ZERO),
                mapping_broken: HashSet::new(),
            }),
            stats: Mutex::new(AdxStats::default()),
            messages: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            handed_out: Mutex::new(Vec::new()),
            paused: std::sync::atomic::AtomicBool::new(false),
            held_answers: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    // === rows ===

    /// The rows of `database.table`, in ingestion order.
    #[must_use]
    pub fn rows(&self, database: &str, table: &str) -> Vec<Map<String, Value>> {
        lock(&self.tables)
            .get(&(database.to_owned(), table.to_owned()))
            .map(|t| t.rows.clone())
            .unwrap_or_default()
    }

    /// The rows of `database.table` from index `start` on (rows are only ever appended, so a
    /// reader that keeps its position copies each row once instead of the whole table).
    #[must_use]
    pub fn rows_from(&self, database: &str, table: &str, start: usize) -> Vec<Map<String, Value>> {
        lock(&self.tables)
            .get(&(database.to_owned(), table.to_owned()))
            .and_then(|t| t.rows.get(start..))
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// How many rows `database.table` holds.
    #[must_use]
    pub fn row_count(&self, database: &str, table: &str) -> usize {
        lock(&self.tables)
            .get(&(database.to_owned(), table.to_owned()))
            .map_or(0, |t| t.rows.len())
    }

    /// Row counts of every table, `db.table` → count.
    #[must_use]
    pub fn row_counts(&self) -> HashMap<String, usize> {
        lock(&self.tables)
            .iter()
            .map(|((db, table), data)| (format!("{db}.{table}"), data.rows.len()))
            .collect()
    }

    /// Appends rows and extent tags in one step, unless one of `if_not_exists` is already an
    /// `ingest-by:` tag of the table (then nothing is stored and `false` is returned).
    pub(super) fn ingest(
        &self,
        database: &str,
        table: &str,
        rows: Vec<Map<String, Value>>,
        tags: &[String],
        if_not_exists: &[String],
    ) -> bool {
        let mut tables = lock(&self.tables);
        let data = tables
            .entry((database.to_owned(), table.to_owned()))
            .or_default();
        if if_not_exists
            .iter()
            .any(|k| data.tags.contains(&format!("ingest-by:{k}")))
        {
            return false;
        }
        data.rows.extend(rows);
        data.tags.extend(tags.iter().cloned());
        true
    }

    /// How many rows of `database.table` have every `(column, value)` of `conditions` (values
    /// compared as strings; a column the row lacks never matches).
    #[must_use]
    pub fn count_matching(
        &self,
        database: &str,
        table: &str,
        conditions: &[(String, String)],
    ) -> usize {
        let conditions: Vec<(Expr, String)> = conditions
            .iter()
            .map(|(column, value)| (Expr::Column(column.clone()), value.clone()))
            .collect();
        self.count_rows(database, table, &conditions, &|_| true)
    }

    /// Answers a [`CountQuery`] as the engine does: a table or column the schema does not have
    /// is a semantic error (`Err` names it), otherwise the number of matching rows.
    ///
    /// # Errors
    /// The name of the table or column the query cannot resolve.
    pub fn count_where(&self, database: &str, query: &CountQuery) -> Result<usize, String> {
        let schema = self
            .schema
            .get(&query.table)
            .ok_or_else(|| query.table.clone())?;
        let has_column = |name: &str| schema.columns.iter().any(|(c, _)| c == name);
        if let Some(name) = query
            .conditions
            .iter()
            .find_map(|(expr, _)| expr.unresolved(&has_column))
        {
            return Err(name);
        }
        Ok(self.count_rows(database, &query.table, &query.conditions, &has_column))
    }

    fn count_rows(
        &self,
        database: &str,
        table: &str,
        conditions: &[(Expr, String)],
        has_column: &dyn Fn(&str) -> bool,
    ) -> usize {
        lock(&self.tables)
            .get(&(database.to_owned(), table.to_owned()))
            .map_or(0, |t| {
                t.rows
                    .iter()
                    .filter(|row| {
                        conditions
                            .iter()
                            .all(|(expr, value)| equals_text(&expr.eval(row, has_column), value))
                    })
                    .count()
            })
    }

    // === auth ===

    /// Replaces the accepted credentials.
    pub fn set_auth(&self, auth: AuthSettings) {
        *lock(&self.auth) = auth;
    }

    pub(super) fn auth(&self) -> AuthSettings {
        lock(&self.auth).clone()
    }

    /// Issues a token valid for the current token lifetime; returns it and that lifetime.
    pub(super) fn issue_token(&self) -> (String, Duration) {
        let lifetime = lock(&self.faults).token_lifetime;
        let token = format!("emu-token-{}", random_hex(24));
        lock(&self.tokens).insert(token.clone(), Instant::now() + lifetime);
        self.remember_secret(&token);
        lock(&self.stats).tokens_issued += 1;
        (token, lifetime)
    }

    /// True if `token` was issued here and has not expired.
    pub(super) fn token_is_valid(&self, token: &str) -> bool {
        lock(&self.tokens)
            .get(token)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// A new authorization context for `.get kusto identity token`.
    pub(super) fn issue_context(&self) -> String {
        let context = format!("emu-authctx-{}", random_hex(32));
        lock(&self.contexts).insert(context.clone());
        self.remember_secret(&context);
        context
    }

    pub(super) fn context_is_valid(&self, context: &str) -> bool {
        lock(&self.contexts).contains(context)
    }

    // === faults ===

    /// Applies a fault request.
    pub fn apply_faults(&self, request: &FaultRequest) {
        let mut faults = lock(&self.faults);
        if let Some(throttle) = request.throttle {
            faults.throttle = Some(throttle);
        }
        if let Some(errors) = request.errors {
            faults.errors = Some(errors);
        }
        if let Some(count) = request.permanent {
            faults.permanent = count;
        }
        if let Some(count) = request.lose_answers {
            faults.lose_answers = count;
        }
        if let Some(ms) = request.answer_delay_ms {
            faults.answer_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = request.latency_ms {
            faults.latency = Duration::from_millis(ms);
        }
        if let Some(secs) = request.outage_secs {
            faults.outage_until = Some(Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
        }
        if let Some(secs) = request.token_lifetime_secs {
            faults.token_lifetime = Duration::from_secs(secs);
        }
        if let Some(secs) = request.sas_lifetime_secs {
            faults.sas_lifetime = Duration::from_secs(secs);
        }
        if let Some(tables) = &request.streaming_policy_off {
            faults.streaming_off = tables.iter().cloned().collect();
        }
        if let Some(bytes) = request.streaming_limit_bytes {
            faults.streaming_limit = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(status) = request.too_large_status {
            faults.too_large_status = status;
        }
        if let Some(forbidden) = request.query_forbidden {
            faults.query_forbidden = forbidden;
        }
        if let Some(forbidden) = request.show_forbidden {
            faults.show_forbidden = forbidden;
        }
        if let Some([min, max]) = request.ingest_delay_ms {
            faults.ingest_delay = (
                Duration::from_millis(min),
                Duration::from_millis(max.max(min)),
            );
        }
        if let Some(tables) = &request.mapping_broken {
            faults.mapping_broken = tables.iter().cloned().collect();
        }
        drop(faults);
        if request.expire_tokens {
            lock(&self.tokens).clear();
        }
        if let Some(paused) = request.pause_worker {
            self.paused.store(paused, Ordering::SeqCst);
        }
    }

    /// The next `count` requests answer 429 with `Retry-After`.
    pub fn throttle_next(&self, count: u32, retry_after: Duration) {
        self.apply_faults(&FaultRequest {
            throttle: Some(Throttle {
                count,
                retry_after_secs: retry_after.as_secs(),
            }),
            ..FaultRequest::default()
        });
    }

    /// The next `count` requests answer `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.apply_faults(&FaultRequest {
            errors: Some(ErrorBurst { count, status }),
            ..FaultRequest::default()
        });
    }

    /// The next `count` streaming requests are rejected permanently.
    pub fn reject_next_permanently(&self, count: u32) {
        self.apply_faults(&FaultRequest {
            permanent: Some(count),
            ..FaultRequest::default()
        });
    }

    /// The next `count` streaming requests store their rows but answer 504.
    pub fn lose_next_answers(&self, count: u32) {
        self.apply_faults(&FaultRequest {
            lose_answers: Some(count),
            ..FaultRequest::default()
        });
    }

    /// Streaming answers are held `delay` after their rows are stored (zero: none are).
    pub fn set_answer_delay(&self, delay: Duration) {
        lock(&self.faults).answer_delay = delay;
    }

    /// How many streaming requests have stored their rows and are still waiting for their
    /// answer to go out (their client has not heard that they landed).
    #[must_use]
    pub fn answers_held(&self) -> usize {
        self.held_answers.load(Ordering::SeqCst)
    }

    /// The answer delay, and a guard counting this answer as held while it lives.
    pub(super) fn hold_answer(&self) -> (Duration, HeldAnswer<'_>) {
        self.held_answers.fetch_add(1, Ordering::SeqCst);
        (
            lock(&self.faults).answer_delay,
            HeldAnswer(&self.held_answers),
        )
    }

    /// Whether this streaming request, having stored its rows, loses its answer (consumes one).
    pub(super) fn take_lost_answer(&self) -> bool {
        let mut faults = lock(&self.faults);
        if faults.lose_answers == 0 {
            return false;
        }
        faults.lose_answers -= 1;
        drop(faults);
        lock(&self.stats).faults_injected += 1;
        true
    }

    /// Every management, streaming and query request answers 503 for `period`.
    pub fn outage_for(&self, period: Duration) {
        self.apply_faults(&FaultRequest {
            outage_secs: Some(period.as_secs_f64()),
            ..FaultRequest::default()
        });
    }

    /// True while an outage lasts.
    #[must_use]
    pub fn in_outage(&self) -> bool {
        lock(&self.faults)
            .outage_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Tokens issued from now on expire after `lifetime`.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.faults).token_lifetime = lifetime;
    }

    /// Every token issued so far stops working.
    pub fn expire_tokens_now(&self) {
        lock(&self.tokens).clear();
    }

    /// SAS handed out from now on expire after `lifetime`.
    pub fn set_sas_lifetime(&self, lifetime: Duration) {
        lock(&self.faults).sas_lifetime = lifetime;
    }

    pub(super) fn sas_lifetime(&self) -> Duration {
        lock(&self.faults).sas_lifetime
    }

    /// Turns the streaming ingestion policy of `table` on or off (on for every table at start).
    /// With it off, streaming into the table answers a permanent 400
    /// `BadRequest_StreamingIngestionPolicyNotEnabled`, as ADX does.
    pub fn set_streaming_policy(&self, table: &str, enabled: bool) {
        let mut faults = lock(&self.faults);
        if enabled {
            faults.streaming_off.remove(table);
        } else {
            faults.streaming_off.insert(table.to_owned());
        }
    }

    pub(super) fn streaming_enabled(&self, table: &str) -> bool {
        !lock(&self.faults).streaming_off.contains(table)
    }

    /// Streaming requests whose gzip body is above `bytes` are refused with a permanent
    /// `Stream_InputStreamTooLarge` answered with `status` (ADX answers 413, or 400 with that
    /// code). The default is 4 MiB and 413.
    pub fn set_streaming_limit(&self, bytes: usize, status: u16) {
        let mut faults = lock(&self.faults);
        faults.streaming_limit = bytes;
        faults.too_large_status = status;
    }

    /// The streaming size limit and the status that refuses a larger body.
    pub(super) fn streaming_limit(&self) -> (usize, u16) {
        let faults = lock(&self.faults);
        (faults.streaming_limit, faults.too_large_status)
    }

    /// With `true`, every query answers 403 `UnauthorizedDatabaseAccessException`, as ADX answers
    /// a principal that holds Database Ingestor (all that ingestion needs) but not Database
    /// Viewer; ingestion is unaffected.
    pub fn set_query_forbidden(&self, forbidden: bool) {
        lock(&self.faults).query_forbidden = forbidden;
    }

    pub(super) fn query_forbidden(&self) -> bool {
        lock(&self.faults).query_forbidden
    }

    /// With `true`, every `.show table|database … ingestion mappings` answers 403
    /// `UnauthorizedDatabaseAccessException`, as ADX answers a principal whose roles do not
    /// cover the table's metadata; ingestion and queries are unaffected.
    pub fn set_show_forbidden(&self, forbidden: bool) {
        lock(&self.faults).show_forbidden = forbidden;
    }

    pub(super) fn show_forbidden(&self) -> bool {
        lock(&self.faults).show_forbidden
    }

    /// Queued ingestion takes effect between `min` and `max` after the worker first sees the
    /// message (uniformly at random per message), as the DM's batching delays it.
    pub fn set_ingest_delay(&self, min: Duration, max: Duration) {
        lock(&self.faults).ingest_delay = (min, max.max(min));
    }

    /// A delay drawn from the configured range.
    pub(super) fn draw_ingest_delay(&self) -> Duration {
        let (min, max) = lock(&self.faults).ingest_delay;
        let Some(span) = max.checked_sub(min).filter(|span| !span.is_zero()) else {
            return min;
        };
        let span = span.as_millis();
        let offset = u64::try_from(rand::random::<u128>() % (span + 1)).unwrap_or(0);
        min + Duration::from_millis(offset)
    }

    /// Breaks (true) or repairs (false) the ingestion mapping of `table`: queued ingestions into
    /// it fail permanently with a mapping error meanwhile.
    pub fn set_mapping_broken(&self, table: &str, broken: bool) {
        let mut faults = lock(&self.faults);
        if broken {
            faults.mapping_broken.insert(table.to_owned());
        } else {
            faults.mapping_broken.remove(table);
        }
    }

    pub(super) fn mapping_broken(&self, table: &str) -> bool {
        lock(&self.faults).mapping_broken.contains(table)
    }

    /// Pauses or resumes the ingestion worker (messages stay in the queue meanwhile).
    pub fn pause_worker(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    pub(super) fn worker_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(super) fn latency(&self) -> Duration {
        lock(&self.faults).latency
    }

    /// The fault a management or streaming request suffers, if any (consumes count-based ones).
    pub(super) fn take_fault(&self, streaming: bool) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let fault = if faults
            .outage_until
            .is_some_and(|until| Instant::now() < until)
        {
            Some(Fault::Status(503))
        } else if let Some(throttle) = faults.throttle.as_mut().filter(|t| t.count > 0) {
            throttle.count -= 1;
            Some(Fault::Throttle(throttle.retry_after_secs))
        } else if let Some(errors) = faults.errors.as_mut().filter(|e| e.count > 0) {
            errors.count -= 1;
            Some(Fault::Status(errors.status))
        } else if streaming && faults.permanent > 0 {
            faults.permanent -= 1;
            Some(Fault::Permanent)
        } else {
            None
        };
        drop(faults);
        if fault.is_some() {
            lock(&self.stats).faults_injected += 1;
        }
        fault
    }

    // === stats ===

    /// A copy of the counters.
    #[must_use]
    pub fn stats(&self) -> AdxStats {
        lock(&self.stats).clone()
    }

    pub(super) fn count(&self, update: impl FnOnce(&mut AdxStats)) {
        update(&mut lock(&self.stats));
    }

    /// The raw `MessageText` (base64) of the queue messages the worker read, oldest first.
    #[must_use]
    pub fn messages(&self) -> Vec<String> {
        lock(&self.messages).clone()
    }

    /// Every token, authorization context and SAS signature handed out, so tests can search
    /// logs for them.
    #[must_use]
    pub fn handed_out_secrets(&self) -> Vec<String> {
        lock(&self.handed_out).clone()
    }

    pub(super) fn remember_secret(&self, secret: &str) {
        let mut handed_out = lock(&self.handed_out);
        if !handed_out.iter().any(|s| s == secret) {
            handed_out.push(secret.to_owned());
        }
    }

    /// Management and streaming requests with their answers, oldest first (the last 10000).
    #[must_use]
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).clone()
    }

    pub(super) fn record_request(&self, streaming: bool, status: u16) {
        let mut requests = lock(&self.requests);
        if requests.len() >= KEPT_MESSAGES {
            requests.remove(0);
        }
        requests.push(RequestRecord {
            at: Instant::now(),
            streaming,
            status,
        });
    }

    pub(super) fn keep_message(&self, text: &str) {
        let mut messages = lock(&self.messages);
        if messages.len() >= KEPT_MESSAGES {
            messages.remove(0);
        }
        messages.push(text.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(n: u64) -> Map<String, Value> {
        let Value::Object(row) = json!({ "N": n }) else {
            unreachable!("a JSON object literal");
        };
        row
    }

    #[test]
    fn rows_from_returns_only_what_came_after_the_position() {
        let state = AdxState::new(Schema::new(), AuthSettings::default());
        assert!(state.rows_from("db", "T", 0).is_empty(), "no table yet");
        assert!(state.ingest("db", "T", (0..3).map(row).collect(), &[], &[]));
        assert!(state.ingest("db", "T", (3..5).map(row).collect(), &[], &[]));
        assert_eq!(state.rows_from("db", "T", 0), state.rows("db", "T"));
        assert_eq!(state.rows_from("db", "T", 3), vec![row(3), row(4)]);
        assert!(state.rows_from("db", "T", 5).is_empty());
        assert!(state.rows_from("db", "T", 9).is_empty(), "past the end");
        assert!(state.rows_from("db", "Other", 0).is_empty());
    }
}
