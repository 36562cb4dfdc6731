//! Management: the [`KeyManager`] lifecycle (create, update, rotate,
//! revoke, import), usage counting and the audit trail.

pub mod audit;
pub mod manager;
pub mod monitor;
pub mod usage;

#[cfg(feature = "tracing")]
pub use audit::TracingSink;
pub use audit::{Actor, AuditEvent, AuditKind, AuditSink, MemoryAuditSink, NoAudit};
pub use manager::{
    DEFAULT_MAX_GRACE, ImportKey, KeyManager, KeyState, KeySummary, KeyUpdate, MAX_LEGACY_KEY_LEN,
    MAX_LEGACY_PREFIX_LEN, Rotation,
};
pub use monitor::{Monitor, MonitorConfig, NETWORKS_PER_KEY};
pub use usage::UsageRecorder;
