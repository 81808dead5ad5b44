//! Lambda function serving `/api/v1/auth/*`: registration, login, refresh, logout, me.

use spark_ops::{api, bootstrap};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    bootstrap::serve_api(api::auth_router).await
}
