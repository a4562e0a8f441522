//! calinet-ipam's node-selector evaluation, with Calico's selector language
//! (feature `ipam`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::selector::{ParseError, Selector};

/// Evaluates IPPool `nodeSelector`s for calinet-ipam. Each distinct selector text
/// is parsed once and cached; a selector that does not parse is an error naming
/// the position and what was expected.
#[derive(Debug, Default)]
pub struct PolicyNodeSelector {
    cache: Mutex<HashMap<String, Result<Selector, ParseError>>>,
}

impl PolicyNodeSelector {
    /// An evaluator with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

impl calinet_ipam::NodeSelectorEvaluator for PolicyNodeSelector {
    fn matches(
        &self,
        selector: &str,
        node_labels: &BTreeMap<String, String>,
    ) -> Result<bool, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let parsed = cache
            .entry(selector.to_owned())
            .or_insert_with(|| Selector::parse(selector));
        match parsed {
            Ok(sel) => Ok(sel.matches(node_labels)),
            Err(e) => Err(format!("IPPool nodeSelector: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calinet_ipam::NodeSelectorEvaluator;

    #[test]
    fn evaluates_node_selectors_and_reports_parse_errors() {
        let ev = PolicyNodeSelector::new();
        let node: BTreeMap<String, String> = [("zone".to_string(), "east".to_string())]
            .into_iter()
            .collect();
        assert_eq!(ev.matches("all()", &node), Ok(true));
        assert_eq!(ev.matches("zone == 'east'", &node), Ok(true));
        assert_eq!(ev.matches("zone != 'east'", &node), Ok(false));
        assert_eq!(ev.matches("rack not in {'r1'}", &node), Ok(true));
        let e = ev.matches("zone = 'east'", &node).unwrap_err();
        assert!(
            e.contains("at byte 5") && e.contains("expected an operator"),
            "{e}"
        );
        // Cached: the same answer again.
        assert_eq!(ev.matches("zone == 'east'", &node), Ok(true));
    }
}
