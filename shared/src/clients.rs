//! The AWS clients the control plane uses, built once per cold start from the SDK
//! configuration (which honours `AWS_ENDPOINT_URL*`).

use aws_config::SdkConfig;

/// The AWS clients the control plane uses.
#[derive(Clone, Debug)]
pub struct Clients {
    /// DynamoDB.
    pub ddb: aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// Secrets Manager.
    pub secrets: aws_sdk_secretsmanager::Client,
    /// Step Functions.
    pub sfn: aws_sdk_sfn::Client,
    /// S3, for step payloads too large for their records.
    pub s3: aws_sdk_s3::Client,
    /// EventBridge: the bus of Spark-Ops' own and tenants' events, event-schedule rules and
    /// the scheduler's tick rule.
    pub events: aws_sdk_eventbridge::Client,
}

impl Clients {
    /// Clients from a loaded SDK configuration, which honours `AWS_ENDPOINT_URL*`.
    pub fn new(sdk: &SdkConfig) -> Self {
        Self {
            ddb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            sfn: aws_sdk_sfn::Client::new(sdk),
            s3: s3_client(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
        }
    }
}

/// An S3 client; with an endpoint override (LocalStack) it addresses buckets by path, since
/// `<bucket>.127.0.0.1` does not resolve.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
