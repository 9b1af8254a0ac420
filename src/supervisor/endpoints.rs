//! The Supervisor's view of the inference endpoints: the last health check
//! of each, and what it means for a bot (degraded, model present).
//! Plain data and functions; the checks themselves run in `inference`.

use crate::config::Config;
use crate::status::{has_model, EndpointStatus};

#[derive(Debug, Default)]
pub struct Endpoints(Vec<EndpointStatus>);

impl Endpoints {
    pub fn new(config: &Config) -> Self {
        Self(
            config
                .inference
                .iter()
                .map(|e| EndpointStatus::unchecked(&e.name, e.kind))
                .collect(),
        )
    }

    pub fn all(&self) -> &[EndpointStatus] {
        &self.0
    }

    /// Records a check; answers whether the endpoint's verdict changed (or
    /// it was checked for the first time).
    pub fn update(&mut self, status: EndpointStatus) -> bool {
        let Some(slot) = self.0.iter_mut().find(|e| e.name == status.name) else {
            return false;
        };
        let changed = slot.up != status.up || !slot.checked;
        *slot = status;
        changed
    }

    /// Endpoints whose last health check failed.
    pub fn down(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|e| !e.up)
            .map(|e| e.name.clone())
            .collect()
    }

    /// Every endpoint in `uses` is down (never true for a builtin bot,
    /// which uses none).
    pub fn all_down(&self, uses: &[String]) -> bool {
        !uses.is_empty()
            && uses
                .iter()
                .all(|name| self.0.iter().any(|e| &e.name == name && !e.up))
    }

    /// Whether `model` is on an endpoint in `uses` that is up; `None`
    /// before any of them has been checked.
    pub fn model_present(&self, uses: &[String], model: &str) -> Option<bool> {
        let checked: Vec<&EndpointStatus> = self
            .0
            .iter()
            .filter(|e| e.checked && e.up && uses.contains(&e.name))
            .collect();
        if checked.is_empty() {
            return None;
        }
        Some(checked.iter().any(|e| has_model(&e.models, model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InferenceKind;

    fn endpoints(states: &[(&str, bool, &[&str])]) -> Endpoints {
        Endpoints(
            states
                .iter()
                .map(|&(name, up, models)| EndpointStatus {
                    up,
                    checked: true,
                    models: models.iter().map(|m| m.to_string()).collect(),
                    ..EndpointStatus::unchecked(name, InferenceKind::Ollama)
                })
                .collect(),
        )
    }

    #[test]
    fn a_bot_is_degraded_only_when_every_endpoint_it_uses_is_down() {
        let e = endpoints(&[("a", false, &[]), ("b", true, &["m"])]);
        let uses = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(e.all_down(&uses(&["a"])));
        assert!(!e.all_down(&uses(&["a", "b"])));
        assert!(!e.all_down(&[]), "builtin bots are never degraded");
        assert_eq!(e.down(), ["a"]);
        assert_eq!(e.model_present(&uses(&["a", "b"]), "m"), Some(true));
        assert_eq!(e.model_present(&uses(&["b"]), "other"), Some(false));
        assert_eq!(e.model_present(&uses(&["a"]), "m"), None);
    }

    #[test]
    fn an_update_reports_a_change_of_verdict() {
        let mut e = endpoints(&[("a", true, &[])]);
        let same = EndpointStatus {
            checked: true,
            ..EndpointStatus::unchecked("a", InferenceKind::Ollama)
        };
        assert!(!e.update(same.clone()));
        assert!(e.update(EndpointStatus { up: false, ..same }));
        assert!(!e.update(EndpointStatus::unchecked("nope", InferenceKind::Ollama)));
    }
}
