//! Errors: [`Error`] for resources and plans (pure), [`ControlError`] for BIRD.

use std::path::PathBuf;

/// Invalid BGP resources, or a plan that cannot be built from them. Nothing is
/// planned when any input is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field breaks one of Calico's rules.
    #[error("{resource}: field {field} = {value:?}: {rule}")]
    Invalid {
        /// The resource, e.g. `BGPPeer rack1` or `Node n1`.
        resource: String,
        /// The field, with Calico's name (`spec.peerIP`).
        field: &'static str,
        /// The offending value as written.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A selector does not parse in Calico's selector grammar.
    #[error("{resource}: field {field}: invalid selector")]
    Selector {
        /// The resource, e.g. `BGPPeer rr-clients`.
        resource: String,
        /// `spec.nodeSelector` or `spec.peerSelector`.
        field: &'static str,
        /// Where the parser stopped.
        #[source]
        source: calinet_policy::ParseError,
    },
    /// Two BGPPeers give this node the same peer (address and port).
    #[error("BGPPeer {first} and BGPPeer {second} both peer node {node} with {peer}")]
    DuplicatePeer {
        /// The first resource (by name).
        first: String,
        /// The second resource.
        second: String,
        /// The node both apply to.
        node: String,
        /// The peer, `ip` or `ip:port`.
        peer: String,
    },
    /// Two nodes have the same name.
    #[error("Node {node}: listed twice")]
    DuplicateNode {
        /// The node's name.
        node: String,
    },
    /// The node to plan for is not among the nodes.
    #[error("Node {node}: not among the {known} nodes given")]
    UnknownNode {
        /// The node asked for.
        node: String,
        /// How many nodes were given.
        known: usize,
    },
    /// The node has no IPv4 BGP address, which BIRD needs as its router id.
    #[error(
        "Node {node}: spec.bgp.ipv4Address is not set; BIRD's router id is the node's IPv4 address"
    )]
    NoRouterId {
        /// The node.
        node: String,
    },
    /// A BGPPeer's password refers to a secret the caller did not provide.
    #[error("BGPPeer {peer}: spec.password.secretKeyRef {name}/{key} was not provided")]
    MissingSecret {
        /// The BGPPeer.
        peer: String,
        /// The secret's name.
        name: String,
        /// The key in the secret.
        key: String,
    },
}

/// Running BIRD failed: a process, a file, the control socket, or BIRD's reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A file or socket operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done (`write config`, `connect to control socket`).
        what: &'static str,
        /// The file or socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the BIRD process failed.
    #[error("start {program}")]
    Spawn {
        /// The program run.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// BIRD did not open its control socket in time, or exited while starting.
    #[error("BIRD ({config}) did not become ready: {detail}")]
    NotReady {
        /// Its configuration file.
        config: PathBuf,
        /// What was seen (exit status, last stderr line).
        detail: String,
    },
    /// BIRD still answered on its socket after `down`.
    #[error("BIRD ({config}) still runs {after:?} after down")]
    StillRunning {
        /// Its configuration file.
        config: PathBuf,
        /// How long the controller waited.
        after: std::time::Duration,
    },
    /// BIRD answered a command with an error code (8xxx runtime, 9xxx parse).
    #[error("BIRD rejected {command:?}: {code} {message}")]
    Rejected {
        /// The command sent.
        command: String,
        /// BIRD's reply code.
        code: u16,
        /// BIRD's message (for a config error: file, line and reason).
        message: String,
    },
    /// BIRD's reply did not follow its control protocol.
    #[error("unexpected reply to {command:?}: {line:?}")]
    Protocol {
        /// The command sent.
        command: String,
        /// The line that did not parse.
        line: String,
    },
    /// The controller is backing off before restarting a BIRD that died.
    #[error("BIRD died; next restart allowed in {wait:?}")]
    Backoff {
        /// Time left until a restart is attempted.
        wait: std::time::Duration,
    },
}
