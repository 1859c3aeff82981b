//! The status board: what `/status` shows and what `/readyz` decides from.
//!
//! Components publish a JSON section under their own name and raise or clear named readiness
//! conditions. The board holds no pipeline logic and never blocks a writer for long (short,
//! synchronous critical sections only).

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use serde_json::{Map, Value};

/// Shared status and readiness of one process.
#[derive(Debug)]
pub struct StatusBoard {
    started: Instant,
    sections: Mutex<BTreeMap<&'static str, Value>>,
    not_ready: Mutex<BTreeMap<&'static str, String>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusBoard {
    /// An empty board: ready, no sections.
    #[must_use]
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            sections: Mutex::new(BTreeMap::new()),
            not_ready: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replaces the section `name`.
    pub fn publish(&self, name: &'static str, value: Value) {
        self.sections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, value);
    }

    /// Marks the process not ready for `reason` (keyed by `condition`).
    pub fn set_not_ready(&self, condition: &'static str, reason: impl Into<String>) {
        self.not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(condition, reason.into());
    }

    /// Clears the readiness condition `condition`.
    pub fn set_ready(&self, condition: &'static str) {
        self.not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(condition);
    }

    /// True while `condition` is not raised.
    #[must_use]
    pub fn is_ready(&self, condition: &'static str) -> bool {
        !self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(condition)
    }

    /// `Ok` when ready, otherwise the reasons.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let reasons: Vec<String> = self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(condition, reason)| format!("{condition}: {reason}"))
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The whole board as JSON.
    #[must_use]
    pub fn snapshot(&self) -> Value {
        let mut root = Map::new();
        root.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        root.insert(
            "uptime_seconds".into(),
            self.started.elapsed().as_secs().into(),
        );
        let ready = self.readiness();
        root.insert("ready".into(), ready.is_ok().into());
        if let Err(reasons) = ready {
            root.insert("not_ready".into(), reasons.into());
        }
        for (name, value) in self
            .sections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            root.insert((*name).into(), value.clone());
        }
        Value::Object(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_conditions_and_sections_show_in_the_snapshot() {
        let board = StatusBoard::new();
        assert!(board.readiness().is_ok());
        board.set_not_ready("store", "not open");
        assert_eq!(board.readiness().unwrap_err(), vec!["store: not open"]);
        board.publish("leader", serde_json::json!({"role": "follower"}));
        let snap = board.snapshot();
        assert_eq!(snap["leader"]["role"], "follower");
        assert_eq!(snap["ready"], false);
        board.set_ready("store");
        assert!(board.readiness().is_ok());
    }
}
