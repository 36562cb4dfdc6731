//! The web edge: reading a key from a request, the [`Gate`] that runs
//! authentication and limits, JSON error responses, and (feature `axum`) a
//! tower layer with axum extractors.

mod extract;
mod gate;
#[cfg(feature = "axum")]
mod layer;
pub mod publishable;
mod response;
mod route;

pub use extract::{DEFAULT_MAX_LEN, Extracted, Extractor, PresentedKey, Scheme, Sources};
pub use gate::{Admitted, Decision, Gate, Rejection};
#[cfg(feature = "axum")]
pub use layer::{ApiKeyLayer, ApiKeyService, ClientIp, MissingKey};
pub use response::{
    ErrorBody, ErrorDetails, ErrorObject, ErrorResponse, MissingKeyDetails, REALM,
    rate_limit_headers, retry_after_secs,
};
pub use route::{ForeignCredentials, QuotaTable, Route};
