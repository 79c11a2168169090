//! Auto Loader's file-notification mode on AWS (`cloudFiles.useNotifications = true`): the
//! bucket sends its `ObjectCreated` events to an SQS queue (`cloudFiles.queueUrl`), and the
//! source learns of new objects from the queue instead of listing the bucket.
//!
//! A message is deleted only once every object it announced is in a committed batch (or is one
//! the source does not read): a crash before that leaves it in the queue, and it comes back
//! after its visibility timeout — the source log already holds its files, so they are not read
//! twice. The source lists the bucket once at start-up (objects that arrived while it was
//! stopped, or before the queue existed) and never again; switching between the two modes on a
//! restart reads every object once, as both consult the same source log.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use sluice_engine::{EngineError, Options, Result};

use super::{block_on, sdk_error, ClientSettings};
use crate::file::{FileEntry, ObjectNotifications};

/// The queue a bucket's notifications arrive in.
pub struct SqsNotifications {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    /// Objects announced and not yet in a committed batch, by URL.
    announced: BTreeMap<String, FileEntry>,
    /// The receipt handles of the messages that announced each object.
    receipts: HashMap<String, Vec<String>>,
    /// Messages about nothing this source reads (a test event, another bucket): deleted at the
    /// next commit.
    idle: Vec<String>,
}

impl std::fmt::Debug for SqsNotifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqsNotifications({})", self.queue_url)
    }
}

/// The most receive calls one poll makes (10 messages each).
const MAX_RECEIVES: usize = 100;

impl SqsNotifications {
    /// The queue of `cloudFiles.queueUrl` (its endpoint is the URL's origin unless
    /// `AWS_ENDPOINT_URL_SQS`/`AWS_ENDPOINT_URL` says otherwise).
    pub fn open(options: &Options) -> Result<Self> {
        let queue_url = options
            .get("cloudFiles.queueUrl")
            .ok_or_else(|| {
                EngineError::user(
                    "cloudFiles.useNotifications needs option cloudFiles.queueUrl: the SQS queue \
                     the bucket's ObjectCreated events are sent to",
                )
            })?
            .to_string();
        let mut s =
            ClientSettings::from(options, "cloudFiles.", "SQS", "cloudFiles notifications")?;
        if s.endpoint.is_none() {
            let u = url::Url::parse(&queue_url).map_err(|e| {
                EngineError::user(format!(
                    "cloudFiles.queueUrl '{queue_url}' is not a URL: {e}"
                ))
            })?;
            s.endpoint = Some(u.origin().ascii_serialization());
        }
        let mut b = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new(s.region.clone()))
            .credentials_provider(s.credentials());
        if let Some(e) = &s.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(Self {
            client: aws_sdk_sqs::Client::from_conf(b.build()),
            queue_url,
            announced: BTreeMap::new(),
            receipts: HashMap::new(),
            idle: Vec::new(),
        })
    }

    fn delete(&self, handles: Vec<String>) -> Result<()> {
        for chunk in handles.chunks(10) {
            let mut req = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url);
            for (i, h) in chunk.iter().enumerate() {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .map_err(|e| EngineError::bug(format!("SQS delete entry: {e}")))?;
                req = req.entries(entry);
            }
            let out = block_on(async move { req.send().await })?.map_err(|e| {
                EngineError::external(format!(
                    "deleting notifications from {}: {}",
                    self.queue_url,
                    sdk_error(&e)
                ))
            })?;
            // a message not deleted comes back after its visibility timeout, and the source
            // log recognises its objects: worth a warning, not a failure
            if let Some(f) = out.failed().first() {
                tracing::warn!(
                    "{} of {} notifications could not be deleted from {} ({}: {}); they will be \
                     delivered again and skipped",
                    out.failed().len(),
                    chunk.len(),
                    self.queue_url,
                    f.code(),
                    f.message().unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

/// The objects an S3 event message announces: (bucket, key, size, event time ms). A message
/// may come wrapped by SNS (its `Message` field holds the event).
pub fn announced_objects(body: &str) -> Vec<(String, String, u64, i64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let v = match v.get("Message").and_then(|m| m.as_str()) {
        Some(inner) => match serde_json::from_str::<serde_json::Value>(inner) {
            Ok(inner) => inner,
            Err(_) => return Vec::new(),
        },
        None => v,
    };
    let mut out = Vec::new();
    for r in v
        .get("Records")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let created = r
            .get("eventName")
            .and_then(|n| n.as_str())
            .is_some_and(|n| n.starts_with("ObjectCreated"));
        let bucket = r.pointer("/s3/bucket/name").and_then(|b| b.as_str());
        let key = r.pointer("/s3/object/key").and_then(|k| k.as_str());
        let size = r
            .pointer("/s3/object/size")
            .and_then(|s| s.as_u64())
            .unwrap_or(0);
        let time = r
            .get("eventTime")
            .and_then(|t| t.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp_millis());
        if let (true, Some(b), Some(k)) = (created, bucket, key) {
            // keys come URL-encoded, spaces as '+'
            let key = url::form_urlencoded::parse(format!("k={k}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| k.to_string());
            out.push((b.to_string(), key, size, time));
        }
    }
    out
}

impl ObjectNotifications for SqsNotifications {
    fn poll(&mut self, url_of: &dyn Fn(&str, &str) -> Option<String>) -> Result<Vec<FileEntry>> {
        for _ in 0..MAX_RECEIVES {
            let req = self
                .client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0);
            let out = block_on(async move { req.send().await })?.map_err(|e| {
                EngineError::external(format!(
                    "reading notifications from {}: {}",
                    self.queue_url,
                    sdk_error(&e)
                ))
            })?;
            let messages = out.messages();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let Some(handle) = m.receipt_handle() else {
                    continue;
                };
                let mut ours = false;
                for (bucket, key, size, time) in announced_objects(m.body().unwrap_or_default()) {
                    if let Some(url) = url_of(&bucket, &key) {
                        ours = true;
                        self.receipts
                            .entry(url.clone())
                            .or_default()
                            .push(handle.to_string());
                        self.announced.entry(url.clone()).or_insert(FileEntry {
                            path: url,
                            mtime_ms: time,
                            size,
                        });
                    }
                }
                if !ours {
                    self.idle.push(handle.to_string());
                }
            }
        }
        Ok(self.announced.values().cloned().collect())
    }

    fn committed(&mut self, taken: &dyn Fn(&str) -> bool) -> Result<()> {
        let done: Vec<String> = self
            .announced
            .keys()
            .filter(|u| taken(u))
            .cloned()
            .collect();
        let mut handles = std::mem::take(&mut self.idle);
        for u in done {
            self.announced.remove(&u);
            handles.extend(self.receipts.remove(&u).unwrap_or_default());
        }
        // a message announcing several objects goes once all of them are taken
        handles.sort();
        handles.dedup();
        let still: std::collections::HashSet<&String> = self.receipts.values().flatten().collect();
        handles.retain(|h| !still.contains(h));
        self.delete(handles)
    }
}

#[cfg(test)]
mod tests {
    use super::announced_objects;

    #[test]
    fn s3_events_name_their_objects() {
        let plain = r#"{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"2026-12-04T18:45:37.759Z",
            "s3":{"bucket":{"name":"b"},"object":{"key":"raw/a+b%3D1.json","size":12}}},
            {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"x"}}}]}"#;
        let sns = serde_json::json!({"Type": "Notification", "Message": plain}).to_string();
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        let want = vec![(
            "b".to_string(),
            "raw/a b=1.json".to_string(),
            12,
            1_796_409_937_759,
        )];
        for (body, expect) in [
            (plain, want.clone()),
            (sns.as_str(), want),
            (test_event, vec![]),
            ("not json", vec![]),
        ] {
            assert_eq!(announced_objects(body), expect, "{body}");
        }
    }
}
