//! What every handler shares: config, store, keys, clock and AWS clients, built once per
//! cold start.

use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;

use crate::auth::jwt::Keys;
pub use crate::clients::Clients;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::health::HealthCache;
use crate::manifest::ManifestSigner;
use crate::payload::Payloads;
use crate::store::secrets::SecretStore;
use crate::store::Store;

/// Shared application state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub config: Arc<Config>,
    /// The DynamoDB store.
    pub store: Store,
    /// User-supplied secrets (tool credentials, LLM keys).
    pub secrets: SecretStore,
    /// Step payloads too large for their records.
    pub payloads: Payloads,
    /// Token and cursor keys; absent in the run worker, which serves no requests.
    keys: Option<Arc<Keys>>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// AWS clients, for health checks.
    pub clients: Clients,
    /// The manifest signing key, loaded on first use: only the registry functions need it.
    manifest_signer: Arc<tokio::sync::OnceCell<ManifestSigner>>,
    /// The last `/health` report, reused for a few seconds.
    pub(crate) health: Arc<HealthCache>,
}

impl AppState {
    /// Builds the state, loading the JWT signing key from Secrets Manager.
    pub async fn load(
        config: Config,
        clients: Clients,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let keys = Self::load_keys(&config, &clients).await?;
        let mut state = Self::without_keys(config, clients, clock);
        state.keys = Some(Arc::new(keys));
        Ok(state)
    }

    /// Builds the state of a process that serves no API requests (the run worker): it never
    /// reads the JWT signing key, so its role need not be allowed to.
    pub fn without_keys(config: Config, clients: Clients, clock: Arc<dyn Clock>) -> Self {
        Self {
            store: Store::new(clients.ddb.clone(), &config),
            secrets: SecretStore::new(clients.secrets.clone(), &config),
            payloads: Payloads::new(clients.s3.clone(), &config),
            config: Arc::new(config),
            keys: None,
            clock,
            clients,
            manifest_signer: Arc::default(),
            health: Arc::default(),
        }
    }

    /// Token and cursor keys. A state built [`without_keys`](Self::without_keys) has none,
    /// and answers `500` if asked.
    pub fn keys(&self) -> Result<&Keys, crate::ApiError> {
        self.keys.as_deref().ok_or_else(|| {
            crate::ApiError::Internal(anyhow::anyhow!(
                "this process was built without the JWT signing key"
            ))
        })
    }

    async fn load_keys(config: &Config, clients: &Clients) -> anyhow::Result<Keys> {
        let secret_name = config.jwt_secret_name();
        let secret = clients
            .secrets
            .get_secret_value()
            .secret_id(&secret_name)
            .send()
            .await
            .with_context(|| format!("Failed to load the JWT signing key {secret_name}"))?;
        let secret = SecretString::from(
            secret
                .secret_string
                .with_context(|| format!("secret {secret_name} has no string value"))?,
        );
        Keys::new(&secret, &config.jwt_issuer, &config.jwt_audience)
    }

    /// The key that signs exported manifests, read from Secrets Manager once.
    pub async fn manifest_signer(&self) -> anyhow::Result<&ManifestSigner> {
        self.manifest_signer
            .get_or_try_init(|| async {
                let name = self.config.registry_secret_name();
                let secret = self
                    .clients
                    .secrets
                    .get_secret_value()
                    .secret_id(&name)
                    .send()
                    .await
                    .with_context(|| format!("Failed to load the manifest signing key {name}"))?
                    .secret_string
                    .with_context(|| format!("secret {name} has no string value"))?;
                ManifestSigner::from_secret(&SecretString::from(secret))
            })
            .await
    }

    /// Builds the state from the environment with the system clock.
    pub async fn from_env() -> anyhow::Result<Self> {
        let config = Config::from_env()?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::load(config, Clients::new(&sdk), Arc::new(SystemClock)).await
    }

    /// [`without_keys`](Self::without_keys) from the environment with the system clock.
    pub async fn from_env_without_keys() -> anyhow::Result<Self> {
        let config = Config::from_env()?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Ok(Self::without_keys(
            config,
            Clients::new(&sdk),
            Arc::new(SystemClock),
        ))
    }
}
