//! Lambda function serving `/api/v1/workflows/*`: workflows and their versions.

use spark_ops::{api, bootstrap};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bootstrap::serve_api(api::workflows_router).await
}
