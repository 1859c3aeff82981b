//! Helpers shared by the `adx_*` integration tests.

#![allow(dead_code, reason = "each test file uses a subset")]

use std::{net::SocketAddr, time::Duration};

use kevents::{
    config::{AdxConfig, AdxMode},
    emulator::adx::{AdxEmulator, AdxEmulatorConfig},
    sink::AdxSink,
    telemetry::Metrics,
};

pub const DB: &str = "k8s";
pub const TABLE: &str = "KubeEvents";

/// An ADX emulator on Azurite; fails (never skips) when Azurite is not installed.
pub async fn emulator(config: AdxEmulatorConfig) -> AdxEmulator {
    match AdxEmulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await {
        Ok(emulator) => emulator,
        Err(error) => panic!("the ADX emulator did not start: {error:#?}\n{error}"),
    }
}

pub fn sink(config: &AdxConfig) -> (AdxSink, Metrics) {
    let metrics = Metrics::new().unwrap();
    (AdxSink::new(config, metrics.clone()).unwrap(), metrics)
}

pub fn config(emulator: &AdxEmulator, mode: AdxMode) -> AdxConfig {
    emulator.sink_config(DB, mode)
}

/// The value of a metric line (`name{labels} value`) in the text exposition.
pub fn metric(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
