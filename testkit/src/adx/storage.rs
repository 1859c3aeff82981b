//! The emulator's side of Azure Storage (Azurite): account SAS minting (HMAC-SHA256 over the
//! `sv=2019-12-12` string-to-sign with the account key) and the few REST calls the data
//! management emulator makes: create a container, queue or table, get and delete messages, post a
//! failure message, read a blob, write and read an ingestion status row.
//!
//! Owns these calls and nothing else. It must never log a signature or a URL with its query.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{StatusCode, Url};

/// `x-ms-version` the emulator sends.
const VERSION: &str = "2025-07-05";

/// A storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request did not complete.
    #[error("storage request {what} failed")]
    Http {
        /// What was attempted.
        what: String,
        /// The cause (without its URL).
        #[source]
        source: reqwest::Error,
    },
    /// Storage answered an error status.
    #[error("storage request {what} answered {status}")]
    Status {
        /// What was attempted.
        what: String,
        /// The status.
        status: u16,
    },
    /// The account key is not base64.
    #[error("the storage account key is not base64")]
    Key,
}

/// A storage account on Azurite, with the SAS the emulator signs for it.
#[derive(Clone)]
pub struct StorageAccount {
    /// Account name (`devstoreaccount1`).
    pub account: String,
    key: Vec<u8>,
    /// `http://127.0.0.1:PORT` of the blob service.
    pub blob_endpoint: Url,
    /// `http://127.0.0.1:PORT` of the queue service.
    pub queue_endpoint: Url,
    /// `http://127.0.0.1:PORT` of the table service.
    pub table_endpoint: Url,
    http: reqwest::Client,
}

impl std::fmt::Debug for StorageAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageAccount")
            .field("account", &self.account)
            .field("blob_endpoint", &self.blob_endpoint.as_str())
            .field("queue_endpoint", &self.queue_endpoint.as_str())
            .field("table_endpoint", &self.table_endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// A message read from a queue.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    /// `MessageId`.
    pub id: String,
    /// `PopReceipt` (needed to delete it).
    pub pop_receipt: String,
    /// `MessageText`, as stored (base64 for ADX messages).
    pub text: String,
}

impl StorageAccount {
    /// An account on the given endpoints.
    ///
    /// # Errors
    /// [`Error::Key`] if `key` is not base64.
    pub fn new(
        account: &str,
        key: &str,
        blob_endpoint: Url,
        queue_endpoint: Url,
        table_endpoint: Url,
    ) -> Result<Self, Error> {
        Ok(Self {
            account: account.to_owned(),
            key: base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|_| Error::Key)?,
            blob_endpoint,
            queue_endpoint,
            table_endpoint,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|source| Error::Http {
                    what: "client".to_owned(),
                    source: source.without_url(),
                })?,
        })
    }

    /// An account SAS query string (`sv=2019-12-12&ss=bqt&srt=sco&sp=…&se=…&sig=…`: blobs,
    /// queues and tables), valid until `expiry`.
    #[must_use]
    pub fn account_sas(&self, permissions: &str, expiry: jiff::Timestamp) -> String {
        let expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (version, services, resource_types) = ("2019-12-12", "bqt", "sco");
        let string_to_sign = format!(
            "{}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n\n{version}\n",
            self.account
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key);
        let signature = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
        let mut query = Url::parse("http://x/").map_or_else(
            |_| String::new(),
            |mut u| {
                u.query_pairs_mut()
                    .append_pair("sv", version)
                    .append_pair("ss", services)
                    .append_pair("srt", resource_types)
                    .append_pair("sp", permissions)
                    .append_pair("se", &expiry)
                    .append_pair("sig", &signature);
                u.query().unwrap_or_default().to_owned()
            },
        );
        query.shrink_to_fit();
        query
    }

    /// The emulator's own long-lived SAS (full permissions).
    fn admin_sas(&self) -> String {
        self.account_sas(
            "rwdlacup",
            jiff::Timestamp::from_second(4_102_444_800).unwrap_or(jiff::Timestamp::MAX),
        )
    }

    /// `{blob endpoint}/{account}/{container}`.
    #[must_use]
    pub fn container_url(&self, container: &str) -> Url {
        path_url(&self.blob_endpoint, &[&self.account, container])
    }

    /// `{queue endpoint}/{account}/{queue}`.
    #[must_use]
    pub fn queue_url(&self, queue: &str) -> Url {
        path_url(&self.queue_endpoint, &[&self.account, queue])
    }

    /// `{table endpoint}/{account}/{table}`.
    #[must_use]
    pub fn table_url(&self, table: &str) -> Url {
        path_url(&self.table_endpoint, &[&self.account, table])
    }

    /// Creates a table (an existing one is fine).
    ///
    /// # Errors
    /// On any other answer.
    pub async fn create_table(&self, table: &str) -> Result<(), Error> {
        let mut url = path_url(&self.table_endpoint, &[&self.account, "Tables"]);
        url.set_query(Some(&self.admin_sas()));
        self.call(
            &format!("create table {table}"),
            table_request(self.http.post(url))
                .body(serde_json::json!({ "TableName": table }).to_string()),
            &[StatusCode::CONFLICT],
        )
        .await
        .map(drop)
    }

    /// Writes the entity `(key, key)` of `table` with `properties`, replacing what is there (the
    /// DM's update of an ingestion status row). Returns whether the row existed before.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn upsert_row(
        &self,
        table: &str,
        key: &str,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, Error> {
        let existed = self.get_row(table, key).await?.is_some();
        let mut url = entity_url(&self.table_endpoint, &self.account, table, key);
        url.set_query(Some(&self.admin_sas()));
        let mut body = properties.clone();
        body.insert("PartitionKey".to_owned(), key.into());
        body.insert("RowKey".to_owned(), key.into());
        self.call(
            &format!("upsert row of {table}"),
            table_request(self.http.put(url)).body(serde_json::Value::Object(body).to_string()),
            &[],
        )
        .await?;
        Ok(existed)
    }

    /// The entity `(key, key)` of `table`, if there is one.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_row(
        &self,
        table: &str,
        key: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Error> {
        let mut url = entity_url(&self.table_endpoint, &self.account, table, key);
        url.set_query(Some(&self.admin_sas()));
        let what = format!("get row of {table}");
        let response = self
            .call(
                &what,
                table_request(self.http.get(url)),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response.bytes().await.map_err(|source| Error::Http {
            what: what.clone(),
            source: source.without_url(),
        })?;
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
            _ => Err(Error::Status { what, status: 200 }),
        }
    }

    /// Creates a container (an existing one is fine).
    ///
    /// # Errors
    /// On any other answer.
    pub async fn create_container(&self, container: &str) -> Result<(), Error> {
        let mut url = self.container_url(container);
        url.set_query(Some(&format!("restype=container&{}", self.admin_sas())));
        self.call(
            &format!("create container {container}"),
            self.http.put(url),
            &[StatusCode::CONFLICT],
        )
        .await
        .map(drop)
    }

    /// Creates a queue (an existing one is fine).
    ///
    /// # Errors
    /// On any other answer.
    pub async fn create_queue(&self, queue: &str) -> Result<(), Error> {
        let mut url = self.queue_url(queue);
        url.set_query(Some(&self.admin_sas()));
        self.call(
            &format!("create queue {queue}"),
            self.http.put(url),
            &[StatusCode::CONFLICT],
        )
        .await
        .map(drop)
    }

    /// Dequeues up to 32 messages, invisible for `visibility` meanwhile.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_messages(
        &self,
        queue: &str,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>, Error> {
        let mut url = path_url(&self.queue_endpoint, &[&self.account, queue, "messages"]);
        url.set_query(Some(&format!(
            "numofmessages=32&visibilitytimeout={}&{}",
            visibility.as_secs().max(1),
            self.admin_sas()
        )));
        let body = self
            .call(&format!("get messages {queue}"), self.http.get(url), &[])
            .await?
            .text()
            .await
            .map_err(|source| Error::Http {
                what: format!("get messages {queue}"),
                source: source.without_url(),
            })?;
        Ok(parse_messages(&body))
    }

    /// Peeks up to 32 messages (nothing is hidden or dequeued).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn peek_messages(&self, queue: &str) -> Result<Vec<QueueMessage>, Error> {
        let mut url = path_url(&self.queue_endpoint, &[&self.account, queue, "messages"]);
        url.set_query(Some(&format!(
            "peekonly=true&numofmessages=32&{}",
            self.admin_sas()
        )));
        let body = self
            .call(&format!("peek messages {queue}"), self.http.get(url), &[])
            .await?
            .text()
            .await
            .map_err(|source| Error::Http {
                what: format!("peek messages {queue}"),
                source: source.without_url(),
            })?;
        Ok(parse_messages(&body))
    }

    /// Deletes a dequeued message.
    ///
    /// # Errors
    /// On a failed request.
    pub async fn delete_message(&self, queue: &str, message: &QueueMessage) -> Result<(), Error> {
        let mut url = path_url(
            &self.queue_endpoint,
            &[&self.account, queue, "messages", &message.id],
        );
        url.query_pairs_mut()
            .append_pair("popreceipt", &message.pop_receipt);
        let query = format!("{}&{}", url.query().unwrap_or_default(), self.admin_sas());
        url.set_query(Some(&query));
        self.call(
            &format!("delete message {queue}"),
            self.http.delete(url),
            &[StatusCode::NOT_FOUND],
        )
        .await
        .map(drop)
    }

    /// Posts a message whose text is `text` (already base64 where the reader expects it).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn put_message(&self, queue: &str, text: &str) -> Result<(), Error> {
        let mut url = path_url(&self.queue_endpoint, &[&self.account, queue, "messages"]);
        url.set_query(Some(&self.admin_sas()));
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>{text}</MessageText></QueueMessage>"
        );
        self.call(
            &format!("put message {queue}"),
            self.http
                .post(url)
                .header("Content-Type", "application/xml")
                .body(body),
            &[],
        )
        .await
        .map(drop)
    }

    /// Reads a blob by its URL (any query string on it is replaced by the emulator's own SAS:
    /// the DM reads with its own access, not the client's).
    ///
    /// # Errors
    /// On a failed request.
    pub async fn get_blob(&self, blob: &Url) -> Result<Vec<u8>, Error> {
        let mut url = blob.clone();
        url.set_query(Some(&self.admin_sas()));
        let what = format!("get blob {}", blob.path());
        let response = self.call(&what, self.http.get(url), &[]).await?;
        Ok(response
            .bytes()
            .await
            .map_err(|source| Error::Http {
                what,
                source: source.without_url(),
            })?
            .to_vec())
    }

    async fn call(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        accept: &[StatusCode],
    ) -> Result<reqwest::Response, Error> {
        let response = request
            .header("x-ms-version", VERSION)
            .send()
            .await
            .map_err(|source| Error::Http {
                what: what.to_owned(),
                source: source.without_url(),
            })?;
        if response.status().is_success() || accept.contains(&response.status()) {
            Ok(response)
        } else {
            Err(Error::Status {
                what: what.to_owned(),
                status: response.status().as_u16(),
            })
        }
    }
}

/// The headers of a Table service request (JSON, no metadata).
fn table_request(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("Content-Type", "application/json")
        .header("Accept", "application/json;odata=nometadata")
        .header("DataServiceVersion", "3.0")
}

/// `{endpoint}/{account}/{table}(PartitionKey='key',RowKey='key')`.
fn entity_url(endpoint: &Url, account: &str, table: &str, key: &str) -> Url {
    let key = key.replace('\'', "''");
    path_url(
        endpoint,
        &[
            account,
            &format!("{table}(PartitionKey='{key}',RowKey='{key}')"),
        ],
    )
}

fn path_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        for segment in segments {
            path.push(segment);
        }
    }
    url
}

fn parse_messages(xml: &str) -> Vec<QueueMessage> {
    xml.split("<QueueMessage>")
        .skip(1)
        .filter_map(|part| {
            Some(QueueMessage {
                id: unescape(element_text(part, "MessageId")?),
                pop_receipt: unescape(element_text(part, "PopReceipt").unwrap_or("")),
                text: unescape(element_text(part, "MessageText")?),
            })
        })
        .collect()
}

/// The text of the first `<tag>…</tag>` in `xml` (the queue's answers have no attributes on
/// these elements and no nesting of the same tag).
fn element_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_messages_are_read_from_the_answer_xml_and_unescaped() {
        let xml = "<?xml version=\"1.0\"?><QueueMessagesList>\
            <QueueMessage><MessageId>m-1</MessageId><PopReceipt>p&amp;1</PopReceipt><MessageText>a&lt;b</MessageText></QueueMessage>\
            <QueueMessage><MessageId>m-2</MessageId><MessageText>c</MessageText></QueueMessage>\
            <QueueMessage><PopReceipt>no id</PopReceipt></QueueMessage></QueueMessagesList>";
        let messages = parse_messages(xml);
        assert_eq!(messages.len(), 2, "a message without an id is skipped");
        assert_eq!(messages[0].id, "m-1");
        assert_eq!(messages[0].pop_receipt, "p&1");
        assert_eq!(messages[0].text, "a<b");
        assert_eq!(messages[1].pop_receipt, "");
        assert_eq!(element_text("<A>x</A>", "B"), None);
        assert_eq!(element_text("<A>x", "A"), None);
    }

    #[test]
    fn the_account_sas_signs_the_2019_12_12_string_to_sign() {
        let account = StorageAccount::new(
            super::super::azurite::DEV_ACCOUNT,
            super::super::azurite::DEV_ACCOUNT_KEY,
            Url::parse("http://127.0.0.1:1").unwrap(),
            Url::parse("http://127.0.0.1:2").unwrap(),
            Url::parse("http://127.0.0.1:3").unwrap(),
        )
        .unwrap();
        let sas = account.account_sas(
            "rwdlacup",
            jiff::Timestamp::from_second(4_070_908_800).unwrap(),
        );
        assert!(
            sas.starts_with(
                "sv=2019-12-12&ss=bqt&srt=sco&sp=rwdlacup&se=2099-01-01T00%3A00%3A00Z&sig="
            ),
            "{sas}"
        );
        // Recompute independently.
        let key = base64::engine::general_purpose::STANDARD
            .decode(super::super::azurite::DEV_ACCOUNT_KEY)
            .unwrap();
        let sts = "devstoreaccount1\nrwdlacup\nbqt\nsco\n\n2099-01-01T00:00:00Z\n\n\n2019-12-12\n";
        let sig = base64::engine::general_purpose::STANDARD.encode(
            ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
                sts.as_bytes(),
            )
            .as_ref(),
        );
        let parsed = Url::parse(&format!("http://x/?{sas}")).unwrap();
        let decoded: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert!(decoded.contains(&("sig".to_owned(), sig)));
    }
}
