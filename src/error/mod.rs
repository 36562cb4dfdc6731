//! The crate's one error type, its machine codes and HTTP statuses.
//!
//! Every outcome that is not "this key is valid for this request" is an
//! [`Error`]. Each variant has a stable machine code ([`Error::code`]) and an
//! HTTP status ([`Error::http_status`]) given as plain data, so the core needs
//! no web crate. The mapping lives here, next to the enum, and nowhere else.
//!
//! Messages never contain key material: not the key, not its secret, not a
//! digest. "Unknown key id", "wrong secret" and "forged key" are one public
//! outcome, [`Error::InvalidApiKey`]; whether a key is expired, disabled or
//! revoked is revealed only after its secret matched.

mod code;
mod kinds;
mod reason;

pub use code::{Challenge, ErrorCode};
pub use kinds::{Error, MalformedReason, Result, StoreError, StoreErrorKind};
pub use reason::FailureClass;
pub(crate) use reason::{Reason, Stage};
