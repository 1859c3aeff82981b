//! Synthetic `KubeEvents` records and batches, shaped as the product's transform writes them
//! (flat columns plus `Uid` and `ResourceVersion`), for sink tests and the ADX benchmark.
//!
//! Owns only the record text; the batch type belongs to whoever sends it.

/// One flat `KubeEvents` record (with `Uid` and `ResourceVersion`), as the transform writes it.
#[must_use]
pub fn synthetic_record(n: u64) -> String {
    let time = jiff::Timestamp::from_second(1_760_000_000 + i64::try_from(n % 86_400).unwrap_or(0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    serde_json::json!({
        "TimeGenerated": time.to_string(),
        "Namespace": format!("ns-{}", n % 7),
        "Name": format!("pod-{n}.18a2b3c4d5e6f708"),
        "Kind": "Pod",
        "ApiVersion": "v1",
        "KubeEventType": if n.is_multiple_of(5) { "Warning" } else { "Normal" },
        "Action": "Binding",
        "Reason": "Scheduled",
        "Message": format!("Successfully assigned ns-{}/pod-{n} to node-{}", n % 7, n % 3),
        "Count": (n % 4 + 1).to_string(),
        "CreationTimestamp": time.to_string(),
        "FirstSeen": time.to_string(),
        "LastSeen": time.to_string(),
        "SourceComponent": "default-scheduler",
        "SourceComputer": "",
        "ReportingComponent": "default-scheduler",
        "ReportingComputer": "",
        "Cluster": "lab",
        "Region": "local",
        "Environment": "bench",
        "Uid": format!("00000000-0000-4000-8000-{n:012}"),
        "ResourceVersion": (n + 1).to_string(),
    })
    .to_string()
}

/// Newline-delimited [`synthetic_record`]s `first..first + count`, each line ending in `\n`.
#[must_use]
pub fn synthetic_payload(first: u64, count: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    for n in first..first + count {
        payload.extend_from_slice(synthetic_record(n).as_bytes());
        payload.push(b'\n');
    }
    payload
}

/// The deterministic id of the batch of records `first..first + count`: `{prefix}-{first}-{last}`.
#[must_use]
pub fn synthetic_batch_id(prefix: &str, first: u64, count: u64) -> String {
    format!("{prefix}-{first:012}-{:012}", first + count.max(1) - 1)
}
