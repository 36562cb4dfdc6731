//! Settings shared by both stores.

use std::time::Duration;

/// How long applied usage-flush ids are kept (a replay older than this
/// would apply again).
pub const FLUSH_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings shared by both stores.
///
/// ```
/// use std::time::Duration;
/// let options = apikey_sqlx::StoreOptions::default()
///     .timeout(Duration::from_millis(500))
///     .table_prefix("billing_");
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub(crate) timeout: Duration,
    pub(crate) table_prefix: String,
    pub(crate) schema: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            table_prefix: String::new(),
            schema: None,
        }
    }
}

impl StoreOptions {
    /// The longest any store call may take, pool wait included (default
    /// 5 s). Verification waits are bounded by it. At most
    /// [`MAX_TIMEOUT`](Self::MAX_TIMEOUT) (PostgreSQL's largest
    /// `statement_timeout`, about 24.8 days): a longer one, `Duration::MAX`
    /// included, is taken as that.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.min(Self::MAX_TIMEOUT);
        self
    }

    /// The longest [`timeout`](Self::timeout): 2^31 - 1 milliseconds.
    pub const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

    /// A prefix for every table and index name (`a-z`, `0-9`, `_`; default
    /// none): `<prefix>apikey_keys`.
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// PostgreSQL only: the schema holding the tables (created by
    /// `migrate` when missing; default: the connection's `search_path`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}
