//! Chains of event-started runs: a run started by an event is one deeper than the run (or
//! tenant event, depth 0) that published the event, and a chain stops at [`MAX_CHAIN_DEPTH`],
//! so "when A succeeds, run A" cannot loop forever.

use serde_json::Value;

/// The deepest a run started by an event may be.
pub const MAX_CHAIN_DEPTH: u32 = 10;

/// A run that would be deeper than [`MAX_CHAIN_DEPTH`]; the fire is recorded `denied`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the chain of event-started runs would reach depth {depth}, over the limit of {MAX_CHAIN_DEPTH}")]
pub struct ChainTooDeep {
    /// The depth the run would have had.
    pub depth: u32,
}

/// The chain depth of a run started by `event` (an event as EventBridge delivers it): one
/// more than the event's `detail.chain_depth` (0 when absent, as for tenants' events).
pub fn next_depth(event: &Value) -> Result<u32, ChainTooDeep> {
    let parent = event["detail"]["chain_depth"]
        .as_u64()
        .map_or(0, |depth| u32::try_from(depth).unwrap_or(u32::MAX));
    let depth = parent.saturating_add(1);
    if depth > MAX_CHAIN_DEPTH {
        return Err(ChainTooDeep { depth });
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_tenant_event_starts_a_chain_at_depth_one() {
        assert_eq!(next_depth(&json!({"detail": {"chain_depth": 0}})), Ok(1));
        assert_eq!(next_depth(&json!({"detail": {}})), Ok(1));
    }

    #[test]
    fn a_run_at_the_limit_may_start_no_further_run() {
        assert_eq!(next_depth(&json!({"detail": {"chain_depth": 9}})), Ok(10));
        assert_eq!(
            next_depth(&json!({"detail": {"chain_depth": 10}})),
            Err(ChainTooDeep { depth: 11 })
        );
        assert_eq!(
            next_depth(&json!({"detail": {"chain_depth": u64::MAX}})),
            Err(ChainTooDeep { depth: u32::MAX })
        );
    }
}
