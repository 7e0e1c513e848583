//! What the core hands back for a delivery: pulses, an ignore with its reason, or a typed error.
//! These mirror the `pulse:plugin` WIT types so the core builds without the component glue.

/// A point in time in UTC, as seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanoseconds: u32,
}

/// A change event worth correlating with incidents. See `types.pulse` in the WIT.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulse {
    pub summary: String,
    pub source: String,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub labels: Vec<(String, String)>,
    pub refs: Vec<(String, String)>,
    pub correlations: Vec<(String, String)>,
    pub dedupe_key: String,
    pub raw: String,
}

impl Pulse {
    /// The value of label `key`, if the pulse has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.labels, key)
    }

    /// The value of ref `key`, if the pulse has it.
    pub fn reference(&self, key: &str) -> Option<&str> {
        lookup(&self.refs, key)
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// What became of an accepted delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The delivery made these pulses.
    Pulses(Vec<Pulse>),
    /// The delivery is valid but makes no pulse, for the reason given.
    Ignored(String),
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The signature is missing or wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The body is not an event we can read.
    #[error("malformed delivery: {0}")]
    Malformed(String),
    /// The plugin itself could not do its job.
    #[error("internal error: {0}")]
    Internal(String),
}
