//! Management: the [`KeyManager`] lifecycle (create, update, rotate,
//! revoke, import, derive), the expiry sweep and the hygiene report, over
//! the [`pipeline`](crate::pipeline) (usage counting and the audit trail).

mod derive;
mod hygiene;
mod manager;
mod sweep;

pub use derive::Derivation;
pub use hygiene::{Finding, HygieneOptions, HygieneReport, KeyHygiene};
pub use manager::{ImportKey, KeyManager, KeyState, KeySummary, KeyUpdate, Rotation};
pub use sweep::{ExpiryNotice, ExpiryNotifier, SweepOptions, SweepReport};
