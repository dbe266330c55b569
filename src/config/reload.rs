//! Reloading a running server's configuration: which keys differ between two
//! configurations, which of them a running server applies ([`is_live`]), and the cell that
//! holds a live value ([`Live`]).
//!
//! Keys are compared in their dotted TOML form (`rates.frames_per_s_per_ip`), from the
//! serialized configurations, so a table added to [`Config`] later is compared too, and is
//! restart-only until it is named in [`LIVE_KEYS`] or [`LIVE_PREFIXES`].

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::{Config, ConfigError};

/// A value that readers take a snapshot of and a reload replaces whole.
///
/// A read is a shared lock and a reference-count increment, and a reader holds its
/// snapshot (an `Arc`) without the lock, so a reload never waits for a slow reader and a
/// reader never sees half of a reload.
#[derive(Debug)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        // A poisoned lock still holds a whole value: `store` only swaps a pointer.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the value; readers holding the old one keep it until they drop it.
    pub fn store(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
    }
}

/// Keys a running server applies on reload.
///
/// Connection caps, timeouts, rates, the allow and deny lists, the firewall's weights and
/// thresholds, and the per-request limits that no connection has agreed to (quota, file
/// size, reply queue, the pre-login frame cap).
pub const LIVE_KEYS: &[&str] = &[
    "limits.max_connections",
    "limits.max_connections_per_ip",
    "limits.preauth_frame_bytes",
    "limits.preauth_connections_per_ip",
    "limits.preauth_connections",
    "limits.outbound_queue_bytes",
    "limits.user_quota_bytes",
    "limits.max_file_bytes",
    "ip.allow",
    "ip.deny",
    "ip.block_secs",
    "auth.resume_when_blocked",
    "firewall.enabled",
    "firewall.shadow",
    "firewall.threshold",
    "firewall.half_life_s",
    "firewall.escalation",
    "firewall.max_block_secs",
];

/// Key prefixes a running server applies on reload: every timeout, every rate, every
/// firewall weight.
pub const LIVE_PREFIXES: &[&str] = &["timeouts.", "rates.", "firewall.weight_"];

/// Whether a running server applies a change of `key` on reload. Every other key needs a
/// restart: the listen address and data directory are not in the file at all; the frame
/// and message sizes are what open connections' codecs work under; the IPv6 prefix and
/// `max_tracked_sources` size the keyed state; argon2 and the login workers are the
/// verifier's threads; tickets, activity, storage and TLS are set up once at start.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key) || LIVE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// One key whose value differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// The dotted key, e.g. `rates.frames_per_s_per_ip`.
    pub key: String,
    /// The old value as TOML, or `(unset)`.
    pub old: String,
    /// The new value as TOML, or `(unset)`.
    pub new: String,
    /// Whether a running server applies it ([`is_live`]).
    pub live: bool,
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.old, self.new)
    }
}

const UNSET: &str = "(unset)";

/// Every key of `cfg` with its value as TOML, in key order. An unset optional key (a
/// `tls.cert` not given) is absent.
pub fn flatten(cfg: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    // Serializing plain structs of numbers, strings, lists and options cannot fail; if a
    // future field could, its table is left out rather than panic.
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(cfg) {
        flatten_into(&mut out, "", t);
    }
    out
}

/// Every key set in a TOML table (a parsed file), dotted, with its value.
pub fn flatten_table(table: toml::Table) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    flatten_into(&mut out, "", table);
    out
}

fn flatten_into(out: &mut BTreeMap<String, toml::Value>, prefix: &str, table: toml::Table) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_into(out, &key, t),
            v => {
                out.insert(key, v);
            }
        }
    }
}

/// The keys whose values differ between `old` and `new`, in key order.
pub fn diff(old: &Config, new: &Config) -> Vec<KeyChange> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let shown =
                |v: Option<&toml::Value>| v.map_or_else(|| UNSET.to_owned(), |v| v.to_string());
            KeyChange {
                key: k.clone(),
                old: shown(a.get(k)),
                new: shown(b.get(k)),
                live: is_live(k),
            }
        })
        .collect()
}

/// The keys of `cfg` that a running server does not apply on reload.
pub fn restart_only_keys(cfg: &Config) -> Vec<String> {
    flatten(cfg).into_keys().filter(|k| !is_live(k)).collect()
}

/// What a reload does: the configuration to run with and the changes, split.
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    /// `old` with every live change of `new` applied and every restart-only key kept.
    pub config: Config,
    /// The changes applied.
    pub applied: Vec<KeyChange>,
    /// The changes that need a restart, not applied.
    pub restart: Vec<KeyChange>,
}

/// Plans reloading from `old` to `new`: checks `new`, applies its live changes to `old`,
/// keeps the restart-only keys, and checks the result (a live value may contradict a kept
/// restart-only one, e.g. `limits.max_connections` above a kept `max_tracked_sources`).
pub fn plan(old: &Config, new: &Config) -> Result<ReloadPlan, ConfigError> {
    new.check()?;
    let changes = diff(old, new);
    let mut table = toml::Value::try_from(old).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let fresh = flatten(new);
    for change in changes.iter().filter(|c| c.live) {
        set(&mut table, &change.key, fresh.get(&change.key).cloned());
    }
    let config: Config = table
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse(e.message().to_owned()))?;
    config.check()?;
    let (applied, restart) = changes.into_iter().partition(|c| c.live);
    Ok(ReloadPlan {
        config,
        applied,
        restart,
    })
}

/// Sets (or, for `None`, removes) the dotted `key` in `root`.
fn set(root: &mut toml::Value, key: &str, value: Option<toml::Value>) {
    let mut node = root;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let toml::Value::Table(t) = node else { return };
        if parts.peek().is_none() {
            match value {
                Some(v) => {
                    t.insert(part.to_owned(), v);
                }
                None => {
                    t.remove(part);
                }
            }
            return;
        }
        node = t
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml_str(text).unwrap()
    }

    #[test]
    fn same_config_has_no_changes() {
        assert!(diff(&Config::default(), &Config::default()).is_empty());
    }

    #[test]
    fn diff_names_keys_and_liveness() {
        let new = cfg(
            "[rates]\nframes_per_s_per_ip = 7\n[ip]\nipv6_prefix = 56\ndeny = [\"127.0.9.0/24\"]\n",
        );
        let changes = diff(&Config::default(), &new);
        let shown: Vec<String> = changes.iter().map(|c| format!("{c} {}", c.live)).collect();
        assert_eq!(
            shown,
            vec![
                "ip.deny: [] -> [\"127.0.9.0/24\"] true",
                "ip.ipv6_prefix: 64 -> 56 false",
                "rates.frames_per_s_per_ip: 4000 -> 7 true",
            ]
        );
    }

    #[test]
    fn unset_option_shows_as_unset() {
        let new = cfg("[tls]\ncert = \"a.pem\"\nkey = \"b.pem\"\n");
        let changes = diff(&Config::default(), &new);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].old, UNSET);
        assert!(!changes[0].live);
    }

    #[test]
    fn plan_applies_live_and_keeps_restart_only() {
        let new = cfg("[rates]\nframes_per_s_per_ip = 7\n[ip]\nipv6_prefix = 56\n[firewall]\nweight_refused = 3\n");
        let p = plan(&Config::default(), &new).unwrap();
        assert_eq!(p.config.rates.frames_per_s_per_ip, 7);
        assert_eq!(p.config.firewall.weight_refused, 3);
        assert_eq!(p.config.ip.ipv6_prefix, 64);
        assert_eq!(p.applied.len(), 2);
        assert_eq!(p.restart.len(), 1);
        assert_eq!(p.restart[0].key, "ip.ipv6_prefix");
    }

    #[test]
    fn plan_refuses_a_merge_that_contradicts_a_kept_key() {
        // max_connections is live, max_tracked_sources is not: the merge would run with
        // more connections than limiter keys, which check refuses.
        let old = cfg("[limits]\nmax_connections = 1000\nmax_tracked_sources = 1000\n");
        let new = cfg("[limits]\nmax_connections = 2000\nmax_tracked_sources = 2000\n");
        let e = plan(&old, &new).unwrap_err();
        assert!(e.to_string().contains("limits.max_tracked_sources"), "{e}");
    }

    #[test]
    fn every_live_key_exists() {
        let keys = flatten(&Config::default());
        for k in LIVE_KEYS {
            assert!(keys.contains_key(*k), "{k}");
        }
        for p in LIVE_PREFIXES {
            assert!(keys.keys().any(|k| k.starts_with(p)), "{p}");
        }
    }

    #[test]
    fn restart_only_keys_exclude_live_ones() {
        let keys = restart_only_keys(&Config::default());
        assert!(keys.contains(&"ip.ipv6_prefix".to_owned()));
        assert!(keys.contains(&"limits.max_frame_bytes".to_owned()));
        assert!(!keys.iter().any(|k| k.starts_with("rates.")));
    }
}
