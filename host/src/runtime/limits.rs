//! The limits a handler version sets for itself, over its tenant's.
//!
//! Owns: [`ModuleLimits`] (what `authkit-host deploy --memory-limit-mib ...` stores
//! with a version), the ranges every deadline setting must fall in, and the rule
//! that combines a version's limits with its tenant's. Must not: read settings,
//! the database or a request; the callers bring those.
//!
//! Why per version: an interpreted guest (JavaScript, Python) carries its engine
//! and may need a larger memory cap or a longer deadline than a Rust handler of
//! the same tenant. Setting them on the version keeps them with the code that
//! needs them, and a hot swap or a roll back brings the right ones along.
//!
//! Whose they are: a version the root token uploaded keeps its own limits up
//! to the host's ceilings (the operator chose them). One the tenant's own
//! token uploaded may ask at most its tenant's limits, and is held to them
//! whenever it runs, so lowering a tenant's limits later lowers those too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::InvocationLimits;

/// Event deadlines, in ms (tenants and versions alike).
pub const EVENT_DEADLINE_MS: (u64, u64) = (10, 300_000);
/// Actions deadlines, in ms: WorkOS waits for the verdict.
pub const ACTION_DEADLINE_MS: (u64, u64) = (10, 30_000);
/// Query deadlines, in ms.
pub const QUERY_DEADLINE_MS: (u64, u64) = (10, 60_000);
/// The smallest memory limit anyone may set.
pub const MIN_MEMORY_BYTES: usize = 1024 * 1024;

/// A version's own limits; each one set replaces its tenant's value whenever
/// this version runs. Empty (the default): the tenant's limits apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_deadline_ms: Option<u64>,
    /// Set on a version the tenant's own token uploaded (see
    /// [`ModuleLimits::held_to_tenant`]): each limit set is at most the
    /// tenant's current one whenever the version runs, so lowering a tenant's
    /// limits lowers its own versions' too. Unset (the root token's versions,
    /// and every version stored before this existed): the version's values
    /// stand, up to the host's ceilings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_to_tenant: bool,
}

/// A limit outside what this host allows: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct InvalidLimit {
    pub field: &'static str,
    pub reason: String,
}

impl ModuleLimits {
    pub fn is_empty(&self) -> bool {
        *self == ModuleLimits::default()
    }

    /// These limits as a tenant token's upload stores them: held to the
    /// tenant's whenever they run (none set: nothing to hold, so the same
    /// as the root token's empty set).
    pub fn held_to_tenant(self) -> ModuleLimits {
        ModuleLimits { held_to_tenant: !self.is_empty(), ..self }
    }

    /// Whether every limit set is within the ranges, and the memory limit within
    /// `max_memory` (the operator's `handler.max_memory_limit_mib`).
    pub fn check(&self, max_memory: usize) -> Result<(), InvalidLimit> {
        let deadlines = [
            ("event_deadline_ms", self.event_deadline_ms, EVENT_DEADLINE_MS),
            ("action_deadline_ms", self.action_deadline_ms, ACTION_DEADLINE_MS),
            ("query_deadline_ms", self.query_deadline_ms, QUERY_DEADLINE_MS),
        ];
        for (field, ms, range) in deadlines {
            if let Some(ms) = ms {
                deadline_within(field, ms, range)?;
            }
        }
        if let Some(bytes) = self.memory_limit_bytes
            && !(MIN_MEMORY_BYTES..=max_memory).contains(&bytes)
        {
            return Err(InvalidLimit {
                field: "memory_limit_bytes",
                reason: format!(
                    "must be between 1 MiB and the host's ceiling of {max_memory} bytes (handler.max_memory_limit_mib)"
                ),
            });
        }
        Ok(())
    }

    /// `tenant`'s limits with these applied. The values were checked when the
    /// version was stored; one the host no longer allows (its ceiling was
    /// lowered since) is held to the ceiling, and one of a version held to its
    /// tenant to the tenant's current value.
    pub fn over(&self, tenant: &InvocationLimits) -> InvocationLimits {
        let mut limits = tenant.clone();
        let held = self.held_to_tenant;
        let ms = |v: Option<u64>, (min, max): (u64, u64), own: Duration| {
            v.map_or(own, |ms| {
                let asked = Duration::from_millis(ms.clamp(min, max));
                if held { asked.min(own) } else { asked }
            })
        };
        limits.event_deadline = ms(self.event_deadline_ms, EVENT_DEADLINE_MS, tenant.event_deadline);
        limits.action_deadline = ms(self.action_deadline_ms, ACTION_DEADLINE_MS, tenant.action_deadline);
        limits.query_deadline = ms(self.query_deadline_ms, QUERY_DEADLINE_MS, tenant.query_deadline);
        if let Some(bytes) = self.memory_limit_bytes {
            let asked = bytes.clamp(MIN_MEMORY_BYTES, tenant.max_memory_limit.max(MIN_MEMORY_BYTES));
            limits.memory_limit = if held { asked.min(tenant.memory_limit) } else { asked };
        }
        limits
    }
}

/// `ms` as a deadline, if it is within `(min, max)`.
pub fn deadline_within(field: &'static str, ms: u64, (min, max): (u64, u64)) -> Result<Duration, InvalidLimit> {
    if (min..=max).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(InvalidLimit { field, reason: format!("must be between {min} and {max}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn an_empty_set_leaves_the_tenants_limits() {
        let tenant = InvocationLimits::default();
        let limits = ModuleLimits::default().over(&tenant);
        assert_eq!(
            (limits.memory_limit, limits.event_deadline, limits.action_deadline, limits.query_deadline),
            (tenant.memory_limit, tenant.event_deadline, tenant.action_deadline, tenant.query_deadline)
        );
    }

    #[test]
    fn each_limit_set_replaces_the_tenants_and_nothing_else() {
        let tenant = InvocationLimits::default();
        let module =
            ModuleLimits { memory_limit_bytes: Some(256 * MIB), query_deadline_ms: Some(9000), ..Default::default() };
        module.check(tenant.max_memory_limit).unwrap();
        let limits = module.over(&tenant);
        assert_eq!(limits.memory_limit, 256 * MIB);
        assert_eq!(limits.query_deadline, Duration::from_secs(9));
        assert_eq!((limits.event_deadline, limits.action_deadline), (tenant.event_deadline, tenant.action_deadline));
        assert_eq!(limits.max_calls, tenant.max_calls);
    }

    #[test]
    fn limits_outside_the_hosts_bounds_are_refused_by_name() {
        let err = |m: ModuleLimits| m.check(512 * MIB).unwrap_err().field;
        assert_eq!(
            err(ModuleLimits { memory_limit_bytes: Some(513 * MIB), ..Default::default() }),
            "memory_limit_bytes"
        );
        assert_eq!(err(ModuleLimits { memory_limit_bytes: Some(1000), ..Default::default() }), "memory_limit_bytes");
        assert_eq!(err(ModuleLimits { event_deadline_ms: Some(5), ..Default::default() }), "event_deadline_ms");
        assert_eq!(err(ModuleLimits { action_deadline_ms: Some(30_001), ..Default::default() }), "action_deadline_ms");
        assert_eq!(err(ModuleLimits { query_deadline_ms: Some(60_001), ..Default::default() }), "query_deadline_ms");
    }

    #[test]
    fn a_version_held_to_its_tenant_asks_at_most_the_tenants_current_limits() {
        let tenant = InvocationLimits {
            memory_limit: 32 * MIB,
            event_deadline: Duration::from_millis(500),
            ..Default::default()
        };
        let asked = ModuleLimits {
            memory_limit_bytes: Some(64 * MIB),
            event_deadline_ms: Some(2000),
            query_deadline_ms: Some(20),
            ..Default::default()
        };
        let held = asked.held_to_tenant();
        assert!(held.held_to_tenant);
        let limits = held.over(&tenant);
        assert_eq!((limits.memory_limit, limits.event_deadline), (32 * MIB, Duration::from_millis(500)));
        assert_eq!(limits.query_deadline, Duration::from_millis(20), "less than the tenant's stays");
        assert_eq!(limits.action_deadline, tenant.action_deadline);
        // The operator's version keeps what it asked for.
        assert_eq!(asked.over(&tenant).memory_limit, 64 * MIB);
        // Nothing set: nothing to hold, the same as the root token's empty set.
        assert_eq!(ModuleLimits::default().held_to_tenant(), ModuleLimits::default());
        assert_eq!(serde_json::to_string(&ModuleLimits::default()).unwrap(), "{}");
    }

    #[test]
    fn a_stored_limit_over_a_lowered_ceiling_is_held_to_it() {
        let tenant = InvocationLimits { max_memory_limit: 128 * MIB, ..Default::default() };
        let module = ModuleLimits { memory_limit_bytes: Some(512 * MIB), ..Default::default() };
        assert_eq!(module.over(&tenant).memory_limit, 128 * MIB);
    }
}
