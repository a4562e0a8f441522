//! Node-selector evaluation, supplied by the caller.
//!
//! The selector language lives in calinet-policy; this crate only needs a yes/no
//! per (selector, node labels), so it takes an evaluator through this trait.

use std::collections::BTreeMap;

/// Evaluates an IPPool `nodeSelector` against a node's labels.
pub trait NodeSelectorEvaluator: Send + Sync {
    /// Whether `selector` matches a node with `node_labels`; `Err` carries a
    /// message saying why the selector cannot be evaluated.
    fn matches(
        &self,
        selector: &str,
        node_labels: &BTreeMap<String, String>,
    ) -> Result<bool, String>;
}

/// The built-in evaluator: understands only `all()` (Calico's default) and
/// rejects anything else with an error naming the selector.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllOnlySelector;

impl NodeSelectorEvaluator for AllOnlySelector {
    fn matches(
        &self,
        selector: &str,
        _node_labels: &BTreeMap<String, String>,
    ) -> Result<bool, String> {
        if selector.trim() == "all()" {
            Ok(true)
        } else {
            Err(format!(
                "the built-in evaluator only understands all(), not {selector:?}; supply a NodeSelectorEvaluator (calinet-policy provides one)"
            ))
        }
    }
}

impl<F> NodeSelectorEvaluator for F
where
    F: Fn(&str, &BTreeMap<String, String>) -> Result<bool, String> + Send + Sync,
{
    fn matches(
        &self,
        selector: &str,
        node_labels: &BTreeMap<String, String>,
    ) -> Result<bool, String> {
        self(selector, node_labels)
    }
}
