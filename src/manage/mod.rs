//! Management: the [`KeyManager`] lifecycle (create, update, rotate,
//! revoke, import), usage counting and the audit trail.

mod audit;
mod derive;
mod hygiene;
mod manager;
mod monitor;
mod sweep;
mod usage;

pub(crate) use audit::RejectionSampler;
#[cfg(feature = "tracing")]
pub use audit::TracingSink;
pub use audit::{Actor, AuditEvent, AuditKind, AuditSink, MemoryAuditSink, NoAudit};
pub use derive::Derivation;
pub use hygiene::{Finding, HygieneOptions, HygieneReport, KeyHygiene};
pub use manager::{
    DEFAULT_DERIVATION_LIMITS, DEFAULT_MAX_GRACE, ImportKey, KeyManager, KeyState, KeySummary,
    KeyUpdate, MAX_LEGACY_KEY_LEN, MAX_LEGACY_PREFIX_LEN, PENDING_APPROVAL, Rotation,
};
pub use monitor::{Monitor, MonitorConfig, NETWORKS_PER_KEY};
pub use sweep::{
    AUTO_RENEW, EXPIRY_NOTIFIED, ExpiryNotice, ExpiryNotifier, SweepOptions, SweepReport,
};
pub use usage::UsageRecorder;
