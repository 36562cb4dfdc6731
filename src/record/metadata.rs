//! Reserved metadata entries that the record itself reads.

/// The reserved metadata entry holding a derived key's parent id (see
/// [`MAX_DERIVATION_DEPTH`](crate::MAX_DERIVATION_DEPTH) for how a child
/// dies with its parent).
pub const PARENT: &str = "apikey.parent";
