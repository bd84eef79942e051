//! Property tests of config files: the shipped example with any one value replaced by any
//! TOML value (or an unknown key added), and arbitrary text. Invariants: no panic; the
//! file is accepted, or refused with one line that names a key.

// figment's test Jail returns its large error type by design.
#![allow(clippy::result_large_err)]

use figment::Jail;
use proptest::prelude::*;

use super::{FlagOverrides, Settings};

const EXAMPLE: &str = include_str!("../../config/selfheal.example.toml");

/// Any TOML value, a couple of levels deep.
fn any_toml() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        ".{0,16}".prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        prop::sample::select(vec![
            "1h",
            "0s",
            "-5s",
            "5",
            "9999999999h",
            "250ms",
            "0.0.0.0:0",
            "auto"
        ])
        .prop_map(|s| toml::Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|map| toml::Value::Table(map.into_iter().collect())),
        ]
    })
}

/// The dotted paths of every value in `table`.
fn paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let toml::Value::Table(inner) = value {
            paths(inner, &path, out);
        }
        out.push(path);
    }
}

fn set(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts = path.split('.').peekable();
    let mut table = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return;
        }
        match table.get_mut(part) {
            Some(toml::Value::Table(inner)) => table = inner,
            _ => return,
        }
    }
}

/// Loads `text` as the config file; the error's text when refused.
fn load(text: &str) -> Result<(), String> {
    let mut outcome = Ok(());
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", text)?;
        outcome = Settings::load(
            Some(&jail.directory().join("config.toml")),
            &FlagOverrides::default(),
        )
        .map(drop)
        .map_err(|error| error.to_string());
        Ok(())
    });
    outcome
}

fn assert_one_clear_line(text: &str, error: &str) -> Result<(), TestCaseError> {
    prop_assert!(!error.trim().is_empty(), "an empty error for {}", text);
    prop_assert!(
        !error.trim().contains('\n'),
        "not one line: {}\nfor {}",
        error,
        text
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_value_of_the_example_replaced_is_accepted_or_named(
        pick in any::<prop::sample::Index>(),
        value in any_toml(),
        unknown in prop::option::weighted(0.2, "[a-z_]{1,10}"),
    ) {
        let mut table: toml::Table = EXAMPLE.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let mut all = Vec::new();
        paths(&table, "", &mut all);
        let path = match &unknown {
            Some(key) => format!("{}.{key}", all[pick.index(all.len())].split('.').next().unwrap_or("")),
            None => all[pick.index(all.len())].clone(),
        };
        set(&mut table, &path, value);
        let text = toml::to_string(&table).unwrap_or_default();
        if let Err(error) = load(&text) {
            assert_one_clear_line(&text, &error)?;
            let last = path.rsplit('.').next().unwrap_or(&path);
            // The message names the key (or, for a value inside a list or table, the
            // key above it).
            let named = path.split('.').any(|part| error.contains(part));
            prop_assert!(named, "{} does not name {} ({})\n{}", error, path, last, text);
        }
    }

    #[test]
    fn arbitrary_text_is_accepted_or_refused_in_one_line(text in ".{0,64}") {
        if let Err(error) = load(&text) {
            assert_one_clear_line(&text, &error)?;
        }
    }
}
