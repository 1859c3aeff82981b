//! Event filters: namespaces include/exclude, types, reasons include/exclude, involved kinds.
//!
//! Owns matching (always applied to every object, so correctness never depends on the server)
//! and the push-down of what the API server can do itself as a field selector (core/v1 supports
//! `metadata.namespace`, `type`, `reason` and `involvedObject.kind`, one value each). It must
//! never drop an event the configuration keeps.

use serde_json::Value;

use crate::config::{EventApi, FilterConfig};

/// A compiled filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    config: FilterConfig,
}

impl Filter {
    /// Compiles `config`.
    #[must_use]
    pub fn new(config: &FilterConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    /// The one namespace to read from, when exactly one is included.
    #[must_use]
    pub fn single_namespace(&self) -> Option<&str> {
        match self.config.namespaces_include.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// A field selector the API server can apply, if any part of the filter can be pushed down.
    #[must_use]
    pub fn field_selector(&self, api: EventApi) -> Option<String> {
        if api != EventApi::CoreV1 {
            return None;
        }
        let c = &self.config;
        let mut terms = Vec::new();
        for ns in &c.namespaces_exclude {
            terms.push(format!("metadata.namespace!={ns}"));
        }
        if let [one] = c.types.as_slice() {
            terms.push(format!("type={one}"));
        }
        match c.reasons_include.as_slice() {
            [one] => terms.push(format!("reason={one}")),
            _ => {
                for reason in &c.reasons_exclude {
                    terms.push(format!("reason!={reason}"));
                }
            }
        }
        if let [one] = c.involved_kinds.as_slice() {
            terms.push(format!("involvedObject.kind={one}"));
        }
        (!terms.is_empty()).then(|| terms.join(","))
    }

    /// True when `object` (either Event API) is kept.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        let c = &self.config;
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let namespace = text("/metadata/namespace");
        if !c.namespaces_include.is_empty() && !c.namespaces_include.iter().any(|n| n == namespace)
        {
            return false;
        }
        if c.namespaces_exclude.iter().any(|n| n == namespace) {
            return false;
        }
        let kind_of = text("/type");
        if !c.types.is_empty() && !c.types.iter().any(|t| t == kind_of) {
            return false;
        }
        let reason = text("/reason");
        if !c.reasons_include.is_empty() && !c.reasons_include.iter().any(|r| r == reason) {
            return false;
        }
        if c.reasons_exclude.iter().any(|r| r == reason) {
            return false;
        }
        if !c.involved_kinds.is_empty() {
            let kind = object
                .pointer("/involvedObject/kind")
                .or_else(|| object.pointer("/regarding/kind"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !c.involved_kinds.iter().any(|k| k == kind) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(ns: &str, kind: &str, reason: &str, t: &str) -> Value {
        json!({"metadata": {"namespace": ns}, "involvedObject": {"kind": kind}, "reason": reason, "type": t})
    }

    #[test]
    fn an_empty_filter_keeps_everything_and_pushes_nothing_down() {
        let filter = Filter::new(&FilterConfig::default());
        assert!(filter.matches(&event("a", "Pod", "Pulled", "Normal")));
        assert!(filter.matches(&json!({})));
        assert_eq!(filter.field_selector(EventApi::CoreV1), None);
        assert_eq!(filter.single_namespace(), None);
    }

    #[test]
    fn every_condition_is_applied_and_single_values_are_pushed_down() {
        let filter = Filter::new(&FilterConfig {
            namespaces_include: vec![],
            namespaces_exclude: vec!["kube-system".into()],
            types: vec!["Warning".into()],
            reasons_include: vec![],
            reasons_exclude: vec!["Pulled".into()],
            involved_kinds: vec!["Pod".into()],
        });
        assert!(filter.matches(&event("a", "Pod", "BackOff", "Warning")));
        assert!(!filter.matches(&event("kube-system", "Pod", "BackOff", "Warning")));
        assert!(!filter.matches(&event("a", "Pod", "BackOff", "Normal")));
        assert!(!filter.matches(&event("a", "Pod", "Pulled", "Warning")));
        assert!(!filter.matches(&event("a", "Node", "BackOff", "Warning")));
        let regarding = json!({"metadata": {"namespace": "a"}, "regarding": {"kind": "Pod"}, "reason": "BackOff", "type": "Warning"});
        assert!(
            filter.matches(&regarding),
            "events.k8s.io/v1 objects match too"
        );
        assert_eq!(
            filter.field_selector(EventApi::CoreV1).as_deref(),
            Some(
                "metadata.namespace!=kube-system,type=Warning,reason!=Pulled,involvedObject.kind=Pod"
            )
        );
        assert_eq!(filter.field_selector(EventApi::EventsV1), None);
    }

    #[test]
    fn one_included_namespace_is_read_through_its_namespaced_path() {
        let filter = Filter::new(&FilterConfig {
            namespaces_include: vec!["prod".into()],
            ..FilterConfig::default()
        });
        assert_eq!(filter.single_namespace(), Some("prod"));
        assert!(!filter.matches(&event("dev", "Pod", "x", "Normal")));
    }
}
