//! Unit tests of the ADX sink's error classification.

use std::time::Duration;

use reqwest::StatusCode;

use super::{
    Error, Operation,
    http::{parse_error_body, streaming_is_permanent},
    queued::stable_index,
};

fn status(operation: Operation, status: u16, body: &str) -> Error {
    let (code, message, flag) = parse_error_body(body.as_bytes());
    Error::Status {
        operation,
        endpoint: "http://h/x".to_owned(),
        status,
        code,
        message,
        permanent: operation == Operation::Streaming
            && streaming_is_permanent(StatusCode::from_u16(status).unwrap(), flag),
        retry_after: None,
    }
}

#[test]
fn streaming_errors_are_permanent_only_when_kusto_says_so_or_a_client_error_has_no_flag() {
    let bad_mapping = r#"{"error":{"code":"BadRequest","message":"Mapping not found","@type":"Kusto.DataNode.Exceptions.MappingNotFoundException","@permanent":true}}"#;
    assert!(status(Operation::Streaming, 400, bad_mapping).is_permanent());
    let transient = r#"{"error":{"code":"BadRequest","message":"x","@permanent":false}}"#;
    assert!(!status(Operation::Streaming, 400, transient).is_permanent());
    assert!(status(Operation::Streaming, 400, "{}").is_permanent());
    for code in [401, 403, 404, 408, 429, 500, 503] {
        assert!(
            !status(Operation::Streaming, code, "{}").is_permanent(),
            "{code}"
        );
    }
    assert!(status(Operation::Streaming, 429, "{}").is_throttled());
    assert!(status(Operation::Streaming, 413, "{}").is_too_large());
    // Storage and management errors never dead-letter a batch.
    assert!(!status(Operation::BlobUpload, 400, bad_mapping).is_permanent());
}

#[test]
fn refusals_of_streaming_itself_are_told_apart_from_permanent_errors_of_the_batch() {
    let policy_off = r#"{"error":{"code":"BadRequest_StreamingIngestionPolicyNotEnabled","message":"x","@type":"Kusto.DataNode.Exceptions.StreamingIngestionPolicyNotEnabledException","@permanent":true}}"#;
    let off = status(Operation::Streaming, 400, policy_off);
    assert!(off.is_permanent() && off.is_streaming_off() && !off.is_too_large());
    let too_large =
        r#"{"error":{"code":"Stream_InputStreamTooLarge","message":"x","@permanent":true}}"#;
    let large = status(Operation::Streaming, 400, too_large);
    assert!(large.is_permanent() && large.is_too_large() && !large.is_streaming_off());
    let large = status(Operation::Streaming, 413, too_large);
    assert!(!large.is_permanent() && large.is_too_large());
    let bad_mapping =
        r#"{"error":{"code":"BadRequest_MappingReferenceWasNotFound","@permanent":true}}"#;
    let mapping = status(Operation::Streaming, 400, bad_mapping);
    assert!(mapping.is_permanent() && !mapping.is_too_large() && !mapping.is_streaming_off());
    let record = Error::RecordTooLarge {
        record: 3,
        key: "Uid u, ResourceVersion 7".to_owned(),
        bytes: 5000,
        source: Box::new(large),
    };
    assert!(!record.into_sink_error().is_retriable());
}

#[test]
fn storage_errors_keep_the_code_and_drop_the_message() {
    let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate sig=abc</Message></Error>";
    let error = status(Operation::Enqueue, 403, body);
    let text = error.to_string();
    assert!(text.contains("AuthenticationFailed"), "{text}");
    assert!(!text.contains("sig="), "{text}");
}

#[test]
fn permanent_errors_map_to_permanent_sink_errors_and_429_keeps_retry_after() {
    let permanent = status(
        Operation::Streaming,
        400,
        r#"{"error":{"@permanent":true}}"#,
    );
    assert!(!permanent.into_sink_error().is_retriable());
    let throttled = Error::Status {
        operation: Operation::Streaming,
        endpoint: String::new(),
        status: 429,
        code: None,
        message: String::new(),
        permanent: false,
        retry_after: Some(Duration::from_secs(7)),
    };
    let sink_error = throttled.into_sink_error();
    assert!(sink_error.is_retriable());
    assert_eq!(sink_error.retry_after(), Some(Duration::from_secs(7)));
}

#[test]
fn the_first_container_is_stable_per_batch() {
    assert_eq!(stable_index("b-1", 3), stable_index("b-1", 3));
    assert!(stable_index("b-1", 3) < 3);
    assert_eq!(stable_index("x", 0), 0);
}
