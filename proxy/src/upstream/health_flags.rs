//! A host's health flags (Envoy's `Host::HealthFlag`): why it is unhealthy, degraded or
//! excluded, as `/clusters` shows them.

use std::fmt;

/// A set of health flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthFlags(u32);

impl HealthFlags {
    /// Active health checking failed the host.
    pub const FAILED_ACTIVE_HC: HealthFlags = HealthFlags(1);
    /// Outlier detection ejected the host.
    pub const FAILED_OUTLIER_CHECK: HealthFlags = HealthFlags(1 << 1);
    /// EDS says UNHEALTHY, DRAINING or TIMEOUT.
    pub const FAILED_EDS_HEALTH: HealthFlags = HealthFlags(1 << 2);
    /// Active health checking found the host degraded (`x-envoy-degraded`).
    pub const DEGRADED_ACTIVE_HC: HealthFlags = HealthFlags(1 << 3);
    /// EDS says DEGRADED.
    pub const DEGRADED_EDS_HEALTH: HealthFlags = HealthFlags(1 << 4);
    /// The host's last check timed out.
    pub const ACTIVE_HC_TIMEOUT: HealthFlags = HealthFlags(1 << 8);

    /// The flags that make a host unhealthy.
    pub const UNHEALTHY: HealthFlags = HealthFlags(
        Self::FAILED_ACTIVE_HC.0 | Self::FAILED_OUTLIER_CHECK.0 | Self::FAILED_EDS_HEALTH.0,
    );

    /// Envoy's names, in its order.
    const NAMES: [(HealthFlags, &'static str); 6] = [
        (Self::FAILED_ACTIVE_HC, "/failed_active_hc"),
        (Self::FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
        (Self::FAILED_EDS_HEALTH, "/failed_eds_health"),
        (Self::DEGRADED_ACTIVE_HC, "/degraded_active_hc"),
        (Self::DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
        (Self::ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
    ];

    /// The set with these bits.
    pub const fn from_bits(bits: u32) -> HealthFlags {
        HealthFlags(bits)
    }

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether any of `other` is set.
    pub const fn intersects(self, other: HealthFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: HealthFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for HealthFlags {
    type Output = HealthFlags;
    fn bitor(self, rhs: HealthFlags) -> HealthFlags {
        HealthFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for HealthFlags {
    fn bitor_assign(&mut self, rhs: HealthFlags) {
        self.0 |= rhs.0;
    }
}

/// `healthy`, or the flags as Envoy writes them (`/failed_active_hc/active_hc_timeout`).
impl fmt::Display for HealthFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("healthy");
        }
        for (flag, name) in Self::NAMES {
            if self.intersects(flag) {
                f.write_str(name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_envoy_writes_them() {
        assert_eq!(HealthFlags::default().to_string(), "healthy");
        assert_eq!(
            (HealthFlags::ACTIVE_HC_TIMEOUT | HealthFlags::FAILED_ACTIVE_HC).to_string(),
            "/failed_active_hc/active_hc_timeout"
        );
        assert!(HealthFlags::UNHEALTHY.contains(HealthFlags::FAILED_OUTLIER_CHECK));
    }
}
