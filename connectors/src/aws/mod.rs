//! AWS services beside object storage (feature `aws`): the SQS queue that delivers a bucket's
//! event notifications to Auto Loader ([`notifications`]), and the Kinesis source
//! ([`kinesis`]), both on the AWS SDK for Rust.
//!
//! Where a client finds its settings (no profile files or instance metadata: the SDK's
//! `aws-config` is not built in): the source's options first (`region`, `endpoint`,
//! `awsAccessKey`, `awsSecretKey`, `awsSessionToken`, the names Databricks uses), then the usual
//! environment variables (`AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_<SERVICE>`/
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
//! Secrets are never part of a message.

pub mod kinesis;
pub mod notifications;

use sluice_engine::{EngineError, Options, Result};

/// What an AWS client needs.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    pub(crate) region: String,
    pub(crate) endpoint: Option<String>,
    access_key: String,
    secret_key: String,
    token: Option<String>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl ClientSettings {
    /// Settings from `options` (keys after `prefix`, e.g. `cloudFiles.`) and the environment;
    /// `service` names the endpoint variable (`SQS`, `KINESIS`).
    pub(crate) fn from(options: &Options, prefix: &str, service: &str, what: &str) -> Result<Self> {
        let opt = |k: &str| options.get(&format!("{prefix}{k}")).map(str::to_string);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = opt("region")
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = opt("endpoint")
            .or_else(|| env(&format!("AWS_ENDPOINT_URL_{service}")))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let (access_key, secret_key, token) = match (opt("awsAccessKey"), opt("awsSecretKey")) {
            (Some(a), Some(s)) => (a, s, opt("awsSessionToken")),
            (Some(_), None) | (None, Some(_)) => {
                return Err(EngineError::user(format!(
                    "{what}: options {prefix}awsAccessKey and {prefix}awsSecretKey go together"
                )))
            }
            (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(a), Some(s)) => (a, s, env("AWS_SESSION_TOKEN")),
                _ => {
                    return Err(EngineError::user(format!(
                        "{what}: no AWS credentials: set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or options {prefix}awsAccessKey and \
                         {prefix}awsSecretKey"
                    )))
                }
            },
        };
        Ok(Self {
            region,
            endpoint,
            access_key,
            secret_key,
            token,
        })
    }

    fn credentials(&self) -> aws_sdk_sqs::config::Credentials {
        aws_sdk_sqs::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            self.token.clone(),
            None,
            "sluice-options",
        )
    }
}

/// Runs an SDK call on the object-store runtime from a query's thread.
pub(crate) fn block_on<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    Ok(sluice_engine::connector::storage::block_on(f)?)
}

/// An SDK error as text: the service's code and message, never a request's headers.
pub(crate) fn sdk_error<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let m = s.err();
            format!(
                "{}: {}",
                m.code().unwrap_or("error"),
                m.message().unwrap_or("(no message)")
            )
        }
        SdkError::DispatchFailure(d) => format!("cannot reach the service: {d:?}"),
        SdkError::TimeoutError(_) => "the request timed out".to_string(),
        other => format!("{other}"),
    }
}
