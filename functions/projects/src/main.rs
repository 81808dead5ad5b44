//! Lambda function serving `/api/v1/projects/*` (projects, members, API keys), plus
//! `/health`, `/api/v1/openapi.json` and `/docs`.

use spark_ops::{api, bootstrap};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bootstrap::serve_api(api::projects_router).await
}
