//! An incremental label index: which endpoints each selector matches.
//!
//! Endpoints carry their own labels plus the labels of the profiles they inherit
//! from (own labels win), and the namespace identity labels that only their
//! namespace sets (the same rules as
//! [`PolicyModel::effective_labels`](crate::semantics::PolicyModel::effective_labels):
//! reserved keys among an endpoint's own labels are ignored). Every update returns the membership changes it caused and
//! costs work proportional to what changed: an endpoint update evaluates the
//! selectors against that one endpoint, a selector update evaluates that one
//! selector against the endpoints, a profile update re-evaluates only the endpoints
//! that inherit from it.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{ORCHESTRATOR_LABEL, is_reserved_label, profile_may_set};
use crate::selector::{Labels, NAMESPACE_LABEL, Selector};
use crate::semantics::ORCHESTRATOR_K8S;

/// One membership change caused by an update.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change<S, E> {
    /// Endpoint `E` now matches selector `S`.
    Added(S, E),
    /// Endpoint `E` no longer matches selector `S`.
    Removed(S, E),
}

#[derive(Clone, Debug, Default)]
struct EndpointEntry {
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    profiles: Vec<String>,
}

/// Labels of one endpoint as seen by selectors: own labels over profile labels,
/// and the reserved identity labels from the namespace only.
#[derive(Debug)]
pub struct EffectiveLabels<'a> {
    namespace: Option<&'a str>,
    own: &'a BTreeMap<String, String>,
    profiles: Vec<(&'a str, &'a BTreeMap<String, String>)>,
}

impl Labels for EffectiveLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if is_reserved_label(key) {
            if key == NAMESPACE_LABEL {
                return self.namespace;
            }
            if key == ORCHESTRATOR_LABEL {
                return self.namespace.map(|_| ORCHESTRATOR_K8S);
            }
            return self.profiles.iter().find_map(|(name, labels)| {
                profile_may_set(name, self.namespace, key)
                    .then(|| labels.get(key).map(String::as_str))
                    .flatten()
            });
        }
        if let Some(v) = self.own.get(key) {
            return Some(v);
        }
        self.profiles
            .iter()
            .find_map(|(_, p)| p.get(key).map(String::as_str))
    }
}

/// The index. `S` names selectors (e.g. a policy and rule position), `E` endpoints.
#[derive(Debug)]
pub struct LabelIndex<S, E> {
    selectors: BTreeMap<S, Selector>,
    endpoints: BTreeMap<E, EndpointEntry>,
    profiles: BTreeMap<String, BTreeMap<String, String>>,
    profile_users: BTreeMap<String, BTreeSet<E>>,
    matches: BTreeMap<S, BTreeSet<E>>,
    evaluations: u64,
}

impl<S: Ord + Clone, E: Ord + Clone> Default for LabelIndex<S, E> {
    fn default() -> Self {
        LabelIndex {
            selectors: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            profiles: BTreeMap::new(),
            profile_users: BTreeMap::new(),
            matches: BTreeMap::new(),
            evaluations: 0,
        }
    }
}

impl<S: Ord + Clone, E: Ord + Clone> LabelIndex<S, E> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The endpoints selector `s` matches (empty if unknown).
    pub fn matching(&self, s: &S) -> impl Iterator<Item = &E> {
        self.matches.get(s).into_iter().flatten()
    }

    /// Whether selector `s` matches endpoint `e`.
    pub fn is_match(&self, s: &S, e: &E) -> bool {
        self.matches.get(s).is_some_and(|m| m.contains(e))
    }

    /// How many selector evaluations the index has done in total (to check that
    /// updates cost work proportional to what changed).
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    fn effective<'a>(
        profiles: &'a BTreeMap<String, BTreeMap<String, String>>,
        entry: &'a EndpointEntry,
    ) -> EffectiveLabels<'a> {
        EffectiveLabels {
            namespace: entry.namespace.as_deref(),
            own: &entry.labels,
            profiles: entry
                .profiles
                .iter()
                .filter_map(|p| profiles.get_key_value(p))
                .map(|(name, labels)| (name.as_str(), labels))
                .collect(),
        }
    }

    /// The effective labels of endpoint `e`.
    pub fn labels_of(&self, e: &E) -> Option<EffectiveLabels<'_>> {
        self.endpoints
            .get(e)
            .map(|entry| Self::effective(&self.profiles, entry))
    }

    fn set_match(&mut self, s: &S, e: &E, now: bool, out: &mut Vec<Change<S, E>>) {
        let set = self.matches.entry(s.clone()).or_default();
        let before = set.contains(e);
        if now && !before {
            set.insert(e.clone());
            out.push(Change::Added(s.clone(), e.clone()));
        } else if !now && before {
            set.remove(e);
            out.push(Change::Removed(s.clone(), e.clone()));
        }
    }

    fn reevaluate_endpoint(&mut self, e: &E, out: &mut Vec<Change<S, E>>) {
        let results: Vec<(S, bool)> = match self.endpoints.get(e) {
            Some(entry) => {
                let labels = Self::effective(&self.profiles, entry);
                self.selectors
                    .iter()
                    .map(|(s, sel)| (s.clone(), sel.matches(&labels)))
                    .collect()
            }
            None => self.selectors.keys().map(|s| (s.clone(), false)).collect(),
        };
        self.evaluations += results.len() as u64;
        for (s, now) in results {
            self.set_match(&s, e, now, out);
        }
    }

    /// Adds or replaces an endpoint that is in no namespace.
    pub fn upsert_endpoint(
        &mut self,
        e: E,
        labels: BTreeMap<String, String>,
        profiles: Vec<String>,
    ) -> Vec<Change<S, E>> {
        self.upsert_endpoint_in(e, None, labels, profiles)
    }

    /// Adds or replaces an endpoint in `namespace` (a Kubernetes pod's).
    pub fn upsert_endpoint_in(
        &mut self,
        e: E,
        namespace: Option<String>,
        labels: BTreeMap<String, String>,
        profiles: Vec<String>,
    ) -> Vec<Change<S, E>> {
        if let Some(old) = self.endpoints.get(&e) {
            if old.namespace == namespace && old.labels == labels && old.profiles == profiles {
                return Vec::new();
            }
            for p in &old.profiles {
                if let Some(users) = self.profile_users.get_mut(p) {
                    users.remove(&e);
                }
            }
        }
        for p in &profiles {
            self.profile_users
                .entry(p.clone())
                .or_default()
                .insert(e.clone());
        }
        self.endpoints.insert(
            e.clone(),
            EndpointEntry {
                namespace,
                labels,
                profiles,
            },
        );
        let mut out = Vec::new();
        self.reevaluate_endpoint(&e, &mut out);
        out
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, e: &E) -> Vec<Change<S, E>> {
        let mut out = Vec::new();
        if let Some(old) = self.endpoints.remove(e) {
            for p in &old.profiles {
                if let Some(users) = self.profile_users.get_mut(p) {
                    users.remove(e);
                }
            }
            for (s, set) in &mut self.matches {
                if set.remove(e) {
                    out.push(Change::Removed(s.clone(), e.clone()));
                }
            }
        }
        out
    }

    /// Adds or replaces a profile's labels; endpoints inheriting it are re-evaluated.
    pub fn upsert_profile(
        &mut self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Vec<Change<S, E>> {
        if self.profiles.get(name) == Some(&labels) {
            return Vec::new();
        }
        self.profiles.insert(name.to_owned(), labels);
        self.reevaluate_profile_users(name)
    }

    /// Removes a profile's labels.
    pub fn remove_profile(&mut self, name: &str) -> Vec<Change<S, E>> {
        if self.profiles.remove(name).is_none() {
            return Vec::new();
        }
        self.reevaluate_profile_users(name)
    }

    fn reevaluate_profile_users(&mut self, name: &str) -> Vec<Change<S, E>> {
        let users: Vec<E> = self
            .profile_users
            .get(name)
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for e in users {
            self.reevaluate_endpoint(&e, &mut out);
        }
        out
    }

    /// Adds or replaces a selector; it is evaluated against every endpoint.
    pub fn upsert_selector(&mut self, s: S, sel: Selector) -> Vec<Change<S, E>> {
        if self.selectors.get(&s) == Some(&sel) {
            return Vec::new();
        }
        let results: Vec<(E, bool)> = self
            .endpoints
            .iter()
            .map(|(e, entry)| {
                (
                    e.clone(),
                    sel.matches(&Self::effective(&self.profiles, entry)),
                )
            })
            .collect();
        self.evaluations += results.len() as u64;
        self.selectors.insert(s.clone(), sel);
        let mut out = Vec::new();
        for (e, now) in results {
            self.set_match(&s, &e, now, &mut out);
        }
        out
    }

    /// Removes a selector.
    pub fn remove_selector(&mut self, s: &S) -> Vec<Change<S, E>> {
        self.selectors.remove(s);
        self.matches
            .remove(s)
            .into_iter()
            .flatten()
            .map(|e| Change::Removed(s.clone(), e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn endpoint_and_selector_updates_report_membership_changes() {
        let mut ix: LabelIndex<&str, u32> = LabelIndex::new();
        assert!(ix.upsert_selector("web", sel("app == 'web'")).is_empty());
        assert_eq!(
            ix.upsert_endpoint(1, l(&[("app", "web")]), vec![]),
            vec![Change::Added("web", 1)]
        );
        assert!(
            ix.upsert_endpoint(2, l(&[("app", "db")]), vec![])
                .is_empty()
        );
        assert_eq!(
            ix.upsert_selector("notweb", sel("app != 'web'")),
            vec![Change::Added("notweb", 2)]
        );
        assert_eq!(
            ix.upsert_endpoint(2, l(&[("app", "web")]), vec![]),
            vec![Change::Removed("notweb", 2), Change::Added("web", 2)]
        );
        assert_eq!(ix.matching(&"web").copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(ix.remove_endpoint(&1), vec![Change::Removed("web", 1)]);
        assert_eq!(ix.remove_selector(&"web"), vec![Change::Removed("web", 2)]);
    }

    #[test]
    fn profile_labels_are_inherited_and_own_labels_win() {
        let mut ix: LabelIndex<&str, u32> = LabelIndex::new();
        ix.upsert_selector("prod", sel("env == 'prod'"));
        ix.upsert_endpoint(1, l(&[]), vec!["ns-a".into()]);
        ix.upsert_endpoint(2, l(&[("env", "dev")]), vec!["ns-a".into()]);
        ix.upsert_endpoint(3, l(&[]), vec!["ns-b".into()]);
        assert_eq!(
            ix.upsert_profile("ns-a", l(&[("env", "prod")])),
            vec![Change::Added("prod", 1)]
        );
        assert_eq!(ix.remove_profile("ns-a"), vec![Change::Removed("prod", 1)]);
    }

    #[test]
    fn identity_labels_come_from_the_namespace_only() {
        let mut ix: LabelIndex<&str, u32> = LabelIndex::new();
        ix.upsert_profile("kns.a", l(&[("pcns.team", "a")]));
        ix.upsert_profile("kns.b", l(&[("pcns.team", "b")]));
        ix.upsert_selector("ns-a", sel("projectcalico.org/namespace == 'a'"));
        ix.upsert_selector("team-a", sel("pcns.team == 'a'"));
        // A pod in b claiming a's identity with its own labels and a's profile.
        let forged = l(&[("projectcalico.org/namespace", "a"), ("pcns.team", "a")]);
        let profiles = vec!["kns.a".to_owned(), "kns.b".to_owned()];
        assert!(
            ix.upsert_endpoint_in(1, Some("b".into()), forged.clone(), profiles)
                .is_empty()
        );
        ix.upsert_endpoint_in(2, Some("a".into()), l(&[]), vec!["kns.a".into()]);
        assert_eq!(ix.matching(&"ns-a").copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(ix.matching(&"team-a").copied().collect::<Vec<_>>(), vec![2]);
        let labels = ix.labels_of(&2).unwrap();
        assert_eq!(labels.label(ORCHESTRATOR_LABEL), Some(ORCHESTRATOR_K8S));
        // An endpoint in no namespace has no identity labels at all.
        assert!(
            ix.upsert_endpoint(3, forged, vec!["kns.a".into()])
                .is_empty()
        );
    }

    #[test]
    fn work_is_proportional_to_the_change() {
        let mut ix: LabelIndex<u32, u32> = LabelIndex::new();
        for s in 0..100 {
            ix.upsert_selector(s, sel(&format!("n == '{s}'")));
        }
        for e in 0..1000 {
            ix.upsert_endpoint(e, l(&[("n", &(e % 100).to_string())]), vec![]);
        }
        let before = ix.evaluations();
        ix.upsert_endpoint(5000, l(&[("n", "7")]), vec![]);
        assert_eq!(
            ix.evaluations() - before,
            100,
            "one endpoint x 100 selectors"
        );
        let before = ix.evaluations();
        ix.upsert_selector(7, sel("n == '8'"));
        assert_eq!(
            ix.evaluations() - before,
            1001,
            "one selector x all endpoints"
        );
        let before = ix.evaluations();
        ix.upsert_endpoint(5000, l(&[("n", "7")]), vec![]);
        assert_eq!(
            ix.evaluations(),
            before,
            "an unchanged endpoint costs nothing"
        );
        let before = ix.evaluations();
        ix.upsert_profile("unused", l(&[("x", "y")]));
        assert_eq!(
            ix.evaluations(),
            before,
            "a profile nobody uses costs nothing"
        );
    }
}
