//! Lambda function serving `/api/v1/agents/*`: agents, heartbeats, metrics, manifests.

use spark_ops::{api, bootstrap};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bootstrap::serve_api(api::agents_router).await
}
