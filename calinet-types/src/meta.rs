//! Object metadata shared by Calico and Kubernetes resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Unknown fields of a resource, kept so a document written by a newer Calico
/// (or Kubernetes) survives a round trip.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// `metadata` of a Calico or Kubernetes resource: the fields calinet reads are
/// typed, everything else (`resourceVersion`, `creationTimestamp`, ...) is kept
/// in [`ObjectMeta::extra`].
///
/// ```
/// use calinet_types::ObjectMeta;
/// let meta = ObjectMeta::named("web").namespace("demo").label("app", "web");
/// let json = serde_json::to_string(&meta).unwrap();
/// assert_eq!(json, r#"{"name":"web","namespace":"demo","labels":{"app":"web"}}"#);
/// let back: ObjectMeta =
///     serde_json::from_str(r#"{"name":"web","resourceVersion":"7"}"#).unwrap();
/// assert_eq!(back.extra["resourceVersion"], "7");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ObjectMeta {
    /// The resource name.
    pub name: String,
    /// Namespace (namespaced kinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Kubernetes UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Everything else, kept as-is.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ObjectMeta {
    /// Metadata with only a name.
    #[must_use]
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Replaces the labels.
    #[must_use]
    pub fn labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Sets the UID.
    #[must_use]
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }
}
