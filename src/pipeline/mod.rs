//! The pipeline around the pure [`Verifier`](crate::Verifier): the async
//! [`Authenticator`] (parse, throttle, store fetch, verify, origin check,
//! usage, audit), the [`UsageRecorder`] it feeds, the audit trail
//! ([`AuditSink`] and its events) and the [`Monitor`] that raises alerts.
//!
//! It sits above [`store`](crate::store) and [`verify`](crate::verify), and
//! below [`manage`](crate::manage) (which runs every management call
//! through it) and [`web`](crate::web).

mod audit;
mod authenticator;
mod monitor;
// `pub(crate)` so that `web::publishable`, the publishable-key namespace,
// re-exports its two public items under their one public path.
pub(crate) mod origin;
mod usage;

pub(crate) use audit::RejectionSampler;
#[cfg(feature = "tracing")]
pub use audit::TracingSink;
pub use audit::{Actor, AuditEvent, AuditKind, AuditSink, MemoryAuditSink, NoAudit};
pub(crate) use authenticator::Auditor;
pub use authenticator::Authenticator;
pub use monitor::{Monitor, MonitorConfig, NETWORKS_PER_KEY};
pub(crate) use origin::{
    ALLOWED_ORIGINS, RequestOrigin, check_view, origin_of_url, validate_origins,
};
pub(crate) use usage::RouteOf;
pub use usage::UsageRecorder;
