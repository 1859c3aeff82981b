//! The HTTP front end of the emulated apiserver: routing of `/api/v1/...` and
//! `/apis/{group}/v1/...` paths, query parameters, content negotiation (JSON or Table), LIST
//! with snapshot paging and continue tokens, GET/POST/PUT/PATCH/DELETE, and the wiring of
//! discovery, control endpoints and the fault middleware.
//!
//! Translates HTTP to state operations and back; it must never implement storage semantics
//! itself (those live in `state`/`store`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rand::Rng;
use serde_json::{Value, json};

use super::control;
use super::discovery;
use super::faults::{self, ClientIds, ConnHandle};
use super::managed;
use super::namespaces;
use super::patch::PatchType;
use super::resources::{Object, Stored, View, decode};
use super::selectors::{FieldSelector, Filter, LabelSelector};
use super::state::{KubeState, Preconditions};
use super::status::{self, ApiError};
use super::store::{PageQuery, Store};
use super::table::{TableListMeta, TableRequest, table};
use super::watch::{self, WatchSpec, WatchStart};

/// Largest request body the apiserver accepts (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Router state.
#[derive(Clone)]
pub(crate) struct AppState {
    pub state: Arc<KubeState>,
    pub addr: SocketAddr,
}

/// The whole HTTP application.
pub(crate) fn router(app: AppState) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/events.k8s.io", get(discovery::events_group))
        .route("/apis/events.k8s.io/v1", get(discovery::events_v1))
        .route(
            "/apis/coordination.k8s.io",
            get(discovery::coordination_group),
        )
        .route(
            "/apis/coordination.k8s.io/v1",
            get(discovery::coordination_v1),
        )
        .route("/openapi/v3", get(discovery::openapi_v3_root))
        .route("/openapi/v3/api/v1", get(discovery::openapi_v3_core))
        .route(
            "/openapi/v3/apis/events.k8s.io/v1",
            get(discovery::openapi_v3_events),
        )
        .route(
            "/openapi/v3/apis/coordination.k8s.io/v1",
            get(discovery::openapi_v3_coordination),
        )
        .route("/healthz", get(discovery::healthz))
        .route("/livez", get(discovery::healthz))
        .route("/readyz", get(discovery::healthz))
        .merge(control::routes())
        .fallback(api)
        .layer(axum::middleware::from_fn_with_state(
            app.state.clone(),
            faults::middleware,
        ))
        .with_state(app)
}

/// A resource path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Collection {
        view: View,
        namespace: Option<String>,
    },
    Item {
        view: View,
        namespace: String,
        name: String,
    },
    /// `/api/v1/namespaces[/{name}]` (read-only).
    Namespaces(Option<String>),
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix_len, group) = match segs.as_slice() {
        ["api", "v1", ..] => (2, ""),
        ["apis", g, "v1", ..] => (3, *g),
        _ => return None,
    };
    let rest = &segs[prefix_len..];
    let view_for = |plural: &str| match (group, plural) {
        ("", "events") => Some(View::CoreEvents),
        ("events.k8s.io", "events") => Some(View::EventsV1),
        ("coordination.k8s.io", "leases") => Some(View::Leases),
        _ => None,
    };
    match rest {
        ["namespaces"] if group.is_empty() => Some(Target::Namespaces(None)),
        ["namespaces", ns] if group.is_empty() && !ns.is_empty() => {
            Some(Target::Namespaces(Some((*ns).to_owned())))
        }
        [plural] => Some(Target::Collection {
            view: view_for(plural)?,
            namespace: None,
        }),
        ["namespaces", ns, plural] if !ns.is_empty() => Some(Target::Collection {
            view: view_for(plural)?,
            namespace: Some((*ns).to_owned()),
        }),
        ["namespaces", ns, plural, name] if !ns.is_empty() && !name.is_empty() => {
            Some(Target::Item {
                view: view_for(plural)?,
                namespace: (*ns).to_owned(),
                name: percent_decode(name),
            })
        }
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

struct Ctx {
    query: HashMap<String, String>,
    headers: HeaderMap,
    ids: ClientIds,
    table: Option<TableRequest>,
    conn: Option<ConnHandle>,
}

impl Ctx {
    /// The field manager of a write (`managedFields`).
    fn manager(&self) -> String {
        managed::manager(
            self.q("fieldManager"),
            self.headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        )
    }

    fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

async fn api(State(app): State<AppState>, req: Request) -> Response {
    handle(&app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle(app: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let target = parse_path(parts.uri.path()).ok_or_else(ApiError::no_such_resource)?;
    let query = parse_query(parts.uri.query());
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let table = TableRequest::from_request(accept, query.get("includeObject").map(String::as_str));
    let ctx = Ctx {
        ids: ClientIds::from_headers(&parts.headers),
        conn: parts
            .extensions
            .get::<ConnectInfo<ConnHandle>>()
            .map(|c| c.0.clone()),
        headers: parts.headers,
        table,
        query,
    };
    if ctx.q("dryRun").is_some() {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the kevents emulator",
        ));
    }
    let body = to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large_body())?;
    match target {
        Target::Namespaces(name) => {
            if parts.method != Method::GET {
                return Err(ApiError::method_not_allowed(
                    namespaces::NAMESPACES,
                    parts.method.as_str(),
                ));
            }
            if matches!(ctx.q("watch"), Some("true" | "1")) {
                return Err(ApiError::method_not_allowed(
                    namespaces::NAMESPACES,
                    "watch",
                ));
            }
            let (status, body) = namespaces::get(&app.state, name.as_deref(), ctx.table)?;
            let mut resp = json_response(status, serde_json::to_vec(&body).unwrap_or_default());
            if ctx.table.is_some() {
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
                );
            }
            Ok(resp)
        }
        Target::Collection { view, namespace } => {
            collection(&app.state, &parts.method, view, namespace, &body, &ctx)
        }
        Target::Item {
            view,
            namespace,
            name,
        } => item(
            &app.state,
            &parts.method,
            view,
            &namespace,
            &name,
            &body,
            &ctx,
        ),
    }
}

/// Requests on `…/events` and `…/leases`.
fn collection(
    state: &Arc<KubeState>,
    method: &Method,
    view: View,
    namespace: Option<String>,
    body: &[u8],
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    match (method, namespace) {
        (&Method::GET, namespace) => {
            if matches!(ctx.q("watch"), Some("true" | "1")) {
                watch(state, view, namespace, ctx)
            } else {
                list(state, view, namespace.as_deref(), ctx)
            }
        }
        (&Method::POST, Some(ns)) => {
            let obj = decode_strict(view, body, ctx)?;
            let stored = state.create(view, &ns, obj, &ctx.manager())?;
            Ok(object_response(StatusCode::CREATED, view, &stored, ctx))
        }
        (&Method::POST, None) => Err(ApiError::method_not_allowed(
            view.group_resource(),
            "create",
        )),
        (&Method::DELETE, _) => Err(ApiError::method_not_allowed(
            view.group_resource(),
            "deletecollection",
        )),
        _ => Err(ApiError::method_not_allowed(
            view.group_resource(),
            method.as_str(),
        )),
    }
}

/// Requests on `…/namespaces/{ns}/{resource}/{name}`.
fn item(
    state: &Arc<KubeState>,
    method: &Method,
    view: View,
    namespace: &str,
    name: &str,
    body: &[u8],
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    match *method {
        Method::GET => {
            let stored = state
                .get(view.resource(), namespace, name)
                .ok_or_else(|| ApiError::not_found(view.group_resource(), name))?;
            Ok(object_response(StatusCode::OK, view, &stored, ctx))
        }
        Method::PUT => {
            let obj = decode_strict(view, body, ctx)?;
            let (stored, created) = state.replace(view, namespace, name, obj, &ctx.manager())?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(status, view, &stored, ctx))
        }
        Method::PATCH => {
            let ct = ctx
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(ct)?;
            let stored = state.patch(view, namespace, name, kind, body, &ctx.manager())?;
            Ok(object_response(StatusCode::OK, view, &stored, ctx))
        }
        Method::DELETE => {
            let pre = preconditions(body)?;
            let gone = state.delete(view, namespace, name, &pre)?;
            let mut details = status::details(name, view.group(), view.plural());
            details["uid"] = gone.object.uid().into();
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details
            });
            Ok(json_response(
                StatusCode::OK,
                serde_json::to_vec(&status).unwrap_or_default(),
            ))
        }
        _ => Err(ApiError::method_not_allowed(
            view.group_resource(),
            method.as_str(),
        )),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

fn table_response(body: &Value) -> Response {
    let mut resp = json_response(StatusCode::OK, serde_json::to_vec(body).unwrap_or_default());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io"),
    );
    resp
}

fn object_response(status: StatusCode, view: View, stored: &Stored, ctx: &Ctx) -> Response {
    match ctx.table {
        Some(req) if status == StatusCode::OK => {
            let meta = TableListMeta {
                resource_version: stored.rv,
                continue_token: None,
                remaining: None,
            };
            table_response(&table(view, &[stored], req, Some(&meta), false))
        }
        _ => json_response(status, stored.full_json(view)),
    }
}

/// Decodes a body; with `fieldValidation=Strict` unknown fields are a 400 like the real server.
fn decode_strict(view: View, body: &[u8], ctx: &Ctx) -> Result<Object, ApiError> {
    let obj = decode(view, body)?;
    if ctx.q("fieldValidation") == Some("Strict") {
        let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let known = round_trip(view, input.clone());
        let mut unknown = Vec::new();
        unknown_fields(&input, &known, "", &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    Ok(obj)
}

fn round_trip(view: View, input: Value) -> Value {
    use k8s_openapi::api::{
        coordination::v1::Lease, core::v1::Event, events::v1::Event as V1Event,
    };
    let out = match view {
        View::CoreEvents => serde_json::from_value::<Event>(input)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok()),
        View::EventsV1 => serde_json::from_value::<V1Event>(input)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok()),
        View::Leases => serde_json::from_value::<Lease>(input)
            .ok()
            .and_then(|v| serde_json::to_value(v).ok()),
    };
    out.unwrap_or(Value::Null)
}

fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    None => out.push(p),
                    Some(kv) => unknown_fields(v, kv, &p, out),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                unknown_fields(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn preconditions(body: &[u8]) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
    let pre = &v["preconditions"];
    Ok(Preconditions {
        uid: pre["uid"].as_str().map(str::to_owned),
        resource_version: pre["resourceVersion"].as_str().map(str::to_owned),
    })
}

fn filter(view: View, ctx: &Ctx) -> Result<Filter, ApiError> {
    Ok(Filter {
        fields: FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default(), view)?,
        labels: LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())?,
    })
}

fn parse_u64(s: &str, what: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid {what}: {s:?}")))
}

fn watch(
    state: &Arc<KubeState>,
    view: View,
    namespace: Option<String>,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    let filter = filter(view, ctx)?;
    let send_initial = ctx.q("sendInitialEvents").map(|v| v == "true");
    if send_initial.is_some() && ctx.q("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::bad_request(
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    let start = match (ctx.q("resourceVersion"), send_initial) {
        (_, Some(true)) | (None | Some("0"), None) => WatchStart::Current { send_initial: true },
        (None | Some("0"), Some(false)) => WatchStart::Current {
            send_initial: false,
        },
        (Some(rv), _) => {
            let n: u64 = rv.parse().map_err(|_| {
                ApiError::unclassified(format!(
                    "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
                ))
            })?;
            // A position the server has not reached (a lagging cache in HA, or data restored
            // from a backup) is accepted: the watch stays open, quiet, until its timeout.
            WatchStart::From(n)
        }
    };
    let allow_bookmarks = ctx.q("allowWatchBookmarks") == Some("true");
    let settings = state.settings();
    let timeout = match ctx.q("timeoutSeconds") {
        Some(t) if parse_u64(t, "timeoutSeconds")? > 0 => {
            Duration::from_secs(parse_u64(t, "timeoutSeconds")?)
        }
        // The apiserver picks a random timeout in [min-request-timeout, 2×) = 30–60 min.
        _ => Duration::from_secs(rand::rng().random_range(1800..3600)),
    };
    state.stats.count_watch(view, &ctx.ids);
    let spec = WatchSpec {
        view,
        namespace,
        filter,
        start,
        // The real server ends the initial events with this bookmark whenever it sends them and
        // bookmarks are allowed, with or without sendInitialEvents.
        end_bookmark: allow_bookmarks
            && ctx.table.is_none()
            && start == WatchStart::Current { send_initial: true },
        bookmarks: allow_bookmarks
            && ctx.table.is_none()
            && (view == View::Leases || settings.event_bookmarks),
        bookmark_interval: settings.bookmark_interval,
        timeout,
        table: ctx.table,
        conn: ctx.conn.clone(),
        client: ctx.ids.clone(),
    };
    Ok(watch::serve(state, spec))
}

fn list(
    state: &Arc<KubeState>,
    view: View,
    namespace: Option<&str>,
    ctx: &Ctx,
) -> Result<Response, ApiError> {
    state.stats.count_list(view, &ctx.ids);
    let filter = filter(view, ctx)?;
    let limit = match ctx.q("limit") {
        Some(l) => Some(parse_u64(l, "limit")?).filter(|l| *l > 0),
        None => None,
    };
    let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let (snapshot, page) = {
        let store = state.lock();
        let (snapshot, start) = list_position(&store, ctx, limit.is_some())?;
        let keep = |s: &Stored| filter.matches(&s.object);
        let query = PageQuery {
            namespace,
            start: start.as_deref(),
            at: snapshot,
            limit,
            keep: &keep,
            count_remaining: filter.is_empty(),
        };
        (snapshot, store.page(view.resource(), &query))
    };
    let continue_token = page
        .next_key
        .as_deref()
        .map(|k| encode_continue(snapshot, k));
    if let Some(req) = ctx.table {
        let meta = TableListMeta {
            resource_version: snapshot,
            continue_token,
            remaining: page.remaining,
        };
        let items: Vec<&Stored> = page.items.iter().map(AsRef::as_ref).collect();
        return Ok(table_response(&table(
            view,
            &items,
            req,
            Some(&meta),
            false,
        )));
    }
    let mut meta = serde_json::Map::new();
    meta.insert("resourceVersion".into(), snapshot.to_string().into());
    if let Some(c) = continue_token {
        meta.insert("continue".into(), c.into());
    }
    if let Some(r) = page.remaining {
        meta.insert("remainingItemCount".into(), r.into());
    }
    let head =
        json!({"kind": view.list_kind(), "apiVersion": view.api_version(), "metadata": meta});
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop(); // reopen the object to append the items
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.item_json(view));
    }
    body.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, body))
}

/// The snapshot resourceVersion and first key of a LIST, from `continue` or
/// `resourceVersion`/`resourceVersionMatch` (`ListOptions` semantics; with a limit and no match
/// an explicit resourceVersion is exact).
fn list_position(store: &Store, ctx: &Ctx, paged: bool) -> Result<(u64, Option<String>), ApiError> {
    let rv = ctx.q("resourceVersion");
    let rv_match = ctx.q("resourceVersionMatch");
    if let Some(token) = ctx.q("continue") {
        if rv.is_some_and(|r| r != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        return match decode_continue(token)? {
            // The inconsistent continuation an expired token offered: the rest at the current state.
            (None, start) => Ok((store.rv(), Some(start))),
            (Some(snap), start) if snap < store.compacted() => {
                Err(ApiError::expired_continue(encode_continue_raw(-1, &start)))
            }
            (Some(snap), start) => Ok((snap, Some(start))),
        };
    }
    if rv_match.is_some() && rv.is_none() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let exact = match rv_match {
        Some("Exact") => true,
        Some("NotOlderThan") => false,
        None => paged,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported resourceVersionMatch {other:?}"
            )));
        }
    };
    let current = store.rv();
    match rv {
        None | Some("0") if rv_match == Some("Exact") => Err(ApiError::bad_request(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
        )),
        None | Some("0") => Ok((current, None)),
        Some(r) => {
            let n = r.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid resource version: resourceVersion: Invalid value: {r:?}: \
                     strconv.ParseUint: parsing {r:?}: invalid syntax"
                ))
            })?;
            if n > current {
                return Err(ApiError::too_large_resource_version(n, current));
            }
            if !exact {
                return Ok((current, None));
            }
            if n < store.compacted() {
                return Err(ApiError::expired(
                    "The resourceVersion for the provided list is too old.",
                ));
            }
            Ok((n, None))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Continue tokens: base64url(JSON {"v":"meta.k8s.io/v1","rv":N,"start":"<key>"}) like etcd3.

fn encode_continue(rv: u64, start: &str) -> String {
    encode_continue_raw(i64::try_from(rv).unwrap_or(i64::MAX), start)
}

/// `rv` -1 marks an inconsistent continuation (read at the current state).
fn encode_continue_raw(rv: i64, start: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64url_encode(&serde_json::to_vec(&raw).unwrap_or_default())
}

/// The snapshot (`None` for an inconsistent continuation, rv -1) and the first key.
fn decode_continue(token: &str) -> Result<(Option<u64>, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64url_decode(token).ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = match v["rv"].as_i64() {
        Some(-1) => None,
        Some(rv) if rv > 0 => Some(rv.unsigned_abs()),
        _ => return Err(bad()),
    };
    let start = v["start"].as_str().ok_or_else(bad)?.to_owned();
    Ok((rv, start))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0_u32, 0_u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        for key in ["ns-0/web-1.17f3a9b2c4d5e6f7", "a", "ab", "abc"] {
            let t = encode_continue(42, key);
            assert_eq!(decode_continue(&t).unwrap(), (Some(42), key.to_owned()));
        }
        assert_eq!(decode_continue("!!").unwrap_err().code, 400);
    }

    #[test]
    fn paths_map_to_views() {
        assert_eq!(
            parse_path("/api/v1/namespaces/ns/events/e1"),
            Some(Target::Item {
                view: View::CoreEvents,
                namespace: "ns".into(),
                name: "e1".into()
            })
        );
        assert_eq!(
            parse_path("/apis/events.k8s.io/v1/events"),
            Some(Target::Collection {
                view: View::EventsV1,
                namespace: None
            })
        );
        assert_eq!(parse_path("/apis/coordination.k8s.io/v1/pods"), None);
    }

    #[test]
    fn query_strings_like_kube_rs_builds_them() {
        let q = parse_query(Some("&limit=500&fieldSelector=type%3DWarning&continue="));
        assert_eq!(q["limit"], "500");
        assert_eq!(q["fieldSelector"], "type=Warning");
    }
}
