//! The ADX sink's health check: before (and while) the pipeline ships, is everything the
//! configured mode needs there? In order:
//!
//! 1. `token`: an AAD token can be obtained (unless `auth.mode: none`);
//! 2. `ingestion_resources`: the data management service answers `.get ingestion resources` with
//!    at least one `TempStorage` container and one `SecuredReadyForAggregationQueue`, and an
//!    `IngestionsStatusTable` when `status.enabled`;
//! 3. `identity_token`: it answers `.get kusto identity token` with an authorization context;
//! 4. `table` / `mapping` / `engine`: the engine answers `.show table T ingestion json mappings`
//!    in the database, the table exists and has the mapping (or the database has it, for a
//!    database-scoped mapping).
//!
//! Steps 2 and 3 fail the check in queued and managed mode; in streaming mode (where the data
//! management endpoint only serves the fallback when the table's streaming policy is off) they
//! are warnings. Step 4 fails the check in every mode when the table or mapping is missing; the
//! engine not answering fails it in streaming and managed mode and is a warning in queued mode,
//! which does not use the engine. Which roles may run `.show table … ingestion mappings` is not
//! documented (Microsoft documents Table Ingestor for creating and dropping a table's mappings,
//! and Database Monitor for `.show` commands), so a 403 is a warning that the table and mapping
//! cannot be verified with this identity's roles, not a failure.
//!
//! Owns the checks and the wording of their failures, which name what is missing. It never sends
//! a batch, never caches what it fetched (the resource cache is the sending path's), and never
//! puts a token, a SAS or the authorization context into a message.

use super::{Error, Inner};
use crate::{
    config::{AdxAuthConfig, AdxMode},
    sink::{Health, HealthError},
    telemetry::error_chain,
};

/// The kind of mapping the sink references (ADX has one JSON kind for `json` and `multijson`).
const MAPPING_KIND: &str = "json";

fn failed(check: &'static str, error: &Error) -> HealthError {
    HealthError {
        check,
        message: error_chain(error),
    }
}

/// What the engine said about the table's mapping.
enum Mapping {
    /// The table (or the database) has it.
    Found,
    /// The identity may not look: a warning saying so.
    Unverifiable(String),
}

impl Inner {
    /// Runs the checks of this mode; see the module documentation.
    pub(super) async fn healthcheck(&self) -> Result<Health, HealthError> {
        let mut warnings = Vec::new();
        if !matches!(self.config.auth, AdxAuthConfig::None) {
            self.tokens
                .token(&self.http)
                .await
                .map_err(|e| failed("token", &e))?;
        }
        if self.config.ingest_endpoint.is_some() {
            match self.check_data_management().await {
                Ok(()) => {}
                Err(error) if self.config.mode == AdxMode::Streaming => warnings.push(format!(
                    "the data management endpoint would not serve the queued fallback (used while the table's streaming policy is off): {error}"
                )),
                Err(error) => return Err(error),
            }
        }
        match self.check_mapping().await {
            Ok(Mapping::Found) => {}
            Ok(Mapping::Unverifiable(warning)) => warnings.push(warning),
            Err(error) if error.check == "engine" && self.config.mode == AdxMode::Queued => {
                warnings.push(format!(
                    "cannot verify the table and mapping (queued ingestion does not use the engine): {error}"
                ));
            }
            Err(error) => return Err(error),
        }
        Ok(Health { warnings })
    }

    async fn check_data_management(&self) -> Result<(), HealthError> {
        let storage = self
            .fetch_storage()
            .await
            .map_err(|e| failed("ingestion_resources", &e))?;
        if self.config.status.enabled && storage.status_tables.is_empty() {
            return Err(HealthError {
                check: "ingestion_resources",
                message: format!(
                    "the DM at {} named no IngestionsStatusTable, which sink.adx.status.enabled needs (turn it off to ship without status rows)",
                    self.dm_endpoint()
                ),
            });
        }
        self.fetch_identity()
            .await
            .map_err(|e| failed("identity_token", &e))?;
        Ok(())
    }

    /// `.show table T ingestion json mappings` on the engine, then the database's mappings when
    /// the table has no mapping of that name.
    async fn check_mapping(&self) -> Result<Mapping, HealthError> {
        let Some(engine) = self.engine.as_ref() else {
            return Err(failed("engine", &Error::NoEndpoint("engine")));
        };
        let (database, table, mapping) = (
            &self.config.database,
            &self.config.table,
            &self.config.mapping,
        );
        let command = format!(
            ".show table {} ingestion {MAPPING_KIND} mappings",
            quoted(table)
        );
        let names = match self.kusto_mgmt(engine, database, &command).await {
            Ok(answer) => answer
                .column("Name")
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
            Err(error) if error.status() == Some(403) => {
                return Ok(Mapping::Unverifiable(format!(
                    "cannot verify table {table} and its mapping {mapping} in database {database} with this identity's roles (`.show table … ingestion mappings` was refused): {}",
                    error_chain(&error)
                )));
            }
            Err(error) if error.is_not_found() => {
                return Err(HealthError {
                    check: "table",
                    message: format!(
                        "table {table} does not exist in database {database}: {}",
                        error_chain(&error)
                    ),
                });
            }
            Err(error) => return Err(failed("engine", &error)),
        };
        if names.iter().any(|n| n == mapping) {
            return Ok(Mapping::Found);
        }
        // A database-scoped mapping of that name serves the table too.
        let command = format!(
            ".show database {} ingestion {MAPPING_KIND} mappings",
            quoted(database)
        );
        match self.kusto_mgmt(engine, database, &command).await {
            Ok(answer) if answer.column("Name").contains(&mapping.as_str()) => {
                return Ok(Mapping::Found);
            }
            Ok(_) => {}
            Err(error) if error.status() == Some(403) => {
                return Ok(Mapping::Unverifiable(format!(
                    "table {table} has no {MAPPING_KIND} ingestion mapping {mapping}, and database {database}'s mappings cannot be read with this identity's roles: {}",
                    error_chain(&error)
                )));
            }
            Err(error) => return Err(failed("engine", &error)),
        }
        let found = if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has {}", names.join(", "))
        };
        Err(HealthError {
            check: "mapping",
            message: format!(
                "table {table} has no {MAPPING_KIND} ingestion mapping {mapping} in database {database} ({found}); create it (`.create table {table} ingestion json mapping '{mapping}' …`) or set sink.adx.mapping"
            ),
        })
    }
}

/// A table or database name as a KQL entity literal: `['name']`.
fn quoted(name: &str) -> String {
    format!("['{}']", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_are_bracket_quoted_and_escaped() {
        assert_eq!(quoted("KubeEvents"), "['KubeEvents']");
        assert_eq!(quoted("a'b"), "['a\\'b']");
    }
}
