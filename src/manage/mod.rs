//! Management: the [`KeyManager`] lifecycle (create, update, rotate,
//! revoke, import, derive), the expiry sweep and the hygiene report, over
//! the [`pipeline`](crate::pipeline) (usage counting and the audit trail).

mod derive;
mod hygiene;
mod manager;
mod sweep;

pub use derive::Derivation;
pub use hygiene::{Finding, HygieneOptions, HygieneReport, KeyHygiene};
pub use manager::{
    DEFAULT_DERIVATION_LIMITS, DEFAULT_MAX_GRACE, ImportKey, KeyManager, KeyState, KeySummary,
    KeyUpdate, MAX_LEGACY_KEY_LEN, MAX_LEGACY_PREFIX_LEN, PENDING_APPROVAL, Rotation,
};
pub use sweep::{
    AUTO_RENEW, EXPIRY_NOTIFIED, ExpiryNotice, ExpiryNotifier, SweepOptions, SweepReport,
};
