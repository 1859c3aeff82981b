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

use std::time::{Duration, Instant};

use kevents::{
    config::{EventApi, FilterConfig},
    emulator::kube::KubeEmulatorConfig,
    lab::{apiserver::RealApiServerOptions, backend::Backend},
    source::Filter,
};
use kube::client::Body;
use serde_json::{Value, json};

macro_rules! dual {
    ($name:ident, $body:ident, emulator: $emu:expr, real: $real:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn emulator() {
                $body(Backend::emulator($emu).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real_apiserver() {
                $body(Backend::real($real).await.unwrap()).await;
            }
        }
    };
    ($name:ident, $body:ident) => {
        dual!($name, $body, emulator: KubeEmulatorConfig::default(), real: RealApiServerOptions::default());
    };
}

/// Every object these pins write goes here: a real kube-apiserver writes Events of its own
/// into `default`.
const NS: &str = "pins";

/// One raw answer.
struct Answer {
    code: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
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
    request = request.header("accept", "application/json");
    let response = backend
        .client()
        .send(request.body(Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let code = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text =
        String::from_utf8(response.into_body().collect_bytes().await.unwrap().to_vec()).unwrap();
    Answer {
        code,
        content_type,
        text,
    }
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
    let answer = raw(
        backend,
        "POST",
        "/api/v1/namespaces/pins/events",
        Some(("application/json", event(name))),
    )
    .await;
    assert_eq!(answer.code, 201, "{}", answer.text);
    answer.json()
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
    assert_eq!(answer.content_type, "application/json");
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
    let page = raw(
        &backend,
        "GET",
        "/api/v1/namespaces/pins/events?limit=1",
        None,
    )
    .await;
    assert_eq!(page.code, 200);
    let page = page.json();
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
    let watch = raw(
        &backend,
        "GET",
        &format!("/api/v1/events?watch=true&timeoutSeconds=5&allowWatchBookmarks=true&resourceVersion={listed_at}"),
        None,
    )
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
    let list = raw(
        &backend,
        "GET",
        &format!("/api/v1/events?resourceVersion={listed_at}&resourceVersionMatch=Exact"),
        None,
    )
    .await;
    assert_eq!(list.code, 410);
    assert_eq!(
        list.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "The resourceVersion for the provided list is too old.",
            "reason": "Expired", "code": 410})
    );

    // The continue token of a list whose snapshot is compacted: HTTP 410 Expired.
    let next = raw(
        &backend,
        "GET",
        &format!("/api/v1/namespaces/pins/events?limit=1&continue={token}"),
        None,
    )
    .await;
    assert_eq!(next.code, 410, "{}", next.text);
    let status = next.json();
    assert_eq!(status["reason"], "Expired");
    assert!(
        status["message"].as_str().unwrap().starts_with(
            "The provided continue parameter is too old to display a consistent list result."
        ),
        "{status}"
    );
    if backend.is_real() {
        // The real one offers an inconsistent continuation (kevents ignores it and relists); the
        // emulator sends neither the token nor the second half of the message.
        assert_eq!(
            status["message"],
            "The provided continue parameter is too old to display a consistent list result. You \
             can start a new list without the continue parameter, or use the continue token in \
             this response to retrieve the remainder of the results. Continuing with the provided \
             token results in an inconsistent list - objects that were created, modified, or \
             deleted between the time the first chunk was returned and now may show up in the \
             list."
        );
        assert!(
            !status["metadata"]["continue"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{status}"
        );
    }
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
    let watch = raw(
        &backend,
        "GET",
        &format!("/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=6&allowWatchBookmarks=true&resourceVersion={from}"),
        None,
    )
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
    let list = raw(&backend, "GET", "/api/v1/namespaces/pins/events", None)
        .await
        .json();
    assert_eq!(list["kind"], "EventList");
    assert!(list["metadata"]["resourceVersion"].is_string());
    let item = &list["items"][0];
    assert!(
        item.get("kind").is_none() && item.get("apiVersion").is_none(),
        "{item}"
    );

    // events.k8s.io/v1 is a view of the same object: same uid, same resourceVersion.
    let core = raw(
        &backend,
        "GET",
        "/api/v1/namespaces/pins/events/framing-c",
        None,
    )
    .await
    .json();
    let new = raw(
        &backend,
        "GET",
        "/apis/events.k8s.io/v1/namespaces/pins/events/framing-c",
        None,
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
    let created = raw(
        &backend,
        "POST",
        LEASES,
        Some(("application/json", lease.clone())),
    )
    .await;
    assert_eq!(created.code, 201, "{}", created.text);
    let created = created.json();
    assert_eq!(created["spec"]["renewTime"], "2026-01-01T00:00:00.123456Z");

    let again = raw(
        &backend,
        "POST",
        LEASES,
        Some(("application/json", lease.clone())),
    )
    .await;
    assert_eq!(again.code, 409);
    let again = again.json();
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(
        again["details"],
        json!({"name": "pin", "group": "coordination.k8s.io", "kind": "leases"})
    );

    let mut stale = lease.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let conflict = raw(
        &backend,
        "PUT",
        &format!("{LEASES}/pin"),
        Some(("application/json", stale)),
    )
    .await;
    assert_eq!(conflict.code, 409);
    let conflict = conflict.json();
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(
        conflict["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"pin\": the object has been \
         modified; please apply your changes to the latest version and try again"
    );

    let unconditional = raw(
        &backend,
        "PUT",
        &format!("{LEASES}/pin"),
        Some(("application/json", lease.clone())),
    )
    .await;
    assert_eq!(unconditional.code, 422, "{}", unconditional.text);
    let invalid = unconditional.json();
    assert_eq!(invalid["reason"], "Invalid");
    assert_eq!(
        invalid["details"]["causes"][0]["field"],
        "metadata.resourceVersion"
    );
    assert_eq!(
        invalid["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );
    if backend.is_real() {
        // The emulator says `Lease.coordination.k8s.io`, `kind: Lease` and `0x0` here.
        assert_eq!(
            invalid["message"],
            "leases.coordination.k8s.io \"pin\" is invalid: metadata.resourceVersion: Invalid \
             value: 0: must be specified for an update"
        );
        assert_eq!(invalid["details"]["kind"], "leases");
    }

    // A PUT with a resourceVersion to a Lease that does not exist creates it.
    let mut absent = lease.clone();
    absent["metadata"] = json!({"name": "pin-2", "resourceVersion": "5"});
    let upsert = raw(
        &backend,
        "PUT",
        &format!("{LEASES}/pin-2"),
        Some(("application/json", absent)),
    )
    .await;
    assert_eq!(upsert.code, 201, "{}", upsert.text);

    let missing = raw(&backend, "GET", &format!("{LEASES}/nope"), None).await;
    assert_eq!(missing.code, 404);
    assert_eq!(
        missing.json()["details"],
        json!({"name": "nope", "group": "coordination.k8s.io", "kind": "leases"})
    );
    backend.shutdown().await;
}

dual!(
    lease_writes_answer_409_on_a_stale_or_duplicate_write_and_422_without_a_resource_version,
    lease_conflicts
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_time_without_exactly_six_fractional_digits_is_refused_by_the_real_apiserver() {
    let backend = Backend::real(RealApiServerOptions::default())
        .await
        .unwrap();
    backend.ensure_namespace(NS).await.unwrap();
    for renew in [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.5Z",
        "2026-01-01T00:00:00.1234567Z",
    ] {
        let lease = json!({"metadata": {"name": "micro"},
            "spec": {"holderIdentity": "a", "renewTime": renew}});
        let answer = raw(&backend, "POST", LEASES, Some(("application/json", lease))).await;
        assert_eq!(answer.code, 400, "{renew}: {}", answer.text);
        let status = answer.json();
        assert_eq!(status["reason"], "BadRequest");
        let message = status["message"].as_str().unwrap();
        assert!(
            message
                .starts_with("Lease in version \"v1\" cannot be handled as a Lease: parsing time")
                && message.contains("as \"2006-01-02T15:04:05.000000Z07:00\""),
            "{message}"
        );
    }
    // Six digits with an offset are fine, and normalised to Z.
    let offset = json!({"metadata": {"name": "micro"},
        "spec": {"holderIdentity": "a", "renewTime": "2026-01-01T01:00:00.500000+01:00"}});
    let answer = raw(&backend, "POST", LEASES, Some(("application/json", offset))).await;
    assert_eq!(answer.code, 201, "{}", answer.text);
    assert_eq!(
        answer.json()["spec"]["renewTime"],
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
    let answer = raw(
        &backend,
        "POST",
        "/api/v1/namespaces/pins/events",
        Some(("application/json", loose)),
    )
    .await;
    assert_eq!(answer.code, 201, "{}", answer.text);
    assert_eq!(answer.json()["firstTimestamp"], "2025-12-31T23:00:00Z");
    backend.shutdown().await;
}

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
    let list = raw(
        &backend,
        "GET",
        &format!("/api/v1/namespaces/pins/events?limit=500&fieldSelector={selector}"),
        None,
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
    let watch = raw(
        &backend,
        "GET",
        &format!(
            "/api/v1/events?watch=true&timeoutSeconds=1&fieldSelector={selector}&resourceVersion={}",
            list["metadata"]["resourceVersion"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(watch.code, 200, "{}", watch.text);
    let excluded = raw(
        &backend,
        "GET",
        "/api/v1/namespaces/pins/events?fieldSelector=type%3DNormal",
        None,
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
        let answer = raw(&backend, "GET", path, None).await;
        assert_eq!(answer.code, 400, "{path}: {}", answer.text);
        let status = answer.json();
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["message"], message);
    }
    // The Lease watch kevents runs selects on metadata.name.
    let leases = raw(
        &backend,
        "GET",
        &format!("{LEASES}?fieldSelector=metadata.name%3Dkevents"),
        None,
    )
    .await;
    assert_eq!(leases.code, 200, "{}", leases.text);
    let other = raw(
        &backend,
        "GET",
        &format!("{LEASES}?fieldSelector=spec.holderIdentity%3Da"),
        None,
    )
    .await;
    assert_eq!(other.code, 400);
    if backend.is_real() {
        // The emulator says `field label not supported: spec.holderIdentity`.
        assert_eq!(
            other.json()["message"],
            "\"spec.holderIdentity\" is not a known field selector: only \"metadata.name\", \
             \"metadata.namespace\""
        );
    }
    backend.shutdown().await;
}

dual!(
    the_field_selectors_kevents_pushes_down_are_accepted_and_unknown_fields_are_400,
    field_selectors
);

// ---------------------------------------------------------------------------------------------
// Real-only behaviour the emulator does not have yet (see FIDELITY.md).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_apiserver_ends_an_initial_watch_with_a_bookmark_and_serves_openapi_v3() {
    let backend = Backend::real(RealApiServerOptions::default())
        .await
        .unwrap();
    backend.ensure_namespace(NS).await.unwrap();
    let created = create_event(&backend, "initial").await;
    // A watch from "0" with bookmarks allowed: the current objects as ADDED, then a BOOKMARK
    // annotated as the end of the initial events (even without sendInitialEvents).
    let started = Instant::now();
    let watch = raw(
        &backend,
        "GET",
        "/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=2&allowWatchBookmarks=true&resourceVersion=0",
        None,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let lines = watch_lines(&watch);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(
        lines[0]["object"]["metadata"]["uid"],
        created["metadata"]["uid"]
    );
    assert_eq!(lines[1]["type"], "BOOKMARK");
    assert_eq!(lines[1]["object"]["kind"], "Event");
    assert_eq!(lines[1]["object"]["apiVersion"], "v1");
    assert_eq!(
        lines[1]["object"]["metadata"]["annotations"],
        json!({"k8s.io/initial-events-end": "true"})
    );
    // Without allowWatchBookmarks: only the ADDED.
    let plain = raw(
        &backend,
        "GET",
        "/api/v1/namespaces/pins/events?watch=true&timeoutSeconds=1&resourceVersion=0",
        None,
    )
    .await;
    assert_eq!(watch_lines(&plain).len(), 1);

    // Objects carry managedFields (kevents' records drop them).
    assert!(created["metadata"]["managedFields"].is_array(), "{created}");
    // Status details of a core resource have no `group` (the emulator sends `"group": ""`).
    let missing = raw(&backend, "GET", "/api/v1/namespaces/pins/events/nope", None).await;
    assert_eq!(missing.code, 404);
    assert_eq!(
        missing.json()["details"],
        json!({"name": "nope", "kind": "events"})
    );

    // kubectl's client-side validation (`kubectl create -f`) reads /openapi/v3.
    let openapi = raw(&backend, "GET", "/openapi/v3", None).await;
    assert_eq!(openapi.code, 200);
    assert!(
        openapi.json()["paths"]["api/v1"].is_object(),
        "{}",
        openapi.text
    );
    backend.shutdown().await;
}
