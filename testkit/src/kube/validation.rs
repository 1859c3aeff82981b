//! Server-side validation copied from the apiserver: object metadata (names), Events (legacy
//! rules for every write, the stricter events.k8s.io/v1 rules on create and update) and Leases
//! (kubernetes `pkg/apis/{core,events,coordination}/validation`).
//!
//! Pure functions returning field errors; must never mutate objects or touch storage.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;

use super::resources::{Object, View};
use super::status::{FieldError, quoted};

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Is `s` a DNS-1123 subdomain (≤ 253 chars)?
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Generic create-time metadata checks (`rest.BeforeCreate`): a name, and one that can be a
/// path segment; Leases additionally need a DNS subdomain name.
pub(crate) fn validate_meta_create(view: View, obj: &Object) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = obj.name();
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
        return errs;
    }
    if name == "." || name == ".." {
        errs.push(FieldError::invalid(
            "metadata.name",
            quoted(name),
            &format!("may not be '{name}'"),
        ));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(FieldError::invalid(
                "metadata.name",
                quoted(name),
                &format!("may not contain '{bad}'"),
            ));
        }
    }
    let needs_dns = matches!(view, View::Leases | View::EventsV1);
    if needs_dns && errs.is_empty() && !is_dns1123_subdomain(name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            quoted(name),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    errs
}

/// Validates a new object as created through `view`.
pub(crate) fn validate_create(view: View, obj: &Object) -> Vec<FieldError> {
    let mut errs = validate_meta_create(view, obj);
    match obj {
        Object::Event(e) => {
            errs.extend(legacy_event(e));
            if view == View::EventsV1 {
                errs.extend(strict_event_create(e));
            }
        }
        Object::Lease(l) => errs.extend(lease_spec(l)),
    }
    errs
}

/// Validates an update of `old` to `new` made through `view`.
pub(crate) fn validate_update(view: View, new: &Object, old: &Object) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if new.uid() != old.uid() {
        errs.push(FieldError::invalid(
            "metadata.uid",
            quoted(new.uid()),
            "field is immutable",
        ));
    }
    match (new, old) {
        (Object::Event(n), Object::Event(o)) => {
            errs.extend(legacy_event(n));
            if view == View::EventsV1 {
                errs.extend(strict_event_update(n, o));
            }
        }
        (Object::Lease(n), _) => errs.extend(lease_spec(n)),
        _ => {}
    }
    errs
}

/// `legacyValidateEvent`: namespace consistency, and for new-style events the reporting fields.
fn legacy_event(e: &Event) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ns = e.metadata.namespace.as_deref().unwrap_or_default();
    let io_ns = e.involved_object.namespace.as_deref().unwrap_or_default();
    let mismatch = || {
        FieldError::invalid(
            "involvedObject.namespace",
            quoted(io_ns),
            "does not match event.namespace",
        )
    };
    if e.event_time.is_none() {
        if io_ns.is_empty() {
            if !ns.is_empty() && ns != "default" {
                errs.push(mismatch());
            }
        } else if ns != io_ns {
            errs.push(mismatch());
        }
    } else {
        if io_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(mismatch());
        }
        // The field path is the core/v1 name (`reportingComponent`), and an empty value fails
        // `ValidateQualifiedName` twice more after `Required`.
        let rc = e.reporting_component.as_deref().unwrap_or_default();
        if rc.is_empty() {
            errs.push(FieldError::required("reportingComponent", ""));
            errs.push(FieldError::invalid(
                "reportingComponent",
                quoted(rc),
                "name part must be non-empty",
            ));
        }
        if !is_qualified_name(rc) {
            errs.push(FieldError::invalid(
                "reportingComponent",
                quoted(rc),
                QUALIFIED_NAME_MSG,
            ));
        }
        let ri = e.reporting_instance.as_deref().unwrap_or_default();
        if ri.is_empty() {
            errs.push(FieldError::required("reportingInstance", ""));
        } else if ri.len() > 128 {
            errs.push(FieldError::invalid(
                "reportingInstance",
                "\"\"",
                "can have at most 128 characters",
            ));
        }
        let action = e.action.as_deref().unwrap_or_default();
        if action.is_empty() {
            errs.push(FieldError::required("action", ""));
        } else if action.len() > 128 {
            errs.push(FieldError::invalid(
                "action",
                "\"\"",
                "can have at most 128 characters",
            ));
        }
        let reason = e.reason.as_deref().unwrap_or_default();
        if reason.is_empty() {
            errs.push(FieldError::required("reason", ""));
        } else if reason.len() > 128 {
            errs.push(FieldError::invalid(
                "reason",
                "\"\"",
                "can have at most 128 characters",
            ));
        }
        if e.message.as_deref().unwrap_or_default().len() > 1024 {
            errs.push(FieldError::invalid(
                "message",
                "\"\"",
                "can have at most 1024 characters",
            ));
        }
    }
    if !ns.is_empty() && !is_dns1123_subdomain(ns) {
        errs.push(FieldError::invalid(
            "namespace",
            quoted(ns),
            DNS1123_SUBDOMAIN_MSG,
        ));
    }
    errs
}

/// Extra rules for events created through events.k8s.io/v1.
fn strict_event_create(e: &Event) -> Vec<FieldError> {
    let mut errs = series(e);
    if e.event_time.is_none() {
        errs.push(FieldError::required("eventTime", ""));
    }
    let t = e.type_.as_deref().unwrap_or_default();
    if t != "Normal" && t != "Warning" {
        errs.push(FieldError::invalid(
            "type",
            "\"\"",
            &format!("has invalid value: {t}"),
        ));
    }
    if e.first_timestamp.is_some() {
        errs.push(FieldError::invalid(
            "firstTimestamp",
            "\"\"",
            "needs to be unset",
        ));
    }
    if e.last_timestamp.is_some() {
        errs.push(FieldError::invalid(
            "lastTimestamp",
            "\"\"",
            "needs to be unset",
        ));
    }
    if e.count.is_some() {
        errs.push(FieldError::invalid("count", "\"\"", "needs to be unset"));
    }
    if e.source.is_some() {
        errs.push(FieldError::invalid("source", "\"\"", "needs to be unset"));
    }
    errs
}

fn series(e: &Event) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(s) = &e.series {
        if s.count.unwrap_or_default() < 2 {
            errs.push(FieldError::invalid(
                "series.count",
                "\"\"",
                "should be at least 2",
            ));
        }
        if s.last_observed_time.is_none() {
            errs.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
    errs
}

/// `ValidateEventUpdate` for events.k8s.io/v1: most fields are immutable.
fn strict_event_update(n: &Event, o: &Event) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if n.series != o.series {
        errs.extend(series(n));
    }
    let mut immutable = |field: &str, same: bool| {
        if !same {
            errs.push(FieldError::invalid(field, "\"\"", "field is immutable"));
        }
    };
    immutable("involvedObject", n.involved_object == o.involved_object);
    immutable("reason", n.reason == o.reason);
    immutable("message", n.message == o.message);
    immutable("source", n.source == o.source);
    immutable("firstTimestamp", n.first_timestamp == o.first_timestamp);
    immutable("lastTimestamp", n.last_timestamp == o.last_timestamp);
    immutable("count", n.count == o.count);
    immutable("type", n.type_ == o.type_);
    immutable("eventTime", n.event_time == o.event_time);
    immutable("action", n.action == o.action);
    immutable("related", n.related == o.related);
    immutable(
        "reportingController",
        n.reporting_component == o.reporting_component,
    );
    immutable(
        "reportingInstance",
        n.reporting_instance == o.reporting_instance,
    );
    errs
}

/// `ValidateLeaseSpec`.
fn lease_spec(l: &Lease) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(spec) = &l.spec else { return errs };
    if let Some(d) = spec.lease_duration_seconds
        && d <= 0
    {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            d.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(t) = spec.lease_transitions
        && t < 0
    {
        errs.push(FieldError::invalid(
            "spec.leaseTransitions",
            t.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let strategy = spec.strategy.as_deref().unwrap_or_default();
    if let Some(s) = &spec.strategy
        && s != "OldestEmulationVersion"
        && !(s.contains('/') && s.split('/').all(is_qualified_name_part))
    {
        errs.push(FieldError::not_supported(
            "spec.strategy",
            quoted(s),
            "supported values: \"OldestEmulationVersion\"",
        ));
    }
    if spec
        .preferred_holder
        .as_deref()
        .is_some_and(|p| !p.is_empty())
        && strategy.is_empty()
    {
        errs.push(FieldError::forbidden(
            "spec.preferredHolder",
            "may only be specified if `strategy` is defined",
        ));
    }
    errs
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `validation.IsQualifiedName`: `[prefix/]name`.
fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => {
            is_dns1123_subdomain(prefix) && is_qualified_name_part(name) && name.len() <= 63
        }
        None => is_qualified_name_part(s) && s.len() <= 63,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn lease(spec: LeaseSpec) -> Object {
        Object::Lease(Box::new(Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(spec),
        }))
    }

    #[test]
    fn lease_rules_match_the_apiserver() {
        let bad = lease(LeaseSpec {
            lease_duration_seconds: Some(0),
            lease_transitions: Some(-1),
            preferred_holder: Some("x".into()),
            ..Default::default()
        });
        let errs: Vec<String> = validate_create(View::Leases, &bad)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            [
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
                "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined",
            ]
        );
        let ok = lease(LeaseSpec {
            strategy: Some("OldestEmulationVersion".into()),
            preferred_holder: Some("x".into()),
            ..Default::default()
        });
        assert!(validate_create(View::Leases, &ok).is_empty());
    }

    #[test]
    fn dns_subdomains() {
        assert!(is_dns1123_subdomain("web-7d9f8-abcde.17f3a9b2c4d5e6f7"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_subdomain("-a"));
    }
}
