//! The lab's error type: every variant names the file, namespace or step it
//! is about.

use std::path::PathBuf;

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written, or a process not started.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file (or namespace, or program).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file did not parse.
    #[error("lab state file {path}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A command was used wrongly, or the machine cannot do what was asked.
    #[error("{0}")]
    Usage(String),
    /// The lab did not come up or behave as expected.
    #[error("lab: {0}")]
    Lab(String),
    /// The agent's library (datastore, resources, tables) failed; its
    /// message is the agent's own.
    #[error(transparent)]
    Agent(#[from] calinet_agent::Error),
    /// The datastore failed.
    #[error("datastore")]
    Store(#[from] calinet_ipam::StoreError),
    /// The test lab (namespaces, commands, processes, captures) failed.
    #[error("lab")]
    Testlab(#[from] testlab::Error),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error's message with all its causes, for the command line.
pub fn chain(e: &dyn std::error::Error) -> String {
    calinet_agent::error::chain(e)
}
