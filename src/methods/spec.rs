//! A method and its hyper-parameters as a typed value: read once where they enter (a flag, a
//! config file, a study file, a stored plan) and carried as this value below that edge, so that
//! no code further down reads a key by string. The value holds the method's own `Params` struct
//! behind a small object-safe trait, so one type carries every method.
use super::{entry_of, Entry, Method, MethodParams, Table, TapNeeds};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A method's `Params` with its type erased: what a spec needs of it.
pub(super) trait AnyParams: Send + Sync {
    fn build(&self) -> Result<Box<dyn Method>>;
    fn record(&self) -> serde_json::Value;
}

impl<P: MethodParams> AnyParams for P {
    fn build(&self) -> Result<Box<dyn Method>> {
        MethodParams::build(self.clone())
    }
    fn record(&self) -> serde_json::Value {
        MethodParams::record(self)
    }
}

/// Reads a table of hyper-parameters into `P` (the registry's `parse` for a method whose
/// hyper-parameters are `P`).
pub(super) fn parse<P: MethodParams>(params: &Table) -> Result<Arc<dyn AnyParams>> {
    // toml's error ends with "in `key`", naming the key whose value has the wrong type.
    let p: P = toml::Value::Table(params.clone())
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.to_string().trim().replace('\n', " ")))?;
    Ok(Arc::new(p))
}

/// A method with its hyper-parameters, checked: every key is one the method takes, every value
/// has its type and range. Built into a method once per run (`build`); recorded as the keys given
/// (`given`, what plans and run records store) and the values in effect (`hyper`, what run ids
/// hash).
#[derive(Clone)]
pub struct MethodSpec {
    entry: &'static Entry,
    given: Table,
    params: Arc<dyn AnyParams>,
    // What the edge asks of the built method before a run builds its own.
    min_topk: usize,
    taps: TapNeeds,
}

impl MethodSpec {
    /// Reads method `name`'s hyper-parameters from the keys given (the rest take the method's
    /// defaults) and checks them by building the method once: a refusal names its key.
    pub fn parse(name: &str, given: Table) -> Result<MethodSpec> {
        let entry = entry_of(name)?;
        let params = entry.parse(&given)?;
        let built = params.build().with_context(|| format!("method '{name}'"))?;
        Ok(MethodSpec { entry, given, params, min_topk: built.min_topk(), taps: built.taps() })
    }

    /// The method with its defaults.
    pub fn default_of(name: &str) -> Result<MethodSpec> {
        MethodSpec::parse(name, Table::new())
    }

    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// Its registry entry (whether it needs a teacher, the grid the report draws, its keys).
    pub fn entry(&self) -> &'static Entry {
        self.entry
    }

    /// The hyper-parameters as given, only the keys given.
    pub fn given(&self) -> &Table {
        &self.given
    }

    /// Every hyper-parameter in effect, defaults filled in (`MethodParams::record`).
    pub fn hyper(&self) -> serde_json::Value {
        self.params.record()
    }

    /// The method, ready for `Method::setup`.
    pub fn build(&self) -> Result<Box<dyn Method>> {
        self.params.build().with_context(|| format!("method '{}'", self.name()))
    }

    /// See `Method::min_topk`.
    pub(crate) fn min_topk(&self) -> usize {
        self.min_topk
    }

    /// See `Method::taps`.
    pub fn taps(&self) -> &TapNeeds {
        &self.taps
    }

    /// Whether it distils from a teacher (`MethodParams::NEEDS_TEACHER`).
    pub(crate) fn needs_teacher(&self) -> bool {
        self.entry.needs_teacher
    }
}

impl PartialEq for MethodSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && self.given == other.given
    }
}

impl std::fmt::Debug for MethodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {}", self.name(), self.hyper())
    }
}

/// How a spec is stored: the method's name and the keys given, as configurations and plans have
/// always stored them (`"method": "kd", "params": {"tau": 4}`).
#[derive(Serialize, Deserialize)]
struct Stored {
    method: String,
    /// Plans stored before the methods had their own structs wrote every key of every method,
    /// null where not given: the nulls are dropped.
    #[serde(default)]
    params: BTreeMap<String, Option<toml::Value>>,
}

impl Serialize for MethodSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let params = self.given.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        Stored { method: self.name().to_string(), params }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MethodSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let stored = Stored::deserialize(d)?;
        let given: Table = stored.params.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
        MethodSpec::parse(&stored.method, given).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}
