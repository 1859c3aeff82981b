//! The `kevents dead` command: lists and replays dead batches through the leader's admin
//! endpoint (`GET /dead`, `POST /dead/replay`), or lists them offline from a stopped store.
//!
//! Owns the client side of those endpoints, the offline open and the human-readable tables. It
//! must never write the store: a replay needs a leadership term's fence, which only the leader
//! holds, so there is no offline replay.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{DeadListing, ReplayReport, ReplayRequest};
use crate::{
    config::{self, Config, Environment},
    store::{self, EventStore as _, OpenOptions, SledStore},
};

/// Where `--admin` points unless told: the default `admin.listen` port on this host (run the
/// command in the leader's pod, or port-forward to it).
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9102";

/// How long one admin request may take: a replay moves records in the leader's store, whose
/// calls have a deadline of `store.io_timeout` (30 s by default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Reasons longer than this are cut in the table (the JSON and `--payload` keep them whole).
const REASON_WIDTH: usize = 72;

/// `kevents dead …`.
#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// List the dead batches: id, events, when they died and why.
    List {
        /// The leader's admin endpoint.
        #[arg(long, env = "KEVENTS_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
        admin: String,
        /// Also print each batch's records (NDJSON) after the table.
        #[arg(long)]
        payload: bool,
        /// Read the store directly instead of asking the leader. Only on a stopped store (scale
        /// kevents to zero first): a store a running process holds open is refused.
        #[arg(long, requires = "config")]
        offline: bool,
        /// Config file naming the store (`store.path`), for --offline.
        #[arg(long, env = "KEVENTS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Move dead batches back into the leader's outbox: the shipper sends their records once
    /// more, as a new batch with a new id. Fix what made the sink reject them first. There is no
    /// offline replay: writing the store needs the leader's term (its fence), so a replay always
    /// goes through the leader's admin endpoint.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// A dead batch id (repeat for more).
        #[arg(long = "id", value_name = "ID")]
        id: Vec<String>,
        /// Replay every dead batch.
        #[arg(long)]
        all: bool,
        /// The leader's admin endpoint.
        #[arg(long, env = "KEVENTS_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
        admin: String,
    },
}

/// Why a `kevents dead` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens at the admin URL.
    #[error("no kevents admin endpoint at {url}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The request failed on the way (timeout, broken connection).
    #[error("the request to {url} failed")]
    Request {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The endpoint answered with an error.
    #[error("{url} answered {status}: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What it said.
        message: String,
    },
    /// The endpoint answered, but not with what `/dead` answers.
    #[error("{url} answered with something that is not a kevents dead-tree answer")]
    BadAnswer {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The config file is invalid.
    #[error("invalid config {path}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: config::Error,
    },
    /// No store has been created under `store.path`.
    #[error("no store under {path} (store.path)")]
    NoStore {
        /// `store.path`.
        path: PathBuf,
    },
    /// A running process holds the store open.
    #[error(
        "the store {path} is in use by a running kevents; ask the leader instead: kevents dead list --admin URL"
    )]
    InUse {
        /// The term directory.
        path: PathBuf,
    },
    /// Reading the store failed.
    #[error("reading the store {path} failed")]
    Store {
        /// The store directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: store::Error,
    },
    /// Some ids asked for are not in the dead tree (the others were replayed).
    #[error("{} of the ids asked for are not in the dead tree: {}", .0.len(), .0.join(", "))]
    Unknown(Vec<String>),
}

/// `type Result<T> = Result<T, cli::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `command`, printing its output to stdout.
///
/// # Errors
/// Fails when the admin endpoint or the store cannot be read, or (after printing the report) when
/// a replay named ids the dead tree does not hold.
pub async fn run(command: DeadCommand) -> Result<()> {
    match command {
        DeadCommand::List {
            admin,
            payload,
            offline,
            config,
        } => {
            let listing = match (offline, config) {
                (true, Some(path)) => {
                    let config = Config::load(&path, &Environment::process())
                        .map_err(|source| Error::Config { path, source })?;
                    list_offline(&config, payload)?
                }
                _ => list(&admin, payload).await?,
            };
            print!("{}", render_listing(&listing));
            Ok(())
        }
        DeadCommand::Replay { id, all, admin } => {
            let request = ReplayRequest { ids: id, all };
            let report = replay(&admin, &request).await?;
            print!("{}", render_report(&report));
            if report.unknown.is_empty() {
                Ok(())
            } else {
                Err(Error::Unknown(report.unknown))
            }
        }
    }
}

/// `GET /dead` from the admin endpoint at `admin`.
///
/// # Errors
/// [`Error::Unreachable`] when nothing listens there, [`Error::Refused`] for an error answer (a
/// replica that is not the leader answers 503).
pub async fn list(admin: &str, payload: bool) -> Result<DeadListing> {
    let url = format!("{}/dead", admin.trim_end_matches('/'));
    let request = client(&url)?.get(&url).query(&[("payload", payload)]);
    answer(&url, request).await
}

/// `POST /dead/replay` to the admin endpoint at `admin`.
///
/// # Errors
/// As [`list`].
pub async fn replay(admin: &str, request: &ReplayRequest) -> Result<ReplayReport> {
    let url = format!("{}/dead/replay", admin.trim_end_matches('/'));
    let request = client(&url)?.post(&url).json(request);
    answer(&url, request).await
}

/// Lists the dead batches of the store `config` names, opening it directly: only a stopped
/// store can be (a running process holds its lock).
///
/// # Errors
/// [`Error::InUse`] when a process holds the store open, [`Error::NoStore`] when there is none.
pub fn list_offline(config: &Config, payload: bool) -> Result<DeadListing> {
    let root = &config.store.path;
    let store_error = |path: &Path| {
        let path = path.to_owned();
        move |source: store::Error| Error::Store { path, source }
    };
    let dir = store::terms::current_dir(root)
        .map_err(store_error(root))?
        .ok_or_else(|| Error::NoStore { path: root.clone() })?;
    let store = SledStore::open_existing(&OpenOptions {
        path: dir.clone(),
        cache_capacity: config.store.cache_capacity,
        lock_timeout: Duration::ZERO,
    })
    .map_err(|source| match source {
        store::Error::Locked { path } => Error::InUse { path },
        source => Error::Store {
            path: dir.clone(),
            source,
        },
    })?;
    let meta = store.meta().map_err(store_error(&dir))?;
    let dead = store.dead_batches().map_err(store_error(&dir))?;
    Ok(DeadListing::new(
        None,
        meta.dead_events,
        meta.dead_bytes,
        &dead,
        payload,
    ))
}

fn client(url: &str) -> Result<reqwest::Client> {
    // The admin endpoint is local or port-forwarded: never through an HTTP(S)_PROXY.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|source| Error::Request {
            url: url.to_owned(),
            source,
        })
}

async fn answer<T: serde::de::DeserializeOwned>(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<T> {
    let response = request.send().await.map_err(|source| {
        if source.is_connect() {
            Error::Unreachable {
                url: url.to_owned(),
                source,
            }
        } else {
            Error::Request {
                url: url.to_owned(),
                source,
            }
        }
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.trim().to_owned());
        return Err(Error::Refused {
            url: url.to_owned(),
            status: status.as_u16(),
            message,
        });
    }
    response.json().await.map_err(|source| Error::BadAnswer {
        url: url.to_owned(),
        source,
    })
}

/// The listing as a table (id, events, dead at, reason), with the records after it when the
/// listing carries them.
#[must_use]
pub fn render_listing(listing: &DeadListing) -> String {
    let mut out = String::new();
    if listing.batches.is_empty() {
        out.push_str("The dead tree is empty.\n");
        return out;
    }
    let id_width = listing
        .batches
        .iter()
        .map(|b| b.id.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let _ = writeln!(
        out,
        "{:<id_width$}  {:>7}  {:<24}  REASON",
        "ID", "EVENTS", "DEAD AT"
    );
    for batch in &listing.batches {
        let _ = writeln!(
            out,
            "{:<id_width$}  {:>7}  {:<24}  {}",
            batch.id,
            batch.events,
            batch.dead_at,
            shorten(&batch.reason, REASON_WIDTH)
        );
    }
    let _ = writeln!(
        out,
        "{} dead batch(es), {} event(s), {} byte(s){}",
        listing.batches.len(),
        listing.dead_events,
        listing.dead_bytes,
        listing.epoch.map_or_else(
            || " (read offline)".to_owned(),
            |e| format!(" (leader term {e})")
        )
    );
    for batch in &listing.batches {
        if let Some(payload) = &batch.payload {
            let _ = writeln!(out, "--- {} ({} events)", batch.id, batch.events);
            out.push_str(payload);
        }
    }
    out
}

/// What a replay did, one line per batch.
#[must_use]
pub fn render_report(report: &ReplayReport) -> String {
    let mut out = String::new();
    for batch in &report.replayed {
        let _ = writeln!(
            out,
            "replayed {}: {} event(s), now sequence {}..={}",
            batch.id, batch.events, batch.first_seq, batch.last_seq
        );
    }
    let _ = writeln!(
        out,
        "{} batch(es), {} event(s) back in the outbox; they ship as new batches",
        report.replayed.len(),
        report.events
    );
    for id in &report.unknown {
        let _ = writeln!(out, "not in the dead tree: {id}");
    }
    out
}

/// `text` on one line, cut to `width` characters with an ellipsis.
fn shorten(text: &str, width: usize) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead::DeadEntry;

    #[test]
    fn a_long_reason_is_cut_to_one_line_with_an_ellipsis() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("two\nlines", 10), "two lines");
        let cut = shorten(&"é".repeat(100), 10);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_listing_table_has_one_row_per_batch_and_the_records_only_when_carried() {
        let entry = DeadEntry {
            id: "abc-000000000000-000000000001".into(),
            events: 2,
            bytes: 20,
            reason: format!("400 Bad Request: {}", "x".repeat(200)),
            dead_ms: 0,
            dead_at: "1970-01-01T00:00:00Z".into(),
            epoch: 4,
            payload: None,
        };
        let mut listing = DeadListing {
            epoch: Some(4),
            dead_events: 2,
            dead_bytes: 20,
            batches: vec![entry],
        };
        let table = render_listing(&listing);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("ID"), "{table}");
        assert!(lines[1].starts_with("abc-000000000000-000000000001"));
        assert!(lines[1].contains("1970-01-01T00:00:00Z"));
        assert!(lines[1].ends_with('…'), "{table}");
        assert!(lines[2].contains("leader term 4"), "{table}");
        listing.batches[0].payload = Some("{\"a\":1}\n{\"a\":2}\n".into());
        let with_records = render_listing(&listing);
        assert!(
            with_records.ends_with("{\"a\":1}\n{\"a\":2}\n"),
            "{with_records}"
        );
    }
}
