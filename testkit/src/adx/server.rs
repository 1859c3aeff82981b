//! The ADX emulator's HTTP surface: the data management endpoint (`POST /v1/rest/mgmt`: `.get
//! ingestion resources` with real Azurite SAS URLs, `.get kusto identity token`), the engine's
//! `.show table|database … ingestion mappings` on the same path, the engine's streaming endpoint (`POST /v1/rest/ingest/{db}/{table}`), a query endpoint for row counts
//! (`POST /v1/rest/query`), the AAD token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`, client secret and client assertion), an IMDS-style token
//! endpoint (`GET /metadata/identity/oauth2/token`), and the control API under `/emulator/`.
//!
//! Owns request handling and the wire formats of answers, including Kusto's JSON error body with
//! `@permanent`. It must never log a secret, an assertion, a token or a SAS.

use std::{collections::HashMap, io::Read as _, sync::Arc, time::Duration};

use axum::{
    Form, Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Resources, kql,
    state::{AdxState, Fault, FaultRequest},
    storage::StorageAccount,
};

/// The streaming limit the engine enforces by default (compressed body; settable).
pub const STREAMING_LIMIT: usize = 4 << 20;

/// What the handlers share.
#[derive(Clone)]
pub(super) struct AppState {
    pub state: Arc<AdxState>,
    pub storage: StorageAccount,
    pub resources: Arc<Resources>,
}

pub(super) fn router(app: AppState) -> Router {
    Router::new()
        .route("/v1/rest/mgmt", post(mgmt))
        .route("/v1/rest/ingest/{db}/{table}", post(streaming))
        .route("/v1/rest/query", post(query))
        .route("/{tenant}/oauth2/v2.0/token", post(aad_token))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/emulator/stats", get(stats))
        .route("/emulator/tables", get(tables))
        .route("/emulator/tables/{db}/{table}", get(table_rows))
        .route("/emulator/faults", post(faults))
        .with_state(app)
}

/// A Kusto error answer: `{"error":{"code","message","@type","@message","@context","@permanent"}}`.
pub(super) fn kusto_error(
    status: StatusCode,
    code: &str,
    kind: &str,
    message: &str,
    permanent: bool,
) -> Response {
    kusto_error_with(
        status,
        code,
        "Request is invalid and cannot be executed.",
        kind,
        message,
        permanent,
    )
}

/// [`kusto_error`] with its own short `message` (a refusal is not "invalid").
fn kusto_error_with(
    status: StatusCode,
    code: &str,
    summary: &str,
    kind: &str,
    message: &str,
    permanent: bool,
) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": summary,
            "@type": kind,
            "@message": message,
            "@context": {
                "timestamp": jiff::Timestamp::now().to_string(),
                "serviceAlias": "KEVENTS-EMULATOR",
                "machineName": "emulator",
                "processName": "Kusto.WinSvc.Svc",
                "processId": std::process::id(),
                "clientRequestId": "",
                "activityId": format!("{:032x}", rand::random::<u128>()),
            },
            "@permanent": permanent,
        }
    });
    (status, Json(body)).into_response()
}

/// Latency, faults and auth shared by management and streaming requests. `Some` is the answer.
async fn gate(app: &AppState, headers: &HeaderMap, streaming: bool) -> Option<Response> {
    let latency = app.state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = app.state.take_fault(streaming) {
        return Some(match fault {
            Fault::Throttle(secs) => {
                let mut response = kusto_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Kusto.DataNode.Exceptions.ThrottleException",
                    "The request was throttled (emulator fault).",
                    false,
                );
                if let Ok(value) = secs.to_string().parse() {
                    response.headers_mut().insert("Retry-After", value);
                }
                response
            }
            Fault::Status(status) => kusto_error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "ServiceUnavailable",
                "Kusto.Common.Svc.Exceptions.ServiceUnavailableException",
                "The service is unavailable (emulator fault).",
                false,
            ),
            Fault::Permanent => kusto_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Kusto.DataNode.Exceptions.StreamingIngestionRequestException",
                "The data does not match the ingestion mapping (emulator fault).",
                true,
            ),
        });
    }
    unauthorized(app, headers)
}

/// `Some(401)` when tokens are required and `headers` carry no valid one.
fn unauthorized(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    if app.state.auth().require_token {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !token.is_some_and(|t| app.state.token_is_valid(t)) {
            app.state.count(|s| s.unauthorized += 1);
            return Some(kusto_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Kusto.Common.Svc.Exceptions.UnauthorizedDatabaseAccessException",
                "The request has no valid bearer token.",
                false,
            ));
        }
    }
    None
}

#[derive(Deserialize)]
struct MgmtBody {
    /// The database (the DM's commands ignore it; the engine's `.show` commands use it).
    #[serde(default)]
    db: String,
    csl: String,
}

/// A V1 response with one table.
fn v1_table(columns: &[&str], rows: &[Vec<Value>]) -> Value {
    json!({"Tables": [{
        "TableName": "Table_0",
        "Columns": columns.iter().map(|c| json!({"ColumnName": c, "DataType": "String", "ColumnType": "string"})).collect::<Vec<_>>(),
        "Rows": rows,
    }]})
}

async fn mgmt(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // The engine's `.show … ingestion mappings` (the DM and the engine share this address) is
    // treated like a query: no count-based faults, and not in the DM's request record.
    if let Ok(request) = serde_json::from_slice::<MgmtBody>(&body)
        && let Some(show) = kql::parse_show_mappings(&request.csl)
    {
        return show_mappings(&app, &headers, &request.db, &show).await;
    }
    let response = mgmt_answer(&app, &headers, &body).await;
    app.state.record_request(false, response.status().as_u16());
    response
}

async fn mgmt_answer(app: &AppState, headers: &HeaderMap, body: &Bytes) -> Response {
    if let Some(answer) = gate(app, headers, false).await {
        return answer;
    }
    let Ok(request) = serde_json::from_slice::<MgmtBody>(body) else {
        return kusto_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Kusto.Data.Exceptions.KustoBadRequestException",
            "The body must be {\"db\": …, \"csl\": …}.",
            true,
        );
    };
    let command = request.csl.trim();
    let answer = if command.eq_ignore_ascii_case(".get ingestion resources") {
        let expiry = jiff::Timestamp::now()
            .checked_add(
                jiff::SignedDuration::try_from(app.state.sas_lifetime()).unwrap_or_default(),
            )
            .unwrap_or(jiff::Timestamp::MAX);
        let sas = app.storage.account_sas("rwdlacup", expiry);
        if let Some((_, sig)) = reqwest::Url::parse(&format!("http://sas/?{sas}"))
            .ok()
            .and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "sig")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
            })
        {
            app.state.remember_secret(&sig);
        }
        let with_sas = |url: &reqwest::Url| {
            let mut url = url.clone();
            url.set_query(Some(&sas));
            Value::String(url.to_string())
        };
        let mut rows = Vec::new();
        for queue in &app.resources.ingestion_queues {
            rows.push(vec![
                json!("SecuredReadyForAggregationQueue"),
                with_sas(&app.storage.queue_url(queue)),
            ]);
        }
        for container in &app.resources.containers {
            rows.push(vec![
                json!("TempStorage"),
                with_sas(&app.storage.container_url(container)),
            ]);
        }
        rows.push(vec![
            json!("FailedIngestionsQueue"),
            with_sas(&app.storage.queue_url(&app.resources.failed_queue)),
        ]);
        rows.push(vec![
            json!("SuccessfulIngestionsQueue"),
            with_sas(&app.storage.queue_url(&app.resources.success_queue)),
        ]);
        rows.push(vec![
            json!("IngestionsStatusTable"),
            with_sas(&app.storage.table_url(&app.resources.status_table)),
        ]);
        v1_table(&["ResourceTypeName", "StorageRoot"], &rows)
    } else if command.eq_ignore_ascii_case(".get kusto identity token") {
        v1_table(
            &["AuthorizationContext"],
            &[vec![json!(app.state.issue_context())]],
        )
    } else {
        return kusto_error(
            StatusCode::BAD_REQUEST,
            "BadRequest_SyntaxError",
            "Kusto.Data.Exceptions.SyntaxException",
            "The emulator understands `.get ingestion resources` and `.get kusto identity token` only.",
            true,
        );
    };
    app.state.count(|s| s.mgmt_requests += 1);
    Json(answer).into_response()
}

/// The engine's `.show (table T | database D) ingestion [kind] mappings`, from the KQL schema:
/// one row per mapping (`Name`, `Kind`, `Mapping`, `LastUpdatedOn`, `Database`, `Table`).
/// Outages, latency and auth apply; [`AdxState::set_show_forbidden`] answers 403 as ADX answers
/// a principal whose roles do not cover the table; a table the schema lacks is ADX's
/// `BadRequest_EntityNotFound`; a table whose mapping is broken
/// ([`AdxState::set_mapping_broken`]) shows no mappings, as if they had been dropped. The
/// emulator's schema has table mappings only, so a database shows none.
async fn show_mappings(
    app: &AppState,
    headers: &HeaderMap,
    db: &str,
    show: &kql::ShowMappings,
) -> Response {
    if let Some(answer) = engine_gate(app).await {
        return answer;
    }
    if let Some(answer) = unauthorized(app, headers) {
        return answer;
    }
    let (kind, entity) = match &show.scope {
        kql::MappingScope::Table(table) => ("table", table.as_str()),
        kql::MappingScope::Database(database) => ("database", database.as_str()),
    };
    if app.state.show_forbidden() {
        return kusto_error_with(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Caller is not authorized to perform this action",
            "Kusto.DataNode.Exceptions.UnauthorizedDatabaseAccessException",
            &format!(
                "Principal 'aadapp=kevents-emulator-caller' is not authorized to access {kind} '{entity}' in database '{db}'."
            ),
            true,
        );
    }
    let mut rows = Vec::new();
    if let kql::MappingScope::Table(table) = &show.scope {
        let Some(schema) = app.state.schema.get(table) else {
            return kusto_error(
                StatusCode::BAD_REQUEST,
                "BadRequest_EntityNotFound",
                "Kusto.Data.Exceptions.EntityNotFoundException",
                &format!("Entity ID '{table}' of kind 'Table' was not found."),
                true,
            );
        };
        let wanted_kind = show.kind.as_deref().is_none_or(|k| k == "json");
        if wanted_kind && !app.state.mapping_broken(table) {
            for mapping in schema.mappings.values() {
                if show.name.as_ref().is_some_and(|n| *n != mapping.name) {
                    continue;
                }
                let columns: Vec<Value> = mapping
                    .columns
                    .iter()
                    .map(
                        |c| json!({"column": c.column, "Properties": {"Path": c.path.to_string()}}),
                    )
                    .collect();
                rows.push(vec![
                    json!(mapping.name),
                    json!("Json"),
                    json!(Value::Array(columns).to_string()),
                    Value::Null,
                    json!(db),
                    json!(table),
                ]);
            }
        }
    }
    if show.name.is_some() && rows.is_empty() {
        return kusto_error(
            StatusCode::BAD_REQUEST,
            "BadRequest_EntityNotFound",
            "Kusto.Data.Exceptions.EntityNotFoundException",
            &format!(
                "Entity ID '{}' of kind 'MappingPersistent' was not found.",
                show.name.as_deref().unwrap_or_default()
            ),
            true,
        );
    }
    app.state.count(|s| s.show_commands += 1);
    Json(v1_table(
        &[
            "Name",
            "Kind",
            "Mapping",
            "LastUpdatedOn",
            "Database",
            "Table",
        ],
        &rows,
    ))
    .into_response()
}

#[derive(Deserialize)]
struct QueryBody {
    db: String,
    csl: String,
}

/// `POST /v1/rest/query`: the engine's query endpoint, for the one shape the sink sends to check
/// whether a batch is in a table (`T | where E == "v" and … | count`, see [`kql::CountQuery`]).
/// Outages, latency and auth apply, and so does the Database Viewer role: without it
/// ([`AdxState::set_query_forbidden`]) the answer is ADX's 403. A table or column the schema lacks
/// is ADX's semantic error (400). Count-based faults are left to management and streaming
/// requests.
/// Latency and outage of an engine command or query (count-based faults are left to management
/// and streaming requests): the outage's 503, or `None` to go on.
async fn engine_gate(app: &AppState) -> Option<Response> {
    let latency = app.state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    app.state.in_outage().then(|| {
        kusto_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Kusto.Common.Svc.Exceptions.ServiceUnavailableException",
            "The service is unavailable (emulator fault).",
            false,
        )
    })
}

async fn query(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = engine_gate(&app).await {
        return answer;
    }
    if let Some(answer) = unauthorized(&app, &headers) {
        return answer;
    }
    let body = serde_json::from_slice::<QueryBody>(&body).ok();
    if app.state.query_forbidden() {
        // What ADX answers a principal without Database Viewer on the database (the activity
        // type is the query's).
        let db = body.as_ref().map_or("", |b| b.db.as_str());
        return kusto_error_with(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Caller is not authorized to perform this action",
            "Kusto.DataNode.Exceptions.UnauthorizedDatabaseAccessException",
            &format!(
                "Principal 'aadapp=kevents-emulator-caller' is not authorized to read database '{db}'."
            ),
            true,
        );
    }
    let parsed = body.and_then(|b| Some((kql::parse_count_query(&b.csl)?, b.db)));
    let Some((count_query, db)) = parsed else {
        return kusto_error(
            StatusCode::BAD_REQUEST,
            "General_BadRequest",
            "Kusto.Data.Exceptions.SyntaxException",
            "The emulator answers `T | where C == \"v\" and … | count` only.",
            true,
        );
    };
    let count = match app.state.count_where(&db, &count_query) {
        Ok(count) => count,
        Err(name) => {
            return kusto_error(
                StatusCode::BAD_REQUEST,
                "General_BadRequest",
                "Kusto.Data.Exceptions.SemanticException",
                &format!(
                    "Semantic error: 'where' operator: Failed to resolve scalar expression named '{name}'"
                ),
                true,
            );
        }
    };
    app.state.count(|s| s.queries += 1);
    Json(json!({"Tables": [{
        "TableName": "Table_0",
        "Columns": [{"ColumnName": "Count", "DataType": "Int64", "ColumnType": "long"}],
        "Rows": [[count]],
    }]}))
    .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamingQuery {
    stream_format: Option<String>,
    mapping_name: Option<String>,
}

async fn streaming(
    State(app): State<AppState>,
    Path((db, table)): Path<(String, String)>,
    Query(query): Query<StreamingQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = streaming_answer(&app, &db, &table, query, &headers, &body).await;
    app.state.record_request(true, response.status().as_u16());
    response
}

async fn streaming_answer(
    app: &AppState,
    db: &str,
    table: &str,
    query: StreamingQuery,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    if let Some(answer) = gate(app, headers, true).await {
        return answer;
    }
    if !app.state.streaming_enabled(table) {
        return kusto_error(
            StatusCode::BAD_REQUEST,
            "BadRequest_StreamingIngestionPolicyNotEnabled",
            "Kusto.DataNode.Exceptions.StreamingIngestionPolicyNotEnabledException",
            &format!(
                "Streaming ingestion policy is not enabled for table '{table}' in database '{db}'."
            ),
            true,
        );
    }
    let (limit, too_large_status) = app.state.streaming_limit();
    if body.len() > limit {
        return kusto_error(
            StatusCode::from_u16(too_large_status).unwrap_or(StatusCode::PAYLOAD_TOO_LARGE),
            "Stream_InputStreamTooLarge",
            "Kusto.DataNode.Exceptions.InputStreamTooLargeException",
            &format!(
                "The input stream is too large for streaming ingestion: {} bytes, above the limit of {limit} bytes.",
                body.len()
            ),
            true,
        );
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let data = if gzip {
        match gunzip(body) {
            Ok(data) => data,
            Err(_) => {
                return kusto_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest_InvalidCompression",
                    "Kusto.DataNode.Exceptions.StreamingIngestionRequestException",
                    "Content-Encoding is gzip but the body is not gzip.",
                    true,
                );
            }
        }
    } else {
        body.to_vec()
    };
    let format = query.stream_format.unwrap_or_default().to_ascii_lowercase();
    let mapping = query.mapping_name.unwrap_or_default();
    match ingest_records(&app.state, db, table, &format, &mapping, &data) {
        Ok((rows, bad_lines)) => {
            let count = rows.len();
            app.state.ingest(db, table, rows, &[], &[]);
            app.state.count(|s| {
                s.streaming_requests += 1;
                s.streaming_rows += count as u64;
                s.bad_lines += bad_lines;
            });
            let (delay, held) = app.state.hold_answer();
            if !delay.is_zero() {
                // Dropped with the request when the client goes away first.
                tokio::time::sleep(delay).await;
            }
            drop(held);
            if app.state.take_lost_answer() {
                return kusto_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "GatewayTimeout",
                    "Kusto.Common.Svc.Exceptions.GatewayTimeoutException",
                    "The gateway timed out waiting for the engine (emulator fault).",
                    false,
                );
            }
            Json(json!({"Tables": [{
                "TableName": "Table_0",
                "Columns": [
                    {"ColumnName": "ConsumedRecordsCount", "DataType": "Int64", "ColumnType": "long"},
                    {"ColumnName": "UpdatePolicyStatus", "DataType": "String", "ColumnType": "string"},
                    {"ColumnName": "UpdatePolicyFailureCode", "DataType": "String", "ColumnType": "string"},
                    {"ColumnName": "UpdatePolicyFailureReason", "DataType": "String", "ColumnType": "string"}
                ],
                "Rows": [[count, "Inactive", "Unknown", null]]
            }]}))
            .into_response()
        }
        Err(failure) => kusto_error(
            StatusCode::BAD_REQUEST,
            failure.code,
            "Kusto.DataNode.Exceptions.StreamingIngestionRequestException",
            &failure.message,
            true,
        ),
    }
}

/// Why records could not be ingested.
#[derive(Debug)]
pub(super) struct IngestFailure {
    /// An ADX error code.
    pub code: &'static str,
    /// Details.
    pub message: String,
}

/// Parses `data` in `format`, applies `mapping` of `table`; returns the rows and the count of
/// skipped bad lines (`json` only; a `multijson` parse error fails everything).
pub(super) fn ingest_records(
    state: &AdxState,
    _db: &str,
    table: &str,
    format: &str,
    mapping: &str,
    data: &[u8],
) -> Result<(Vec<serde_json::Map<String, Value>>, u64), IngestFailure> {
    let schema = state.schema.get(table).ok_or_else(|| IngestFailure {
        code: "BadRequest_EntityNotFound",
        message: format!("Table '{table}' was not found"),
    })?;
    if state.mapping_broken(table) {
        return Err(IngestFailure {
            code: "BadRequest_MappingReferenceWasNotFound",
            message: format!(
                "Mapping reference '{mapping}' of type 'json' in table '{table}' could not be found"
            ),
        });
    }
    if mapping.is_empty() {
        return Err(IngestFailure {
            code: "BadRequest_MissingMappingtFailure",
            message: format!("format {format} needs an ingestion mapping"),
        });
    }
    let mapping = schema.mappings.get(mapping).ok_or_else(|| IngestFailure {
        code: "BadRequest_MappingReferenceWasNotFound",
        message: format!(
            "Mapping reference '{mapping}' of type 'json' in table '{table}' could not be found"
        ),
    })?;
    let mut records = Vec::new();
    let mut bad_lines = 0;
    match format {
        "json" => {
            for line in data.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Value>(line) {
                    Ok(value) => records.push(value),
                    Err(_) => bad_lines += 1,
                }
            }
        }
        "multijson" => {
            for value in serde_json::Deserializer::from_slice(data).into_iter::<Value>() {
                match value {
                    Ok(Value::Array(items)) => records.extend(items),
                    Ok(value) => records.push(value),
                    Err(e) => {
                        return Err(IngestFailure {
                            code: "BadRequest_InvalidMultiJson",
                            message: format!("multijson parse error: {e}"),
                        });
                    }
                }
            }
        }
        other => {
            return Err(IngestFailure {
                code: "BadRequest_FormatNotSupported",
                message: format!("the emulator ingests json and multijson, not `{other}`"),
            });
        }
    }
    if records.is_empty() {
        return Err(IngestFailure {
            code: "Stream_NoDataToIngest",
            message: "no records".to_owned(),
        });
    }
    let rows = records
        .iter()
        .map(|record| kql::apply(schema, mapping, record))
        .collect();
    Ok((rows, bad_lines))
}

pub(super) fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 8);
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

fn token_answer(token: &str, lifetime: Duration) -> Value {
    json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "ext_expires_in": lifetime.as_secs(),
        "access_token": token,
    })
}

fn aad_error(error: &str, description: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": error, "error_description": description, "error_codes": [7_000_215]})),
    )
        .into_response()
}

async fn aad_token(
    State(app): State<AppState>,
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let latency = app.state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let field = |k: &str| form.get(k).map_or("", String::as_str);
    if field("grant_type") != "client_credentials" || field("scope").is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "grant_type=client_credentials and scope are required"})),
        )
            .into_response();
    }
    let auth = app.state.auth();
    let client = field("client_id");
    let accepted = if let Some(secret) = form.get("client_secret") {
        auth.client_secrets
            .iter()
            .any(|(id, s)| id == client && s == secret)
    } else if let Some(assertion) = form.get("client_assertion") {
        field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            && !assertion.is_empty()
            && (auth.assertions.is_empty()
                || auth
                    .assertions
                    .iter()
                    .any(|(id, a)| id == client && a == assertion))
    } else {
        false
    };
    if !accepted {
        return aad_error(
            "invalid_client",
            "AADSTS7000215: Invalid client secret or assertion provided.",
        );
    }
    let (token, lifetime) = app.state.issue_token();
    Json(token_answer(&token, lifetime)).into_response()
}

async fn imds_token(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})),
        )
            .into_response();
    }
    let Some(resource) = query.get("resource") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "resource is required"})),
        )
            .into_response();
    };
    let (token, lifetime) = app.state.issue_token();
    let expires_on = jiff::Timestamp::now().as_second()
        + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    Json(json!({
        "access_token": token,
        "expires_in": lifetime.as_secs().to_string(),
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn stats(State(app): State<AppState>) -> Response {
    Json(app.state.stats()).into_response()
}

async fn tables(State(app): State<AppState>) -> Response {
    Json(app.state.row_counts()).into_response()
}

async fn table_rows(
    State(app): State<AppState>,
    Path((db, table)): Path<(String, String)>,
) -> Response {
    let rows = app.state.rows(&db, &table);
    Json(json!({"count": rows.len(), "rows": rows})).into_response()
}

async fn faults(State(app): State<AppState>, Json(request): Json<FaultRequest>) -> Response {
    app.state.apply_faults(&request);
    StatusCode::NO_CONTENT.into_response()
}
