//! AAD tokens for the ADX sink: client secret, workload identity (federated token file, re-read
//! on every fetch), managed identity (IMDS), or none.
//!
//! Owns the token cache: one token, refreshed ahead of expiry behind a single flight (the lock is
//! held across the fetch, so concurrent callers wait for one request), and dropped on a 401. It
//! must never log, format or return in an error a token, a secret or a federated assertion: errors
//! carry the endpoint and the HTTP status only.

use std::time::{Duration, Instant};

use reqwest::Url;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Error, Http, Operation};
use crate::config::{AdxAuthConfig, AdxConfig};

/// A fetched token and when to fetch the next one.
struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// Hands out bearer tokens for Kusto.
pub(super) struct TokenProvider {
    auth: AdxAuthConfig,
    scope: String,
    margin: Duration,
    cache: Mutex<Option<Cached>>,
}

impl TokenProvider {
    pub(super) fn new(config: &AdxConfig) -> Self {
        Self {
            auth: config.auth.clone(),
            scope: config.scope.clone(),
            margin: config.token_refresh_margin,
            cache: Mutex::new(None),
        }
    }

    /// A current token, or `None` for `auth.mode: none`.
    pub(super) async fn token(&self, http: &Http) -> Result<Option<SecretString>, Error> {
        if matches!(self.auth, AdxAuthConfig::None) {
            return Ok(None);
        }
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(Some(cached.token.clone()));
        }
        let fetched = self.fetch(http).await;
        let metrics = &http.metrics.adx_token_refreshes;
        match fetched {
            Ok((token, lifetime)) => {
                metrics.with_label_values(&["success"]).inc();
                // Refresh `margin` before expiry, but never later than half-way through a short
                // lifetime (an emulator or a clock hiccup may hand out minutes, not hours).
                let ahead = if lifetime > self.margin * 2 {
                    lifetime.saturating_sub(self.margin)
                } else {
                    lifetime / 2
                };
                tracing::debug!(
                    mode = self.auth.mode(),
                    expires_in = lifetime.as_secs(),
                    "Fetched an AAD token"
                );
                *cache = Some(Cached {
                    token: token.clone(),
                    refresh_at: Instant::now() + ahead,
                });
                Ok(Some(token))
            }
            Err(error) => {
                metrics.with_label_values(&["error"]).inc();
                Err(error)
            }
        }
    }

    /// Drops the cached token (Kusto answered 401).
    pub(super) async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self, http: &Http) -> Result<(SecretString, Duration), Error> {
        match &self.auth {
            AdxAuthConfig::None => Err(Error::Auth {
                endpoint: String::new(),
                message: "no credentials configured".to_owned(),
            }),
            AdxAuthConfig::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
                authority_host,
            } => {
                let form = [
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose()),
                    ("grant_type", "client_credentials"),
                    ("scope", self.scope.as_str()),
                ];
                self.post_form(http, &token_url(authority_host, tenant_id)?, &form)
                    .await
            }
            AdxAuthConfig::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
                authority_host,
            } => {
                // Re-read on every fetch: the kubelet rotates the projected token.
                let assertion = tokio::fs::read_to_string(token_file)
                    .await
                    .map_err(|source| Error::TokenFile {
                        path: token_file.clone(),
                        source,
                    })?;
                let assertion = SecretString::from(assertion.trim().to_owned());
                let form = [
                    ("client_id", client_id.as_str()),
                    ("client_assertion", assertion.expose_secret()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("grant_type", "client_credentials"),
                    ("scope", self.scope.as_str()),
                ];
                self.post_form(http, &token_url(authority_host, tenant_id)?, &form)
                    .await
            }
            AdxAuthConfig::ManagedIdentity {
                client_id,
                imds_endpoint,
            } => {
                let mut url = imds_endpoint.clone();
                {
                    let mut query = url.query_pairs_mut();
                    query
                        .append_pair("api-version", "2018-02-01")
                        .append_pair("resource", resource_of(&self.scope));
                    if let Some(id) = client_id {
                        query.append_pair("client_id", id);
                    }
                }
                let endpoint = endpoint_name(&url);
                // Never through a proxy: IMDS is link-local to the node.
                let client = http.direct.as_ref().unwrap_or(&http.client);
                let request = client.get(url).header("Metadata", "true");
                let response = http.send(Operation::Token, request, &endpoint, &[]).await?;
                parse_token(response, &endpoint).await
            }
        }
    }

    async fn post_form(
        &self,
        http: &Http,
        url: &Url,
        form: &[(&str, &str)],
    ) -> Result<(SecretString, Duration), Error> {
        let endpoint = endpoint_name(url);
        let request = http.client.post(url.clone()).form(form);
        let response = http.send(Operation::Token, request, &endpoint, &[]).await?;
        parse_token(response, &endpoint).await
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
fn token_url(authority: &Url, tenant: &str) -> Result<Url, Error> {
    let text = format!(
        "{}/{}/oauth2/v2.0/token",
        authority.as_str().trim_end_matches('/'),
        tenant
    );
    Url::parse(&text).map_err(|e| Error::Auth {
        endpoint: authority.to_string(),
        message: format!("cannot build the token URL: {e}"),
    })
}

/// IMDS wants the resource, not the scope: `https://kusto.kusto.windows.net/.default` →
/// `https://kusto.kusto.windows.net`.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

/// Scheme, host and path of a URL, without its query (which may hold a signature).
pub(super) fn endpoint_name(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

async fn parse_token(
    response: reqwest::Response,
    endpoint: &str,
) -> Result<(SecretString, Duration), Error> {
    let body: Value = response.json().await.map_err(|e| Error::Auth {
        endpoint: endpoint.to_owned(),
        message: format!("the token response is not JSON: {}", e.without_url()),
    })?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Auth {
            endpoint: endpoint.to_owned(),
            message: "the token response has no access_token".to_owned(),
        })?;
    let seconds = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    let lifetime = body
        .get("expires_in")
        .and_then(seconds)
        .or_else(|| {
            // IMDS also sends expires_on (Unix seconds, as a string).
            let on = body.get("expires_on").and_then(seconds)?;
            let now = u64::try_from(jiff::Timestamp::now().as_second()).ok()?;
            Some(on.saturating_sub(now))
        })
        .unwrap_or(300);
    Ok((
        SecretString::from(token.to_owned()),
        Duration::from_secs(lifetime),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_gets_the_resource_and_token_urls_join_authority_and_tenant() {
        assert_eq!(
            resource_of("https://kusto.kusto.windows.net/.default"),
            "https://kusto.kusto.windows.net"
        );
        let authority = Url::parse("https://login.example/").unwrap();
        assert_eq!(
            token_url(&authority, "t1").unwrap().as_str(),
            "https://login.example/t1/oauth2/v2.0/token"
        );
        let sas = Url::parse("http://127.0.0.1:1/acct/c?sv=1&sig=SECRET").unwrap();
        assert_eq!(endpoint_name(&sas), "http://127.0.0.1:1/acct/c");
    }
}
