//! Lambda function serving `/api/v1/tools/*`: tools, their schemas and credentials, manifests.

use spark_ops::{api, bootstrap};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bootstrap::serve_api(api::tools_router).await
}
