//! Environment overrides: `BOTHOST_<SECTION>__<KEY>=value` laid over the
//! file's table before it is read, so secrets and per-host values need not
//! live in the file.

/// Prefix of environment variables that override keys of the file.
const ENV_PREFIX: &str = "BOTHOST_";

/// Environment variables DESIGN.md names for secrets, and the key each sets.
const ENV_ALIASES: [(&str, &str); 2] = [
    ("BOTHOST_DATABASE_URL", "DATABASE__URL"),
    ("BOTHOST_JWT_SECRET", "AUTH__JWT_SECRET"),
];

/// Lays `BOTHOST_<SECTION>__<KEY>` variables (and the [`ENV_ALIASES`]) over
/// the table. Values that read as TOML integers, floats or booleans keep
/// that type; anything else is a string.
pub fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), (String, String)> {
    for (name, value) in env {
        let alias = ENV_ALIASES.iter().find(|(n, _)| *n == name);
        // `BOTHOST_JWT_SECRET=` (set but empty, a slip in an env file) must
        // not quietly replace a secret the file sets.
        if alias.is_some() && value.is_empty() {
            continue;
        }
        let Some(rest) = alias.map(|(_, key)| *key).or(name.strip_prefix(ENV_PREFIX)) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let (leaf, parents) = path.split_last().unwrap_or((&path[0], &[]));
        let mut node = &mut *table;
        for part in parents {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                (
                    name.clone(),
                    format!("'{part}' is not a section, so it cannot be overridden by key"),
                )
            })?;
        }
        node.insert(leaf.clone(), env_value(&value));
    }
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    toml::Value::String(raw.to_owned())
}
