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
}

impl Clients {
    /// Clients from a loaded SDK configuration, which honours `AWS_ENDPOINT_URL*`.
    pub fn new(sdk: &SdkConfig) -> Self {
        Self {
            ddb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            sfn: aws_sdk_sfn::Client::new(sdk),
        }
    }
}
