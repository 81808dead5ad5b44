//! Lambda function serving `/api/v1/runs/*`: runs, their steps and logs.

use spark_ops::{api, bootstrap};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bootstrap::serve_api(api::runs_router).await
}
