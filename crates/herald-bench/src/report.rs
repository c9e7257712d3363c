//! Results: a list of named metrics, written as JSON and as a Markdown table, plus the
//! checks that failed (lost or duplicated messages, failed logins).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: String,
    pub value: Value,
    pub unit: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub server: String,
    pub params: Map<String, Value>,
    pub metrics: Vec<Metric>,
    /// Human-readable reasons the run counts as failed; empty when it passed.
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, server: String) -> Report {
        Report {
            scenario: scenario.to_string(),
            server,
            params: Map::new(),
            metrics: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn param(&mut self, name: &str, value: impl Into<Value>) {
        self.params.insert(name.to_string(), value.into());
    }

    pub fn metric(&mut self, name: &str, value: impl Into<Value>, unit: &str) {
        self.metrics.push(Metric {
            name: name.to_string(),
            value: value.into(),
            unit: unit.to_string(),
        });
    }

    /// A float rounded to 2 decimals (keeps the JSON and tables readable).
    pub fn metric_f(&mut self, name: &str, value: f64, unit: &str) {
        let v = (value * 100.0).round() / 100.0;
        self.metric(name, v, unit);
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        self.failures.push(why.into());
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| &m.value)
    }

    /// The value of an integer metric (tests and scripts check these).
    pub fn get_u64(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(Value::as_u64)
    }

    pub fn to_json(&self) -> Value {
        let mut results = Map::new();
        for m in &self.metrics {
            results.insert(m.name.clone(), m.value.clone());
        }
        serde_json::json!({
            "scenario": self.scenario,
            "server": self.server,
            "params": self.params,
            "results": results,
            "metrics": self.metrics,
            "ok": self.ok(),
            "failures": self.failures,
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### herald-bench `{}` against {}\n",
            self.scenario, self.server
        );
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect();
        if !params.is_empty() {
            let _ = writeln!(s, "Parameters: {}\n", params.join(", "));
        }
        let _ = writeln!(s, "| Metric | Value | Unit |");
        let _ = writeln!(s, "|---|---:|---|");
        for m in &self.metrics {
            let _ = writeln!(s, "| {} | {} | {} |", m.name, plain(&m.value), m.unit);
        }
        let _ = writeln!(s);
        if self.ok() {
            let _ = writeln!(s, "Result: **PASS**");
        } else {
            let _ = writeln!(s, "Result: **FAIL**");
            for f in &self.failures {
                let _ = writeln!(s, "- {f}");
            }
        }
        s
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("herald-bench {} against {}\n", self.scenario, self.server);
        let w = self.metrics.iter().map(|m| m.name.len()).max().unwrap_or(0);
        for m in &self.metrics {
            let _ = writeln!(s, "  {:<w$}  {} {}", m.name, plain(&m.value), m.unit);
        }
        if self.ok() {
            s.push_str("PASS\n");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "FAIL: {f}");
            }
        }
        s
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
