//! Unit tests of the transform: both Event views, timestamps, bad input, record shapes, and the
//! ADX manifest `manifests/adx/kube-events.kql` checked against real records.

use std::time::Instant;

use serde_json::{Value, json};

use super::*;

const KQL: &str = include_str!("../../manifests/adx/kube-events.kql");

/// The seed's column count (without the optional `Uid` and `ResourceVersion`).
const SEED_COLUMNS: usize = 20;

/// The columns that hold times.
const TIME_COLUMNS: [&str; 4] = [
    "TimeGenerated",
    "CreationTimestamp",
    "FirstSeen",
    "LastSeen",
];

/// Asserts that each column of `expected` (a JSON object) has that value in `row`.
fn assert_columns(row: &Value, expected: &Value) {
    for (column, value) in expected.as_object().unwrap() {
        assert_eq!(&row[column], value, "{column}");
    }
}

fn options() -> RecordOptions {
    RecordOptions {
        cluster: "aks-azst-1".into(),
        region: "northeurope".into(),
        environment: "prod".into(),
        ..RecordOptions::default()
    }
}

fn with_extra_columns(shape: RecordShape) -> RecordOptions {
    RecordOptions {
        shape,
        include_uid: true,
        include_resource_version: true,
        ..options()
    }
}

fn record(event: &Value, options: &RecordOptions) -> Value {
    let bytes = to_record(event, options).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn flat(event: &Value) -> Value {
    record(event, &options())
}

fn legacy_event() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": "web-1.17c1a2b3",
            "namespace": "shop",
            "uid": "0b7e-legacy",
            "resourceVersion": "1001",
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "managedFields": [{"manager": "kubelet-manager-marker", "operation": "Update"}]
        },
        "involvedObject": {
            "kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "p-1",
            "apiVersion": "v1", "resourceVersion": "55", "fieldPath": "spec.containers{web}"
        },
        "reason": "BackOff",
        "message": "Back-off restarting failed container web",
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": "2024-05-01T10:00:00Z",
        "lastTimestamp": "2024-05-01T10:05:00Z",
        "count": 5,
        "type": "Warning",
        "eventTime": null,
        "reportingComponent": "kubelet",
        "reportingInstance": "node-a"
    })
}

fn new_style_event() -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": "coredns-1.17c1",
            "namespace": "kube-system",
            "uid": "9f2c-new",
            "resourceVersion": "2002",
            "creationTimestamp": "2024-05-01T10:00:00Z"
        },
        "eventTime": "2024-05-01T10:00:00.123456Z",
        "series": {"count": 3, "lastObservedTime": "2024-05-01T10:20:00.654321Z"},
        "reportingController": "default-scheduler",
        "reportingInstance": "default-scheduler-control-plane",
        "action": "Scheduling",
        "reason": "FailedScheduling",
        "regarding": {
            "kind": "Pod", "namespace": "kube-system", "name": "coredns-1", "apiVersion": "v1"
        },
        "note": "0/3 nodes are available",
        "type": "Warning"
    })
}

/// The core/v1 view of an event written through events.k8s.io: `eventTime` set, the legacy
/// timestamps null, no count.
fn core_view_of_new_style_event() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": "coredns-1.17c2",
            "namespace": "kube-system",
            "uid": "9f2c-core-view",
            "resourceVersion": "2003",
            "creationTimestamp": "2024-05-01T10:00:00Z"
        },
        "involvedObject": {
            "kind": "Pod", "namespace": "kube-system", "name": "coredns-1", "apiVersion": "v1"
        },
        "reason": "Scheduled",
        "message": "Successfully assigned kube-system/coredns-1 to node-b",
        "source": {},
        "firstTimestamp": null,
        "lastTimestamp": null,
        "type": "Normal",
        "eventTime": "2024-05-01T10:00:00.500000Z",
        "action": "Binding",
        "reportingComponent": "default-scheduler",
        "reportingInstance": "default-scheduler-control-plane"
    })
}

/// One event of each kind the transform reads: core/v1, events.k8s.io/v1, and the core/v1 view
/// of a new-style event.
fn every_kind_of_event() -> [Value; 3] {
    [
        legacy_event(),
        new_style_event(),
        core_view_of_new_style_event(),
    ]
}

/// Byte offset of each key of `FLAT_COLUMNS` in `bytes`, for keys present.
fn key_offsets(bytes: &[u8]) -> Vec<(usize, &'static str)> {
    let text = std::str::from_utf8(bytes).unwrap();
    FLAT_COLUMNS
        .iter()
        .filter_map(|c| text.find(&format!("\"{c}\":")).map(|at| (at, *c)))
        .collect()
}

#[test]
fn a_legacy_core_v1_event_becomes_the_seed_row() {
    let row = flat(&legacy_event());
    assert_eq!(
        row,
        json!({
            "TimeGenerated": "2024-05-01T10:05:00Z",
            "Namespace": "shop",
            "Name": "web-1",
            "Kind": "Pod",
            "ApiVersion": "v1",
            "KubeEventType": "Warning",
            "Action": "",
            "Reason": "BackOff",
            "Message": "Back-off restarting failed container web",
            "Count": "5",
            "CreationTimestamp": "2024-05-01T10:00:00Z",
            "FirstSeen": "2024-05-01T10:00:00Z",
            "LastSeen": "2024-05-01T10:05:00Z",
            "SourceComponent": "kubelet",
            "SourceComputer": "node-a",
            "ReportingComponent": "kubelet",
            "ReportingComputer": "node-a",
            "Cluster": "aks-azst-1",
            "Region": "northeurope",
            "Environment": "prod"
        })
    );
}

#[test]
fn an_events_k8s_io_v1_event_maps_regarding_note_series_and_reporting_controller() {
    let row = flat(&new_style_event());
    assert_eq!(
        row,
        json!({
            "TimeGenerated": "2024-05-01T10:20:00.654321Z",
            "Namespace": "kube-system",
            "Name": "coredns-1",
            "Kind": "Pod",
            "ApiVersion": "v1",
            "KubeEventType": "Warning",
            "Action": "Scheduling",
            "Reason": "FailedScheduling",
            "Message": "0/3 nodes are available",
            "Count": "3",
            "CreationTimestamp": "2024-05-01T10:00:00Z",
            "FirstSeen": "2024-05-01T10:00:00.123456Z",
            "LastSeen": "2024-05-01T10:20:00.654321Z",
            "SourceComponent": "",
            "SourceComputer": "",
            "ReportingComponent": "default-scheduler",
            "ReportingComputer": "default-scheduler-control-plane",
            "Cluster": "aks-azst-1",
            "Region": "northeurope",
            "Environment": "prod"
        })
    );
}

#[test]
fn an_events_k8s_io_v1_event_reads_its_deprecated_legacy_fields() {
    let mut event = new_style_event();
    let fields = event.as_object_mut().unwrap();
    fields.remove("series");
    fields.insert("deprecatedCount".into(), json!(7));
    fields.insert(
        "deprecatedFirstTimestamp".into(),
        json!("2024-05-01T09:00:00Z"),
    );
    fields.insert(
        "deprecatedLastTimestamp".into(),
        json!("2024-05-01T11:00:00Z"),
    );
    fields.insert(
        "deprecatedSource".into(),
        json!({"component": "kubelet", "host": "node-c"}),
    );
    let row = flat(&event);
    assert_columns(
        &row,
        &json!({"Count": "7", "FirstSeen": "2024-05-01T09:00:00Z",
            "LastSeen": "2024-05-01T11:00:00Z", "TimeGenerated": "2024-05-01T11:00:00Z",
            "SourceComponent": "kubelet", "SourceComputer": "node-c"}),
    );
}

#[test]
fn an_event_without_api_version_is_recognised_as_events_k8s_io_by_its_fields() {
    let mut event = new_style_event();
    event.as_object_mut().unwrap().remove("apiVersion");
    let row = flat(&event);
    assert_columns(
        &row,
        &json!({"Name": "coredns-1", "Message": "0/3 nodes are available",
            "ReportingComponent": "default-scheduler"}),
    );

    let mut legacy = legacy_event();
    legacy.as_object_mut().unwrap().remove("apiVersion");
    assert_eq!(flat(&legacy), flat(&legacy_event()));
}

#[test]
fn the_core_v1_view_of_a_new_style_event_uses_event_time_for_first_and_last_seen() {
    let row = flat(&core_view_of_new_style_event());
    assert_columns(
        &row,
        &json!({"FirstSeen": "2024-05-01T10:00:00.500000Z",
            "LastSeen": "2024-05-01T10:00:00.500000Z",
            "TimeGenerated": "2024-05-01T10:00:00.500000Z", "Count": "", "Action": "Binding",
            "ReportingComponent": "default-scheduler", "SourceComponent": "",
            "SourceComputer": ""}),
    );
}

#[test]
fn the_core_v1_view_of_a_series_takes_count_and_last_seen_from_the_series() {
    let mut event = core_view_of_new_style_event();
    event.as_object_mut().unwrap().insert(
        "series".into(),
        json!({"count": 12, "lastObservedTime": "2024-05-01T10:30:00.000001Z"}),
    );
    let row = flat(&event);
    assert_columns(
        &row,
        &json!({"Count": "12", "FirstSeen": "2024-05-01T10:00:00.500000Z",
            "LastSeen": "2024-05-01T10:30:00.000001Z",
            "TimeGenerated": "2024-05-01T10:30:00.000001Z"}),
    );
}

#[test]
fn time_generated_is_the_newest_of_series_last_timestamp_event_time_and_creation() {
    let base = "2024-05-01T10:00:00Z";
    let newest = "2024-05-01T12:00:00Z";
    let candidates = [
        "series.lastObservedTime",
        "lastTimestamp",
        "eventTime",
        "metadata.creationTimestamp",
    ];
    for winner in candidates {
        let at = |field: &str| if field == winner { newest } else { base };
        let event = json!({
            "apiVersion": "v1",
            "metadata": {
                "uid": "u",
                "resourceVersion": "1",
                "creationTimestamp": at("metadata.creationTimestamp")
            },
            "series": {"count": 2, "lastObservedTime": at("series.lastObservedTime")},
            "lastTimestamp": at("lastTimestamp"),
            "eventTime": at("eventTime"),
        });
        assert_eq!(
            flat(&event)["TimeGenerated"],
            newest,
            "{winner} is the newest"
        );
        assert_eq!(
            event_time(&event),
            Some(newest.parse().unwrap()),
            "{winner} is the newest"
        );
    }
}

#[test]
fn first_seen_is_not_what_decides_time_generated() {
    let mut event = legacy_event();
    event["firstTimestamp"] = json!("2030-01-01T00:00:00Z");
    assert_eq!(flat(&event)["TimeGenerated"], "2024-05-01T10:05:00Z");
}

#[test]
fn offsets_such_as_plus_two_hours_are_normalised_to_utc_with_z() {
    let mut event = legacy_event();
    event["firstTimestamp"] = json!("2024-05-01T12:00:00+02:00");
    event["lastTimestamp"] = json!("2024-05-01T12:05:00+02:00");
    event["eventTime"] = json!("2024-05-01T12:00:00.123456+02:00");
    event["metadata"]["creationTimestamp"] = json!("2024-05-01T05:00:00-05:00");
    let row = flat(&event);
    assert_columns(
        &row,
        &json!({"FirstSeen": "2024-05-01T10:00:00Z", "LastSeen": "2024-05-01T10:05:00Z",
            "CreationTimestamp": "2024-05-01T10:00:00Z", "TimeGenerated": "2024-05-01T10:05:00Z"}),
    );

    event["lastTimestamp"] = Value::Null;
    assert_eq!(flat(&event)["TimeGenerated"], "2024-05-01T10:00:00.123456Z");
}

#[test]
fn microsecond_precision_is_kept_even_with_trailing_zeros() {
    let mut event = core_view_of_new_style_event();
    for (input, output) in [
        ("2024-05-01T10:00:00.123456Z", "2024-05-01T10:00:00.123456Z"),
        ("2024-05-01T10:00:00.120000Z", "2024-05-01T10:00:00.120000Z"),
        ("2024-05-01T10:00:00.000001Z", "2024-05-01T10:00:00.000001Z"),
        (
            "2024-05-01T10:00:00.123456789Z",
            "2024-05-01T10:00:00.123456789Z",
        ),
        ("2024-05-01T10:00:00.000000Z", "2024-05-01T10:00:00Z"),
    ] {
        event["eventTime"] = json!(input);
        assert_eq!(flat(&event)["FirstSeen"], output, "from {input}");
    }
}

#[test]
fn an_event_with_only_metadata_still_yields_a_record_with_empty_strings_and_null_times() {
    let event = json!({"metadata": {"name": "bare", "namespace": "ns"}});
    let row = flat(&event);
    let columns = row.as_object().unwrap();
    assert_eq!(columns.len(), SEED_COLUMNS);
    for column in TIME_COLUMNS {
        assert_eq!(row[column], Value::Null, "{column}");
    }
    assert_eq!(row["Namespace"], "ns");
    for column in [
        "Name",
        "Kind",
        "ApiVersion",
        "KubeEventType",
        "Action",
        "Reason",
        "Message",
        "Count",
        "SourceComponent",
        "SourceComputer",
        "ReportingComponent",
        "ReportingComputer",
    ] {
        assert_eq!(row[column], "", "{column}");
    }
    assert_eq!(event_time(&event), None);

    let fluent_bit = record(&event, &options_with_shape(RecordShape::FluentBit));
    assert_eq!(fluent_bit["TimeGenerated"], Value::Null);
    assert_eq!(fluent_bit["log"]["Count"], Value::Null);
    assert_eq!(fluent_bit["log"]["SourceComputer"], "");
}

#[test]
fn a_cluster_scoped_involved_object_takes_the_events_own_namespace() {
    let mut event = legacy_event();
    event["involvedObject"] = json!({"kind": "Node", "name": "node-a", "uid": "node-a"});
    event["metadata"]["namespace"] = json!("default");
    let row = flat(&event);
    assert_columns(
        &row,
        &json!({"Namespace": "default", "Kind": "Node", "Name": "node-a", "ApiVersion": ""}),
    );
}

#[test]
fn wrong_typed_fields_read_as_missing_and_the_event_is_kept() {
    let event = json!({
        "apiVersion": "v1",
        "metadata": {
            "namespace": "shop", "uid": "u-bad", "resourceVersion": "9",
            "creationTimestamp": "not a time"
        },
        "involvedObject": 5,
        "source": "node-a",
        "count": "x",
        "message": 7,
        "reason": "Kept",
        "type": ["Warning"],
        "firstTimestamp": 12,
        "lastTimestamp": "yesterday",
        "eventTime": "2024-05-01T10:00:00",
        "series": [],
        "reportingComponent": {"name": "kubelet"},
        "reportingInstance": "node-a",
    });
    let row = flat(&event);
    assert_columns(
        &row,
        &json!({"Reason": "Kept", "ReportingComputer": "node-a", "Namespace": "shop"}),
    );
    for column in [
        "Name",
        "Kind",
        "Message",
        "Count",
        "KubeEventType",
        "SourceComputer",
    ] {
        assert_eq!(row[column], "", "{column}");
    }
    for column in TIME_COLUMNS {
        assert_eq!(row[column], Value::Null, "{column}");
    }
}

#[test]
fn counts_that_are_zero_negative_or_fractional_read_as_missing() {
    for bad in [json!(0), json!(-3), json!(2.5), json!(null)] {
        let mut event = legacy_event();
        event["count"] = bad.clone();
        assert_eq!(flat(&event)["Count"], "", "count {bad}");
    }
}

#[test]
fn only_a_non_object_or_an_event_without_metadata_is_an_error() {
    let error = to_record(&json!("an event"), &options()).unwrap_err();
    assert!(matches!(error, Error::NotAnObject), "{error}");

    let error = to_record(&json!({"reason": "NoMeta"}), &options()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "event field metadata is missing or empty"
    );

    let error = to_record(&json!({"metadata": "x"}), &options()).unwrap_err();
    assert_eq!(error.to_string(), "event field metadata is not an object");
}

#[test]
fn event_key_is_uid_and_resource_version() {
    assert_eq!(
        event_key(&legacy_event()).unwrap(),
        EventKey {
            uid: "0b7e-legacy".into(),
            resource_version: "1001".into()
        }
    );
}

#[test]
fn event_key_errors_name_metadata_uid_and_metadata_resource_version() {
    let no_uid = json!({"metadata": {"resourceVersion": "1"}});
    let error = event_key(&no_uid).unwrap_err();
    assert!(error.to_string().contains("metadata.uid"), "{error}");

    let empty_uid = json!({"metadata": {"uid": "", "resourceVersion": "1"}});
    let error = event_key(&empty_uid).unwrap_err();
    assert!(error.to_string().contains("metadata.uid"), "{error}");

    let no_rv = json!({"metadata": {"uid": "u"}});
    let error = event_key(&no_rv).unwrap_err();
    assert_eq!(
        error.to_string(),
        "event field metadata.resourceVersion is missing or empty"
    );

    let numeric_rv = json!({"metadata": {"uid": "u", "resourceVersion": 7}});
    let error = event_key(&numeric_rv).unwrap_err();
    assert_eq!(
        error.to_string(),
        "event field metadata.resourceVersion is not a string"
    );

    let error = event_key(&json!({})).unwrap_err();
    assert!(error.to_string().contains("metadata"), "{error}");
}

fn options_with_shape(shape: RecordShape) -> RecordOptions {
    RecordOptions { shape, ..options() }
}

#[test]
fn the_fluent_bit_shape_nests_the_seed_keys_under_log_with_a_numeric_count() {
    let event = legacy_event();
    let wrapped = record(&event, &options_with_shape(RecordShape::FluentBit));
    let top: Vec<&str> = wrapped
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top.len(), 2);
    assert!(top.contains(&"TimeGenerated") && top.contains(&"log"));
    assert_eq!(wrapped["TimeGenerated"], "2024-05-01T10:05:00Z");
    assert_eq!(wrapped["log"]["Count"], json!(5));

    // Every other key carries the flat record's value.
    let mut row = flat(&event);
    row.as_object_mut().unwrap().remove("TimeGenerated");
    row["Count"] = json!(5);
    assert_eq!(wrapped["log"], row);
}

#[test]
fn extra_columns_are_written_only_when_enabled_and_in_table_order() {
    let event = legacy_event();
    for (uid, rv) in [(false, false), (true, false), (false, true), (true, true)] {
        let options = RecordOptions {
            include_uid: uid,
            include_resource_version: rv,
            ..options()
        };
        let bytes = to_record(&event, &options).unwrap();
        let row: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(row.get("Uid").is_some(), uid);
        assert_eq!(row.get("ResourceVersion").is_some(), rv);
        assert_eq!(
            row.as_object().unwrap().len(),
            SEED_COLUMNS + usize::from(uid) + usize::from(rv)
        );
        let offsets = key_offsets(&bytes);
        assert!(offsets.windows(2).all(|w| w[0].0 < w[1].0), "{offsets:?}");
    }
    let row = record(&event, &with_extra_columns(RecordShape::Flat));
    assert_eq!(row["Uid"], "0b7e-legacy");
    assert_eq!(row["ResourceVersion"], "1001");

    let wrapped = record(&event, &with_extra_columns(RecordShape::FluentBit));
    assert_eq!(wrapped["log"]["Uid"], "0b7e-legacy");
    assert_eq!(wrapped["log"]["ResourceVersion"], "1001");
}

#[test]
fn a_record_is_one_compact_line_without_managed_fields() {
    let mut event = legacy_event();
    event["message"] = json!("line one\nline two");
    for shape in [RecordShape::Flat, RecordShape::FluentBit] {
        let bytes = to_record(&event, &options_with_shape(shape)).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.starts_with('{') && text.ends_with('}'), "{text}");
        assert!(!text.contains("managedFields"), "{text}");
        assert!(!text.contains("kubelet-manager-marker"), "{text}");
    }
}

#[test]
fn a_one_mebibyte_message_passes_through_intact() {
    let chunk = "quote \" backslash \\ tab \t newline \n unicode é 日本 ";
    let message: String = chunk.repeat((1 << 20) / chunk.len() + 1);
    assert!(message.len() >= 1 << 20);
    let mut event = legacy_event();
    event["message"] = json!(message);
    assert_eq!(flat(&event)["Message"].as_str(), Some(message.as_str()));
    let wrapped = record(&event, &options_with_shape(RecordShape::FluentBit));
    assert_eq!(wrapped["log"]["Message"].as_str(), Some(message.as_str()));
}

#[test]
fn record_shape_reads_flat_and_fluent_bit_from_config_names() {
    let flat: RecordShape = serde_json::from_value(json!("flat")).unwrap();
    let fluent_bit: RecordShape = serde_json::from_value(json!("fluent-bit")).unwrap();
    assert_eq!(flat, RecordShape::Flat);
    assert_eq!(fluent_bit, RecordShape::FluentBit);
    assert_eq!(RecordShape::default(), RecordShape::Flat);
}

// ---- the ADX manifest -------------------------------------------------------------------------

/// The `(column, type)` list of `.create table KubeEvents (...)` followed by the
/// `.alter-merge table KubeEvents (...)` columns.
fn table_schema() -> Vec<(String, String)> {
    let mut columns = Vec::new();
    for command in [
        ".create table KubeEvents (",
        ".alter-merge table KubeEvents (",
    ] {
        let start = KQL.find(command).unwrap() + command.len();
        let end = start + KQL[start..].find(')').unwrap();
        for column in KQL[start..end].split(',') {
            let (name, kind) = column.split_once(':').unwrap();
            columns.push((name.trim().to_owned(), kind.trim().to_owned()));
        }
    }
    columns
}

/// The JSON array of the mapping `name` (a triple-backtick literal after its command).
fn mapping(name: &str) -> Vec<Value> {
    let command = format!(".create-or-alter table KubeEvents ingestion json mapping \"{name}\"");
    let start = KQL.find(&command).unwrap() + command.len();
    let open = start + KQL[start..].find("```").unwrap() + 3;
    let close = open + KQL[open..].find("```").unwrap();
    let parsed: Value = serde_json::from_str(&KQL[open..close]).unwrap();
    parsed.as_array().unwrap().clone()
}

/// A mapping path (`$.a.b`) resolved in `record`.
fn resolve<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    let rest = path.strip_prefix("$.")?;
    rest.split('.')
        .try_fold(record, |value, key| value.as_object()?.get(key))
}

fn check_mapping(name: &str, shape: RecordShape, expected_path: impl Fn(&str) -> String) {
    let schema = table_schema();
    let entries = mapping(name);
    let records: Vec<Value> = every_kind_of_event()
        .iter()
        .map(|event| record(event, &with_extra_columns(shape)))
        .collect();
    for (entry, (column, kind)) in entries.iter().zip(&schema) {
        assert_eq!(entry["column"], column.as_str(), "{name}: column order");
        assert_eq!(entry["datatype"], kind.as_str(), "{name}: {column} type");
        let path = entry["Properties"]["Path"].as_str().unwrap();
        assert_eq!(path, expected_path(column), "{name}: {column} path");
        for record in &records {
            let value = resolve(record, path)
                .unwrap_or_else(|| panic!("{name}: {path} missing in {record}"));
            if kind == "datetime" {
                let text = value.as_str().unwrap();
                assert!(text.ends_with('Z'), "{name}: {path} = {text}");
                text.parse::<Timestamp>().unwrap();
            }
        }
    }
    assert!(entries.len() <= schema.len(), "{name} maps unknown columns");
}

#[test]
fn the_manifest_table_has_exactly_the_flat_columns() {
    let names: Vec<String> = table_schema().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, FLAT_COLUMNS);
}

#[test]
fn the_flat_mapping_maps_every_flat_column_to_a_path_in_the_flat_record() {
    assert_eq!(mapping("KubeEventsFlatMapping").len(), FLAT_COLUMNS.len());
    check_mapping("KubeEventsFlatMapping", RecordShape::Flat, |column| {
        format!("$.{column}")
    });
}

#[test]
fn the_fluent_bit_mapping_is_the_seeds_and_resolves_in_the_fluent_bit_record() {
    assert_eq!(mapping("FluentBitMappingEvents").len(), SEED_COLUMNS);
    check_mapping("FluentBitMappingEvents", RecordShape::FluentBit, |column| {
        if column == "TimeGenerated" {
            "$.TimeGenerated".to_owned()
        } else {
            format!("$.log.{column}")
        }
    });
}

#[test]
fn ten_thousand_events_transform_to_valid_records_and_report_their_rate() {
    let events = every_kind_of_event();
    let options = with_extra_columns(RecordShape::Flat);
    let rounds = 10_000;
    let started = Instant::now();
    let mut bytes = 0;
    for i in 0..rounds {
        bytes += to_record(&events[i % events.len()], &options)
            .unwrap()
            .len();
    }
    let elapsed = started.elapsed();
    // Not a pass/fail timing: printed for a human (`--nocapture`), release builds are ~10x faster.
    eprintln!(
        "{rounds} records, {bytes} bytes in {elapsed:?} ({:.0} records/s)",
        f64::from(u32::try_from(rounds).unwrap()) / elapsed.as_secs_f64()
    );
    assert!(
        bytes > rounds * 400,
        "records are implausibly short: {bytes} bytes"
    );
}
