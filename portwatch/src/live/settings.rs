//! Every namespace's port settings, for the long-running modes.
use std::time::{Duration, Instant};

use crate::detect::ports::PortBudget;

/// The port settings of every namespace, kept up to date where the live model is read
/// (serve's scrapes, top's frames; never on the tracing thread): a namespace that
/// appears after the start (a pod started since) is read the first time a destination
/// in it is seen, retried at most every [`MISSING_RETRY`] when it cannot be; every
/// namespace is read again every [`REREAD`], for settings changed meanwhile.
#[derive(Debug)]
pub struct NamespaceSettings {
    pub budget: PortBudget,
    read_at: Instant,
    missing_tried: Option<Instant>,
}

/// How often every namespace's settings are read again.
const REREAD: Duration = Duration::from_secs(60);
/// How often namespaces whose settings could not be read are tried again.
const MISSING_RETRY: Duration = Duration::from_secs(10);

impl NamespaceSettings {
    pub fn new(budget: PortBudget) -> Self {
        NamespaceSettings {
            budget,
            read_at: Instant::now(),
            missing_tried: None,
        }
    }

    /// Brings the settings up to date for destinations in `namespaces`.
    pub fn refresh(&mut self, namespaces: std::collections::BTreeSet<u32>) {
        let now = Instant::now();
        if now.duration_since(self.read_at) >= REREAD {
            if let Ok(host) = crate::detect::ports::PortSettings::read() {
                self.budget.host = host;
            }
            self.budget.read_namespaces();
            self.read_at = now;
            self.missing_tried = None;
            return;
        }
        let missing = |budget: &PortBudget| {
            namespaces
                .iter()
                .any(|netns| !budget.by_netns.contains_key(netns))
        };
        let due = self
            .missing_tried
            .is_none_or(|tried| now.duration_since(tried) >= MISSING_RETRY);
        if due && missing(&self.budget) {
            self.budget.read_missing(namespaces.iter().copied());
            // One gone already, or not enterable: not again on every scrape.
            self.missing_tried = missing(&self.budget).then_some(now);
        }
    }
}
