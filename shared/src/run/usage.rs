//! What a step, or a whole run, spent: tokens and their exact cost.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Tokens and the exact cost in USD of a step's attempts, or of a run (the sum of its
/// steps'). Records flatten it, so the stored and served fields keep their names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input (prompt) tokens.
    #[serde(default)]
    pub tokens_prompt: u64,
    /// Output (completion) tokens.
    #[serde(default)]
    pub tokens_completion: u64,
    /// Their cost in USD; zero when the model has no price.
    #[serde(default)]
    pub usd_cost: Decimal,
}

impl Usage {
    /// Whether nothing was spent.
    pub fn is_zero(&self) -> bool {
        self.tokens_prompt == 0 && self.tokens_completion == 0 && self.usd_cost.is_zero()
    }
}
