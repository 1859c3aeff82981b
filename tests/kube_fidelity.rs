//! Wire behaviour of a real kube-apiserver that kevents depends on, pinned against the real one
//! and, where the emulator agrees, against the emulator too (one body, two backends). Where they
//! differ the pin runs on the real one only and `tests/kube-apiserver/FIDELITY.md` says what the
//! emulator does instead. Every request here is raw HTTP so that status codes, bodies and framing
//! are checked exactly, not as a client library smooths them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[macro_use]
mod dual;

use std::time::{Duration, Instant};

use kevents::{
    config::{EventApi, FilterConfig},
    source::Filter,
};
use kevents_testkit::{
    apiserver::RealApiServerOptions, backend::Backend, kube::KubeEmulatorConfig,
};
use kube::client::Body;
use serde_json::{Value, json};

/// Every object these pins write goes here: a real kube-apiserver writes Events of its own
/// into `default`.
const NS: &str = "pins";
/// The core/v1 Events of `NS`.
const EVENTS: &str = "/api/v1/namespaces/pins/events";

/// One raw answer.
struct Answer {
    code: u16,
    headers: http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The JSON body, after checking the status code (the body is shown when it differs).
    fn expect(&self, code: u16) -> Value {
        assert_eq!(self.code, code, "{}", self.text);
        self.json()
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

/// Sends `request` with `body` through `client`, asking for JSON, and reads the whole answer.
async fn exchange(client: &kube::Client, request: http::request::Builder, body: Vec<u8>) -> Answer {
    let request = request.header("accept", "application/json");
    let response = client
        .send(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    let text =
        String::from_utf8(response.into_body().collect_bytes().await.unwrap().to_vec()).unwrap();
    Answer {
        code,
        headers,
        text,
    }
}

async fn raw(backend: &Backend, method: &str, path: &str, body: Option<(&str, Value)>) -> Answer {
    let mut request = http::Request::builder().method(method).uri(path);
    let bytes = match body {
        Some((content_type, value)) => {
            request = request.header("content-type", content_type);
            serde_json::to_vec(&value).unwrap()
        }
        None => Vec::new(),
    };
    exchange(&backend.client(), request, bytes).await
}

async fn get(backend: &Backend, path: &str) -> Answer {
    raw(backend, "GET", path, None).await
}

/// `method` with a JSON body.
async fn send(backend: &Backend, method: &str, path: &str, body: Value) -> Answer {
    raw(backend, method, path, Some(("application/json", body))).await
}

fn event(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": NS},
        "reason": "BackOff",
        "message": "Back-off restarting failed container",
        "type": "Warning",
        "count": 1,
        "source": {"component": "kubelet"},
    })
}

async fn create_event(backend: &Backend, name: &str) -> Value {
    send(backend, "POST", EVENTS, event(name)).await.expect(201)
}

fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The JSON lines of a watch body, each checked to be one compact object ending in `\n`.
fn watch_lines(answer: &Answer) -> Vec<Value> {
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert_eq!(answer.content_type(), "application/json");
    assert!(
        answer.text.is_empty() || answer.text.ends_with('\n'),
        "{:?}",
        answer.text
    );
    answer
        .text
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            // Compact: re-serialising (keys may come in another order) gives the same length.
            assert_eq!(
                line.len(),
                serde_json::to_string(&value).unwrap().len(),
                "{line}"
            );
            value
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 410 Gone: a watch, a list and a continue token past compaction.

async fn expired_positions(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    for name in ["gone-a", "gone-b", "gone-c"] {
        create_event(&backend, name).await;
    }
    let page = get(&backend, "/api/v1/namespaces/pins/events?limit=1")
        .await
        .expect(200);
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let listed_at = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    backend
        .compact_past(&listed_at, Duration::from_secs(30))
        .await
        .unwrap();

    // A watch: HTTP 200, then one in-stream ERROR line, then the end of the stream.
    let watch = get(&backend, &format!("/api/v1/events?watch=true&timeoutSeconds=5&allowWatchBookmarks=true&resourceVersion={listed_at}"))
    .await;
    let lines = watch_lines(&watch);
    assert_eq!(
        lines,
        vec![json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "The resourceVersion for the provided watch is too old.",
            "reason": "Expired", "code": 410}})],
        "{}",
        backend.name()
    );

    // An exact list at that resourceVersion: HTTP 410 with a Status body.
    let list = get(
        &backend,
        &format!("/api/v1/events?resourceVersion={listed_at}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(
        list.expect(410),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "The resourceVersion for the provided list is too old.",
            "reason": "Expired", "code": 410})
    );

    // The continue token of a list whose snapshot is compacted: HTTP 410 Expired.
    let status = get(
        &backend,
        &format!("/api/v1/namespaces/pins/events?limit=1&continue={token}"),
    )
    .await
    .expect(410);
    assert_eq!(status["reason"], "Expired");
    assert!(
        status["message"].as_str().unwrap().starts_with(
            "The provided continue parameter is too old to display a consistent list result."
        ),
        "{status}"
    );
    // The 410 offers an inconsistent continuation: the rest of the list at the current state
    // (kevents ignores it and relists).
    assert_eq!(
        status["message"],
        "The provided continue parameter is too old to display a consistent list result. You \
         can start a new list without the continue parameter, or use the continue token in \
         this response to retrieve the remainder of the results. Continuing with the provided \
         token results in an inconsistent list - objects that were created, modified, or \
         deleted between the time the first chunk was returned and now may show up in the \
         list.",
        "{}",
        backend.name()
    );
    let offered = status["metadata"]["continue"].as_str().unwrap_or_default();
    assert!(!offered.is_empty(), "{}: {status}", backend.name());
    let rest = get(
        &backend,
        &format!("/api/v1/namespaces/pins/events?limit=1&continue={offered}"),
    )
    .await;
    assert_eq!(rest.code, 200, "{}: {}", backend.name(), rest.text);
    let rest = rest.json();
    assert_eq!(rest["items"][0]["metadata"]["name"], "gone-b", "{rest}");
    assert!(
        rv(&rest).parse::<u64>().unwrap() > listed_at.parse::<u64>().unwrap(),
        "the continuation reads the current state: {rest}"
    );
    backend.shutdown().await;
}

dual!(
    a_compacted_position_answers_410_in_stream_for_a_watch_and_as_http_410_for_a_list,
    expired_positions,
    emulator: KubeEmulatorConfig::default(),
    real: RealApiServerOptions {
        watch_cache: false,
        etcd_compaction_interval: Duration::from_secs(2),
        ..RealApiServerOptions::default()
    }
);

// ---------------------------------------------------------------------------------------------
// Watch framing, event expiry, both Event views.

async fn watch_framing_and_expiry(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    let first = create_event(&backend, "framing-a").await;
    let from = rv(&first);
    let second = create_event(&backend, "framing-b").await;
    // A watch from `from` sees framing-b created, then deleted when its TTL (2 s) runs out.
    let watch = get(&backend, &format!("/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=6&allowWatchBookmarks=true&resourceVersion={from}"))
    .await;
    let lines = watch_lines(&watch);
    let seen: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap(),
                l["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    // framing-a was created at `from`, so only its expiry shows; both expire after framing-b's
    // creation, in no set order on the real one (etcd lease revocation); no BOOKMARK comes on an
    // Event watch.
    assert_eq!(
        seen[0],
        ("ADDED", "framing-b"),
        "{}: {seen:?}",
        backend.name()
    );
    let mut deleted = seen[1..].to_vec();
    deleted.sort_unstable();
    assert_eq!(
        deleted,
        vec![("DELETED", "framing-a"), ("DELETED", "framing-b")],
        "{}: {seen:?}",
        backend.name()
    );
    let mut versions = Vec::new();
    for line in &lines {
        assert_eq!(line["object"]["kind"], "Event");
        assert_eq!(line["object"]["apiVersion"], "v1");
        versions.push(rv(&line["object"]).parse::<u64>().unwrap());
    }
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let deleted_b = lines
        .iter()
        .find(|l| l["type"] == "DELETED" && l["object"]["metadata"]["name"] == "framing-b")
        .unwrap();
    assert_eq!(
        deleted_b["object"]["metadata"]["uid"],
        second["metadata"]["uid"]
    );
    assert_ne!(
        rv(&deleted_b["object"]),
        rv(&second),
        "a deletion is a new resourceVersion"
    );

    // List items carry no kind/apiVersion; the list has a resourceVersion.
    create_event(&backend, "framing-c").await;
    let list = get(&backend, EVENTS).await.json();
    assert_eq!(list["kind"], "EventList");
    assert!(list["metadata"]["resourceVersion"].is_string());
    let item = &list["items"][0];
    assert!(
        item.get("kind").is_none() && item.get("apiVersion").is_none(),
        "{item}"
    );

    // events.k8s.io/v1 is a view of the same object: same uid, same resourceVersion.
    let core = get(&backend, "/api/v1/namespaces/pins/events/framing-c")
        .await
        .json();
    let new = get(
        &backend,
        "/apis/events.k8s.io/v1/namespaces/pins/events/framing-c",
    )
    .await
    .json();
    assert_eq!(new["metadata"]["uid"], core["metadata"]["uid"]);
    assert_eq!(
        new["metadata"]["resourceVersion"],
        core["metadata"]["resourceVersion"]
    );
    assert_eq!(new["regarding"]["name"], "web-0");
    assert_eq!(new["note"], core["message"]);
    assert_eq!(new["deprecatedCount"], 1);
    backend.shutdown().await;
}

dual!(
    a_watch_is_one_json_object_per_line_and_an_expired_event_is_a_deleted_at_a_new_version,
    watch_framing_and_expiry,
    emulator: KubeEmulatorConfig {
        event_ttl: Duration::from_secs(2),
        ..KubeEmulatorConfig::default()
    },
    real: RealApiServerOptions {
        event_ttl: Duration::from_secs(2),
        ..RealApiServerOptions::default()
    }
);

// ---------------------------------------------------------------------------------------------
// Leases: optimistic concurrency and validation.

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/pins/leases";

async fn lease_conflicts(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "pin"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10,
                 "renewTime": "2026-01-01T00:00:00.123456Z"}});
    let created = send(&backend, "POST", LEASES, lease.clone())
        .await
        .expect(201);
    assert_eq!(created["spec"]["renewTime"], "2026-01-01T00:00:00.123456Z");

    let again = send(&backend, "POST", LEASES, lease.clone())
        .await
        .expect(409);
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(
        again["details"],
        json!({"name": "pin", "group": "coordination.k8s.io", "kind": "leases"})
    );

    let mut stale = lease.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let conflict = send(&backend, "PUT", &format!("{LEASES}/pin"), stale)
        .await
        .expect(409);
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(
        conflict["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"pin\": the object has been \
         modified; please apply your changes to the latest version and try again"
    );

    let invalid = send(&backend, "PUT", &format!("{LEASES}/pin"), lease.clone())
        .await
        .expect(422);
    assert_eq!(invalid["reason"], "Invalid");
    assert_eq!(
        invalid["details"]["causes"][0]["field"],
        "metadata.resourceVersion"
    );
    assert_eq!(
        invalid["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );
    // The storage layer raises this one, so it names the resource, not the kind.
    assert_eq!(
        invalid["message"],
        "leases.coordination.k8s.io \"pin\" is invalid: metadata.resourceVersion: Invalid \
         value: 0: must be specified for an update",
        "{}",
        backend.name()
    );
    assert_eq!(invalid["details"]["kind"], "leases");
    assert_eq!(invalid["details"]["group"], "coordination.k8s.io");

    // A PUT with a resourceVersion to a Lease that does not exist creates it.
    let mut absent = lease.clone();
    absent["metadata"] = json!({"name": "pin-2", "resourceVersion": "5"});
    let upsert = send(&backend, "PUT", &format!("{LEASES}/pin-2"), absent).await;
    assert_eq!(upsert.code, 201, "{}", upsert.text);

    // But an update of a Lease that was deleted meanwhile, carrying the deleted object's uid (as
    // a renewal does), fails on that uid precondition instead of bringing the Lease back.
    let renewed = upsert.json();
    let deleted = raw(&backend, "DELETE", &format!("{LEASES}/pin-2"), None).await;
    assert_eq!(deleted.code, 200, "{}", deleted.text);
    let renewal = send(&backend, "PUT", &format!("{LEASES}/pin-2"), renewed.clone()).await;
    let refused = renewal.expect(409);
    assert_eq!(refused["reason"], "Conflict", "{}", backend.name());
    let uid = renewed["metadata"]["uid"].as_str().unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains(&format!("Precondition failed: UID in precondition: {uid}")),
        "{}: {}",
        backend.name(),
        refused["message"]
    );
    assert_eq!(get(&backend, &format!("{LEASES}/pin-2")).await.code, 404);

    let missing = get(&backend, &format!("{LEASES}/nope")).await;
    assert_eq!(
        missing.expect(404)["details"],
        json!({"name": "nope", "group": "coordination.k8s.io", "kind": "leases"})
    );
    backend.shutdown().await;
}

dual!(
    lease_writes_answer_409_on_a_stale_or_duplicate_write_and_422_without_a_resource_version,
    lease_conflicts
);

async fn micro_times(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    // Go's time.Parse with RFC3339Micro: exactly six fractional digits, then Z or an offset.
    for (renew, rest, element) in [
        ("2026-01-01T00:00:00Z", "Z", ".000000"),
        ("2026-01-01T00:00:00.5Z", ".5Z", ".000000"),
        ("2026-01-01T00:00:00.1234567Z", "7Z", "Z07:00"),
    ] {
        let lease = json!({"metadata": {"name": "micro"},
            "spec": {"holderIdentity": "a", "renewTime": renew}});
        let answer = send(&backend, "POST", LEASES, lease).await;
        assert_eq!(answer.code, 400, "{renew}: {}", answer.text);
        let status = answer.json();
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(
            status["message"],
            format!(
                "Lease in version \"v1\" cannot be handled as a Lease: parsing time \"{renew}\" \
                 as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \"{rest}\" as \"{element}\""
            ),
            "{}",
            backend.name()
        );
    }
    // An Event's eventTime is a MicroTime too.
    let mut short = event("short-micro");
    short["eventTime"] = json!("2026-01-01T00:00:00.123Z");
    let answer = send(&backend, "POST", EVENTS, short).await;
    assert_eq!(
        answer.expect(400)["message"],
        "Event in version \"v1\" cannot be handled as a Event: parsing time \
         \"2026-01-01T00:00:00.123Z\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \
         \".123Z\" as \".000000\"",
        "{}",
        backend.name()
    );
    // Six digits with an offset are fine, and normalised to Z.
    let offset = json!({"metadata": {"name": "micro"},
        "spec": {"holderIdentity": "a", "renewTime": "2026-01-01T01:00:00.500000+01:00"}});
    let answer = send(&backend, "POST", LEASES, offset).await;
    assert_eq!(
        answer.expect(201)["spec"]["renewTime"],
        "2026-01-01T00:00:00.500000Z"
    );
    // What kevents sends (k8s-openapi's MicroTime) always has six digits and `Z`.
    let micro = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        "2026-01-01T00:00:00.5Z".parse().unwrap(),
    );
    assert_eq!(
        serde_json::to_value(&micro).unwrap(),
        "2026-01-01T00:00:00.500000Z"
    );
    // A `Time` (seconds) is lenient: fractions are dropped and offsets normalised to Z.
    let mut loose = event("loose-time");
    loose["firstTimestamp"] = json!("2026-01-01T00:00:00.123+01:00");
    let answer = send(&backend, "POST", EVENTS, loose).await;
    assert_eq!(answer.expect(201)["firstTimestamp"], "2025-12-31T23:00:00Z");
    backend.shutdown().await;
}

dual!(
    a_micro_time_without_exactly_six_fractional_digits_is_a_400,
    micro_times
);

// ---------------------------------------------------------------------------------------------
// Field selectors.

async fn field_selectors(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    create_event(&backend, "selected").await;
    // What kevents pushes down for a filter with one type, excluded reasons, one kind and an
    // excluded namespace: accepted for a list and a watch.
    let filter = Filter::new(&FilterConfig {
        namespaces_exclude: vec!["kube-system".into()],
        types: vec!["Warning".into()],
        reasons_exclude: vec!["Pulled".into(), "Created".into()],
        involved_kinds: vec!["Pod".into()],
        ..FilterConfig::default()
    });
    let selector = filter
        .field_selector(EventApi::CoreV1)
        .unwrap()
        .replace('!', "%21")
        .replace('=', "%3D")
        .replace(',', "%2C");
    let list = get(
        &backend,
        &format!("/api/v1/namespaces/pins/events?limit=500&fieldSelector={selector}"),
    )
    .await;
    assert_eq!(list.code, 200, "{selector}: {}", list.text);
    let list = list.json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["selected"]);
    let watch = get(&backend, &format!(
            "/api/v1/events?watch=true&timeoutSeconds=1&fieldSelector={selector}&resourceVersion={}",
            list["metadata"]["resourceVersion"].as_str().unwrap()
        ))
    .await;
    assert_eq!(watch.code, 200, "{}", watch.text);
    let excluded = get(
        &backend,
        "/api/v1/namespaces/pins/events?fieldSelector=type%3DNormal",
    )
    .await
    .json();
    assert_eq!(excluded["items"], json!([]));

    // A field the server cannot select on: HTTP 400 BadRequest.
    for (path, message) in [
        (
            "/api/v1/events?fieldSelector=count%3D1",
            "field label not supported: count",
        ),
        (
            "/apis/events.k8s.io/v1/events?fieldSelector=involvedObject.kind%3DPod",
            "field label not supported: involvedObject.kind",
        ),
    ] {
        let answer = get(&backend, path).await;
        assert_eq!(answer.code, 400, "{path}: {}", answer.text);
        let status = answer.json();
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["message"], message);
    }
    // The Lease watch kevents runs selects on metadata.name.
    let leases = get(
        &backend,
        &format!("{LEASES}?fieldSelector=metadata.name%3Dkevents"),
    )
    .await;
    assert_eq!(leases.code, 200, "{}", leases.text);
    let other = get(
        &backend,
        &format!("{LEASES}?fieldSelector=spec.holderIdentity%3Da"),
    )
    .await;
    assert_eq!(
        other.expect(400)["message"],
        "\"spec.holderIdentity\" is not a known field selector: only \"metadata.name\", \
         \"metadata.namespace\"",
        "{}",
        backend.name()
    );
    backend.shutdown().await;
}

dual!(
    the_field_selectors_kevents_pushes_down_are_accepted_and_unknown_fields_are_400,
    field_selectors
);

// ---------------------------------------------------------------------------------------------
// Initial watches, managedFields, Status details, OpenAPI.

/// A BOOKMARK object without its resourceVersion (which is the server's current one).
fn bookmark_without_version(line: &Value) -> Value {
    let mut object = line["object"].clone();
    let version = object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    assert!(version.is_some(), "{line}");
    object
}

async fn initial_watches(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    let created = create_event(&backend, "initial").await;
    let end = json!({"kind": "Event", "apiVersion": "v1",
        "metadata": {"annotations": {"k8s.io/initial-events-end": "true"}},
        "involvedObject": {}, "source": {}, "firstTimestamp": null, "lastTimestamp": null,
        "eventTime": null, "reportingComponent": "", "reportingInstance": ""});
    // From "0" and from no resourceVersion at all, with bookmarks allowed: the current objects
    // as ADDED, then a BOOKMARK annotated as the end of the initial events (even without
    // sendInitialEvents), holding the kind's Go zero value.
    for from in ["&resourceVersion=0", ""] {
        let started = Instant::now();
        let watch = get(&backend, &format!("/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=2&allowWatchBookmarks=true{from}"))
        .await;
        assert!(started.elapsed() >= Duration::from_secs(1));
        let lines = watch_lines(&watch);
        assert_eq!(lines.len(), 2, "{}: {lines:?}", backend.name());
        assert_eq!(lines[0]["type"], "ADDED");
        assert_eq!(
            lines[0]["object"]["metadata"]["uid"],
            created["metadata"]["uid"]
        );
        assert_eq!(lines[1]["type"], "BOOKMARK");
        assert_eq!(
            bookmark_without_version(&lines[1]),
            end,
            "{}",
            backend.name()
        );
        assert!(
            rv(&lines[1]["object"]).parse::<u64>().unwrap() >= rv(&created).parse::<u64>().unwrap()
        );
    }
    // Through events.k8s.io/v1, and for Leases (none exists in `pins`).
    let v1 = get(&backend, "/apis/events.k8s.io/v1/namespaces/pins/events?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion=0")
    .await;
    let lines = watch_lines(&v1);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        bookmark_without_version(&lines[1]),
        json!({"kind": "Event", "apiVersion": "events.k8s.io/v1",
            "metadata": {"annotations": {"k8s.io/initial-events-end": "true"}},
            "eventTime": null, "regarding": {}, "deprecatedSource": {},
            "deprecatedFirstTimestamp": null, "deprecatedLastTimestamp": null}),
        "{}",
        backend.name()
    );
    let leases = get(
        &backend,
        &format!("{LEASES}?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion=0"),
    )
    .await;
    let lines = watch_lines(&leases);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        bookmark_without_version(&lines[0]),
        json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
            "metadata": {"annotations": {"k8s.io/initial-events-end": "true"}}, "spec": {}}),
        "{}",
        backend.name()
    );
    // Without allowWatchBookmarks: only the ADDED.
    let plain = get(
        &backend,
        "/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=1&resourceVersion=0",
    )
    .await;
    assert_eq!(watch_lines(&plain).len(), 1);
    // From a resourceVersion: no initial events, no bookmark (Events get no periodic ones).
    let from = get(&backend, &format!(
            "/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion={}",
            rv(&created)
        ))
    .await;
    assert_eq!(watch_lines(&from), Vec::<Value>::new());

    // Status details of a core resource have no `group`.
    let missing = get(&backend, "/api/v1/namespaces/pins/events/nope").await;
    assert_eq!(
        missing.expect(404)["details"],
        json!({"name": "nope", "kind": "events"}),
        "{}",
        backend.name()
    );
    let gone = raw(
        &backend,
        "DELETE",
        "/api/v1/namespaces/pins/events/initial",
        None,
    )
    .await;
    assert_eq!(
        gone.expect(200)["details"],
        json!({"name": "initial", "kind": "events", "uid": created["metadata"]["uid"]}),
        "{}",
        backend.name()
    );

    // kubectl's client-side validation (`kubectl create -f`) reads /openapi/v3.
    let openapi = get(&backend, "/openapi/v3").await;
    assert!(
        openapi.expect(200)["paths"]["api/v1"].is_object(),
        "{}",
        openapi.text
    );
    backend.shutdown().await;
}

dual!(
    an_initial_watch_ends_with_a_bookmark_when_bookmarks_are_allowed,
    initial_watches
);

/// The `fieldsV1` of `manager`'s entry in `object`'s managedFields.
fn fields_of(object: &Value, manager: &str) -> Value {
    let entries = object["metadata"]["managedFields"].as_array().unwrap();
    let entry = entries
        .iter()
        .find(|e| e["manager"] == manager)
        .unwrap_or_else(|| panic!("no entry of {manager}: {object}"));
    assert_eq!(entry["operation"], "Update");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert!(entry["time"].as_str().unwrap().ends_with('Z'), "{entry}");
    entry["fieldsV1"].clone()
}

async fn managed_fields(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    let mut body = event("managed");
    body["metadata"]["labels"] = json!({"app": "web"});
    let created = send(
        &backend,
        "POST",
        "/api/v1/namespaces/pins/events?fieldManager=writer",
        body,
    )
    .await
    .expect(201);
    assert_eq!(
        created["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(created["metadata"]["managedFields"][0]["apiVersion"], "v1");
    // Every field the writer set and the zero object does not have; involvedObject is atomic.
    assert_eq!(
        fields_of(&created, "writer"),
        json!({"f:count": {}, "f:involvedObject": {}, "f:message": {},
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:reason": {},
            "f:source": {"f:component": {}}, "f:type": {}}),
        "{}",
        backend.name()
    );
    // Another manager's patch takes over the fields it changes.
    let patched = raw(
        &backend,
        "PATCH",
        "/api/v1/namespaces/pins/events/managed?fieldManager=counter",
        Some((
            "application/merge-patch+json",
            json!({"count": 2, "lastTimestamp": "2026-01-01T00:00:10Z"}),
        )),
    )
    .await
    .expect(200);
    assert_eq!(
        fields_of(&patched, "counter"),
        json!({"f:count": {}, "f:lastTimestamp": {}}),
        "{}",
        backend.name()
    );
    assert_eq!(
        fields_of(&patched, "writer"),
        json!({"f:involvedObject": {}, "f:message": {},
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:reason": {},
            "f:source": {"f:component": {}}, "f:type": {}}),
        "{}",
        backend.name()
    );
    // Without fieldManager, the User-Agent up to its first `/` names the manager.
    let lease = json!({"metadata": {"name": "managed"}, "spec": {"holderIdentity": "a",
        "leaseDurationSeconds": 10, "renewTime": "2026-01-01T00:00:00.000000Z"}});
    let request = http::Request::builder()
        .method("POST")
        .uri(LEASES)
        .header("content-type", "application/json")
        .header("user-agent", "kevents-pins/1.0 (linux)");
    let lease = exchange(
        &backend.client(),
        request,
        serde_json::to_vec(&lease).unwrap(),
    )
    .await
    .expect(201);
    assert_eq!(
        lease["metadata"]["managedFields"][0]["apiVersion"],
        "coordination.k8s.io/v1"
    );
    assert_eq!(
        fields_of(&lease, "kevents-pins"),
        json!({"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}, "f:renewTime": {}}}),
        "{}",
        backend.name()
    );
    backend.shutdown().await;
}

dual!(objects_carry_managed_fields_of_each_writer, managed_fields);

// ---------------------------------------------------------------------------------------------
// Status bodies kevents never provokes, pinned for the emulator's other users.

async fn status_bodies(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    create_event(&backend, "status").await;
    let status_of = |answer: &Answer| {
        let mut status = answer.json();
        status.as_object_mut().unwrap().remove("apiVersion");
        status.as_object_mut().unwrap().remove("kind");
        status.as_object_mut().unwrap().remove("metadata");
        status
    };
    // A resourceVersion that is not a number: 500 without a reason on a write and a watch, 400
    // on a list.
    let lease = json!({"metadata": {"name": "status"}, "spec": {"holderIdentity": "a"}});
    let created = send(&backend, "POST", LEASES, lease.clone()).await;
    assert_eq!(created.code, 201, "{}", created.text);
    let mut lease = lease;
    lease["metadata"]["resourceVersion"] = json!("abc");
    let put = send(&backend, "PUT", &format!("{LEASES}/status"), lease.clone()).await;
    assert_eq!(put.code, 500, "{}: {}", backend.name(), put.text);
    assert_eq!(
        status_of(&put),
        json!({"status": "Failure", "message": "strconv.ParseUint: parsing \"abc\": invalid syntax",
            "code": 500})
    );
    let mut event_put = event("status");
    event_put["metadata"]["resourceVersion"] = json!("abc");
    let put = send(
        &backend,
        "PUT",
        "/api/v1/namespaces/pins/events/status",
        event_put,
    )
    .await;
    assert_eq!(put.code, 500, "{}", put.text);
    let list = get(
        &backend,
        "/api/v1/namespaces/pins/events?resourceVersion=abc",
    )
    .await;
    assert_eq!(
        status_of(&list),
        json!({"status": "Failure", "reason": "BadRequest", "code": 400,
            "message": "invalid resource version: resourceVersion: Invalid value: \"abc\": \
                        strconv.ParseUint: parsing \"abc\": invalid syntax"}),
        "{}",
        backend.name()
    );
    let watch = get(
        &backend,
        "/api/v1/namespaces/pins/events?watch=true&resourceVersion=abc",
    )
    .await;
    assert_eq!(
        status_of(&watch),
        json!({"status": "Failure", "code": 500,
            "message": "resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \
                        \"abc\": invalid syntax"}),
        "{}",
        backend.name()
    );

    // A list at a resourceVersion the server has not reached: 504 at once, with one cause and no
    // Retry-After (kube's default client would retry a 504 for minutes, so not through it).
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    backend.write_kubeconfig(&kubeconfig, NS).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.default_retry = false;
    let once = kube::Client::try_from(config).unwrap();
    let request = http::Request::builder()
        .method("GET")
        .uri("/api/v1/namespaces/pins/events?resourceVersion=99999999");
    let started = Instant::now();
    let answer = exchange(&once, request, Vec::new()).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{}: {:?}",
        backend.name(),
        started.elapsed()
    );
    let status = answer.expect(504);
    assert!(answer.headers.get("retry-after").is_none());
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with("Timeout: Too large resource version: 99999999, current: "),
        "{status}"
    );
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(
        status["details"],
        json!({"causes": [{"reason": "ResourceVersionTooLarge",
            "message": "Too large resource version"}]}),
        "{}",
        backend.name()
    );

    // A new-style event (eventTime set) without its reporting fields.
    let mut incomplete = event("incomplete");
    incomplete["eventTime"] = json!("2026-01-01T00:00:00.123456Z");
    let status = send(&backend, "POST", EVENTS, incomplete).await.expect(422);
    let qualified = "name part must consist of alphanumeric characters, '-', '_' or '.', and \
                     must start and end with an alphanumeric character (e.g. 'MyName',  or \
                     'my.name',  or '123-abc', regex used for validation is \
                     '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    assert_eq!(
        status["details"],
        json!({"name": "incomplete", "kind": "Event", "causes": [
            {"reason": "FieldValueRequired", "message": "Required value", "field": "reportingComponent"},
            {"reason": "FieldValueInvalid", "message": "Invalid value: \"\": name part must be non-empty", "field": "reportingComponent"},
            {"reason": "FieldValueInvalid", "message": format!("Invalid value: \"\": {qualified}"), "field": "reportingComponent"},
            {"reason": "FieldValueRequired", "message": "Required value", "field": "reportingInstance"},
            {"reason": "FieldValueRequired", "message": "Required value", "field": "action"},
        ]}),
        "{}",
        backend.name()
    );
    assert_eq!(
        status["message"],
        format!(
            "Event \"incomplete\" is invalid: [reportingComponent: Required value, \
             reportingComponent: Invalid value: \"\": name part must be non-empty, \
             reportingComponent: Invalid value: \"\": {qualified}, reportingInstance: Required \
             value, action: Required value]"
        )
    );
    backend.shutdown().await;
}

dual!(
    status_bodies_name_the_resource_version_and_validation_errors_as_the_real_server_does,
    status_bodies
);

/// A watch from a resourceVersion the server has not reached (restored data, or a lagging cache)
/// is accepted and stays quiet until its timeout: no error, no event, no bookmark. kevents
/// notices by asking for the server's resourceVersion after such a session.
async fn future_watch(backend: Backend) {
    backend.ensure_namespace(NS).await.unwrap();
    let created = create_event(&backend, "future-a").await;
    let ahead = rv(&created).parse::<u64>().unwrap() + 1_000_000;
    let started = Instant::now();
    let watch = get(&backend, &format!("/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=2&allowWatchBookmarks=true&resourceVersion={ahead}"))
    .await;
    assert_eq!(watch.code, 200, "{}", watch.text);
    assert!(watch_lines(&watch).is_empty(), "{}", watch.text);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let list = get(&backend, "/api/v1/namespaces/pins/events?limit=1").await;
    let current: u64 = list.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(current < ahead, "{current} {ahead}");
}

dual!(a_watch_from_a_future_resource_version, future_watch);
