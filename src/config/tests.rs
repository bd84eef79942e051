//! The loader's contract: precedence of the sources, one-line errors naming the key,
//! the leader election resolved from the environment, and the effective config.

// figment's test Jail returns its large error type by design.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use figment::Jail;

use super::check::resolve_leader_election;
use super::*;
use crate::k8s::sharding::Sharding;
use crate::leader::config::LeaderElectionConfig;
use crate::probe::config::ProbesConfig;

fn load_settings(
    jail: &Jail,
    file: Option<&str>,
    flags: &FlagOverrides,
) -> Result<Settings, String> {
    let path = file.map(|name| jail.directory().join(name));
    Settings::load(path.as_deref(), flags).map_err(|e| e.to_string())
}

fn load(jail: &Jail, file: Option<&str>, flags: &FlagOverrides) -> Result<Config, String> {
    load_settings(jail, file, flags).map(|settings| settings.config)
}

#[test]
fn defaults_are_valid_and_documented_values() {
    Jail::expect_with(|jail| {
        let config = load(jail, None, &FlagOverrides::default())?;
        assert_eq!(config.listen.to_string(), "0.0.0.0:9964");
        assert_eq!(config.metrics.retention, Duration::from_secs(3600));
        assert_eq!(config.metrics.time_to_recover_buckets.len(), 11);
        assert!(!config.events.enabled, "events are opt-in");
        assert_eq!(config.events.max_per_object_per_minute, 6);
        Ok(())
    });
}

#[test]
fn file_then_env_then_flags_take_precedence() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            r#"
            listen = "127.0.0.1:1000"
            [watch]
            namespaces = ["grade-submission"]
            label_selector = "app.kubernetes.io/name=grade-submission"
            [metrics]
            retention = "30m"
            "#,
        )?;
        let config = load(jail, Some("c.toml"), &FlagOverrides::default())?;
        assert_eq!(config.listen.to_string(), "127.0.0.1:1000");
        assert_eq!(config.watch.namespaces, vec!["grade-submission"]);
        assert_eq!(config.metrics.retention, Duration::from_secs(1800));

        jail.set_env("SELFHEAL_LISTEN", "127.0.0.1:2000");
        jail.set_env("SELFHEAL_METRICS__RETENTION", "2h");
        jail.set_env("SELFHEAL_CONFIG", "ignored-here");
        let config = load(jail, Some("c.toml"), &FlagOverrides::default())?;
        assert_eq!(config.listen.to_string(), "127.0.0.1:2000");
        assert_eq!(config.metrics.retention, Duration::from_secs(7200));

        let flags = FlagOverrides {
            listen: Some("127.0.0.1:3000".parse().expect("addr")),
            web_config_file: None,
            log_format: Some(LogFormat::Json),
            sharding: ShardingOverrides {
                shard: Some(1),
                total_shards: None,
            },
        };
        jail.set_env("SELFHEAL_SHARDING__TOTAL_SHARDS", "3");
        let config = load(jail, Some("c.toml"), &flags)?;
        assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(
            (config.sharding.shard, config.sharding.total_shards),
            (1, 3)
        );
        Ok(())
    });
}

#[test]
fn yaml_files_are_read_too() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "c.yaml",
            "watch:\n  exclude_namespaces: [kube-system]\nmetrics:\n  time_to_recover_buckets: [1, 10]\n",
        )?;
        let config = load(jail, Some("c.yaml"), &FlagOverrides::default())?;
        assert_eq!(config.watch.exclude_namespaces, vec!["kube-system"]);
        assert_eq!(config.metrics.time_to_recover_buckets, vec![1.0, 10.0]);
        Ok(())
    });
}

#[test]
fn every_bad_input_names_its_key() {
    Jail::expect_with(|jail| {
        let cases = [
            ("typo.toml", "[watch]\nnamespace = [\"a\"]\n", "namespace"),
            (
                "buckets.toml",
                "[metrics]\ntime_to_recover_buckets = [5, 1]\n",
                "metrics.time_to_recover_buckets",
            ),
            (
                "negative.toml",
                "[metrics]\ntime_to_recover_buckets = [-1]\n",
                "metrics.time_to_recover_buckets",
            ),
            (
                "ns.toml",
                "[watch]\nnamespaces = [\"Bad_NS\"]\n",
                "watch.namespaces",
            ),
            (
                "duration.toml",
                "[metrics]\nretention = \"one hour\"\n",
                "retention",
            ),
            (
                "zero.toml",
                "[metrics]\nretention = \"0s\"\n",
                "metrics.retention",
            ),
            ("listen.toml", "listen = \"nowhere\"\n", "listen"),
            (
                "selector.toml",
                "[watch]\nlabel_selector = \"app in (a,b\"\n",
                "watch.label_selector",
            ),
            ("format.toml", "log_format = \"xml\"\n", "log_format"),
            (
                "nothing.toml",
                "[watch]\nnamespaces = [\"a\"]\nexclude_namespaces = [\"a\"]\n",
                "watch.exclude_namespaces",
            ),
            (
                "events.toml",
                "[events]\nenabled = true\nmax_per_object_per_minute = 0\n",
                "events.max_per_object_per_minute",
            ),
            ("events-typo.toml", "[events]\nenable = true\n", "enable"),
        ];
        for (name, body, key) in cases {
            jail.create_file(name, body)?;
            let error = load(jail, Some(name), &FlagOverrides::default()).expect_err(name);
            assert!(error.contains(key), "{name}: {error}");
            assert!(!error.contains('\n'), "{name}: one line: {error}");
        }
        let missing =
            load(jail, Some("absent.toml"), &FlagOverrides::default()).expect_err("missing file");
        assert!(missing.contains("absent.toml"), "{missing}");
        jail.set_env("SELFHEAL_WATCH__NAMESPACES", "[\"UPPER\"]");
        let env_error = load(jail, None, &FlagOverrides::default()).expect_err("env");
        assert!(env_error.contains("watch.namespaces"), "{env_error}");
        Ok(())
    });
}

#[test]
fn kubernetes_service_links_are_not_config_but_typos_are_errors() {
    Jail::expect_with(|jail| {
        // What Kubernetes injects for a Service named selfheal-exporter.
        jail.set_env("SELFHEAL_EXPORTER_SERVICE_HOST", "10.0.0.1");
        jail.set_env("SELFHEAL_EXPORTER_SERVICE_PORT", "9964");
        jail.set_env("SELFHEAL_EXPORTER_SERVICE_PORT_METRICS", "9964");
        jail.set_env("SELFHEAL_EXPORTER_PORT", "tcp://10.0.0.1:9964");
        jail.set_env("SELFHEAL_EXPORTER_PORT_9964_TCP", "tcp://10.0.0.1:9964");
        jail.set_env("SELFHEAL_EXPORTER_PORT_9964_TCP_ADDR", "10.0.0.1");
        jail.set_env("SELFHEAL_EXPORTER_PORT_9964_TCP_PROTO", "tcp");
        load(jail, None, &FlagOverrides::default())?;
        jail.set_env("SELFHEAL_LISTN", "127.0.0.1:1");
        let typo = load(jail, None, &FlagOverrides::default()).expect_err("typo");
        assert!(typo.contains("SELFHEAL_LISTN"), "{typo}");
        Ok(())
    });
}

#[test]
fn probe_targets_are_read_with_their_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "p.toml",
            "[[probes.targets]]\nname = \"grade\"\nurl = \"http://127.0.0.1:31000/grade\"\ninterval = \"250ms\"\n",
        )?;
        let specs = load_settings(jail, Some("p.toml"), &FlagOverrides::default())?.probe_specs;
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].interval, Duration::from_millis(250));
        assert_eq!(specs[0].timeout, Duration::from_secs(1));
        assert!(specs[0].expect_status.accepts(204));
        Ok(())
    });
}

fn leader_config(toml_text: &str) -> LeaderElectionConfig {
    toml::from_str::<Config>(toml_text)
        .expect("leader_election section")
        .leader_election
}

fn resolve(
    config: &mut LeaderElectionConfig,
    total_shards: u32,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let sharding = Sharding {
        shard: 0,
        total_shards,
    };
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    resolve_leader_election(config, "leader_election", &sharding, |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .map_err(|e| e.to_string())
}

#[test]
fn leader_election_is_off_by_default_and_takes_the_pod_from_the_environment() {
    let mut off = LeaderElectionConfig::default();
    assert!(!off.enabled);
    assert_eq!(off.lease_name, "selfheal-exporter-prober");
    assert_eq!(off.lease_duration, Duration::from_secs(15));
    resolve(&mut off, 3, &[]).expect("disabled: nothing to check");
    assert_eq!(off.namespace, None);

    let mut on = leader_config("[leader_election]\nenabled = true\n");
    resolve(
        &mut on,
        1,
        &[
            ("POD_NAMESPACE", "monitoring"),
            ("POD_NAME", "exp-5f-x"),
            ("HOSTNAME", "h"),
        ],
    )
    .expect("valid");
    assert_eq!(on.namespace.as_deref(), Some("monitoring"));
    assert_eq!(on.identity.as_deref(), Some("exp-5f-x"));
    let mut host = leader_config("[leader_election]\nenabled = true\nnamespace = \"ns\"\n");
    resolve(
        &mut host,
        1,
        &[("POD_NAMESPACE", "other"), ("HOSTNAME", "h")],
    )
    .expect("valid");
    assert_eq!(
        (host.namespace.as_deref(), host.identity.as_deref()),
        (Some("ns"), Some("h")),
        "the config wins over POD_NAMESPACE; HOSTNAME stands in for POD_NAME"
    );
}

#[test]
fn leader_election_errors_name_their_keys() {
    let enabled = "[leader_election]\nenabled = true\n";
    let pod = [("POD_NAMESPACE", "ns"), ("POD_NAME", "p")];
    type Case<'a> = (String, &'a [(&'a str, &'a str)], u32, &'a str);
    let cases: [Case; 9] = [
        (
            enabled.into(),
            &[("POD_NAME", "p")],
            1,
            "leader_election.namespace = (unset)",
        ),
        (
            enabled.into(),
            &[("POD_NAMESPACE", "ns"), ("HOSTNAME", " ")],
            1,
            "leader_election.identity = (unset)",
        ),
        (
            enabled.into(),
            &pod,
            2,
            "leader_election.enabled = true: cannot be combined with sharding.total_shards = 2",
        ),
        (
            format!("{enabled}namespace = \"Bad_NS\"\n"),
            &pod,
            1,
            "leader_election.namespace = \"Bad_NS\"",
        ),
        (
            format!("{enabled}lease_name = \"-x\"\n"),
            &pod,
            1,
            "leader_election.lease_name",
        ),
        (
            format!("{enabled}lease_duration = \"1500ms\"\n"),
            &pod,
            1,
            "leader_election.lease_duration = 1s 500ms",
        ),
        (
            format!("{enabled}grace = \"15s\"\n"),
            &pod,
            1,
            "leader_election.grace = 15s",
        ),
        (
            format!("{enabled}grace = \"0s\"\n"),
            &pod,
            1,
            "leader_election.grace = 0s",
        ),
        (
            format!("{enabled}retry_period = \"3s\"\n"),
            &pod,
            1,
            "leader_election.retry_period = 3s",
        ),
    ];
    for (text, env, total_shards, expected) in cases {
        let mut config = leader_config(&text);
        let error = resolve(&mut config, total_shards, env).expect_err(expected);
        assert!(error.contains(expected), "{text}: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
}

/// Leader election on through the environment variables under `prefix` (3 s Lease),
/// in the pod `pod` of namespace selfheal-system.
fn enable_leader_election(jail: &mut Jail, prefix: &str, pod: &str) {
    for (key, value) in [
        ("ENABLED", "true"),
        ("LEASE_DURATION", "3s"),
        ("GRACE", "1s"),
        ("RETRY_PERIOD", "200ms"),
    ] {
        jail.set_env(format!("{prefix}{key}"), value);
    }
    jail.set_env("POD_NAMESPACE", "selfheal-system");
    jail.set_env("POD_NAME", pod);
}

#[test]
fn leader_election_loads_from_the_environment_and_prints_what_it_resolved() {
    Jail::expect_with(|jail| {
        enable_leader_election(
            jail,
            "SELFHEAL_LEADER_ELECTION__",
            "selfheal-exporter-7d9-abcde",
        );
        let settings = load_settings(jail, None, &FlagOverrides::default())?;
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
        let election = &settings.config.leader_election;
        assert!(election.enabled);
        assert_eq!(election.lease_duration, Duration::from_secs(3));
        assert_eq!(election.namespace.as_deref(), Some("selfheal-system"));
        let leader = settings.leader.as_ref().expect("resolved settings");
        assert_eq!(leader.identity, "selfheal-exporter-7d9-abcde");
        let printed = settings.config.to_toml();
        assert!(
            printed.contains("[leader_election]")
                && printed.contains("identity = \"selfheal-exporter-7d9-abcde\""),
            "{printed}"
        );
        jail.set_env("SELFHEAL_SHARDING__TOTAL_SHARDS", "2");
        let error = load(jail, None, &FlagOverrides::default()).expect_err("with sharding");
        assert!(
            error.contains("config key leader_election.enabled")
                && error.contains("sharding.total_shards"),
            "{error}"
        );
        Ok(())
    });
}

#[test]
fn the_deprecated_probes_leader_election_still_works_with_a_warning_naming_the_new_key() {
    Jail::expect_with(|jail| {
        enable_leader_election(jail, "SELFHEAL_PROBES__LEADER_ELECTION__", "p-1");
        let settings = load_settings(jail, None, &FlagOverrides::default())?;
        assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
        assert!(
            settings.warnings[0].contains("probes.leader_election is deprecated")
                && settings.warnings[0].contains("top-level leader_election"),
            "{:?}",
            settings.warnings
        );
        assert!(
            settings.config.leader_election.enabled,
            "moved to its new place"
        );
        assert_eq!(settings.config.probes.leader_election, None);
        assert_eq!(
            settings.leader.map(|leader| leader.lease_duration),
            Some(Duration::from_secs(3))
        );
        let printed = settings.config.to_toml();
        assert!(
            printed.contains("[leader_election]") && !printed.contains("[probes.leader_election]"),
            "{printed}"
        );

        // Errors name the key where the user wrote it.
        jail.set_env("SELFHEAL_PROBES__LEADER_ELECTION__GRACE", "15s");
        let error = load(jail, None, &FlagOverrides::default()).expect_err("bad grace");
        assert!(
            error.contains("probes.leader_election.grace = 15s"),
            "{error}"
        );
        jail.set_env("SELFHEAL_PROBES__LEADER_ELECTION__GRACE", "1s");

        // Both places at once is ambiguous: refused, naming both.
        jail.set_env("SELFHEAL_LEADER_ELECTION__ENABLED", "true");
        let both = load(jail, None, &FlagOverrides::default()).expect_err("both keys");
        assert!(
            both.contains("probes.leader_election") && both.contains("keep only leader_election"),
            "{both}"
        );
        Ok(())
    });
}

#[test]
fn the_effective_config_round_trips_through_toml() {
    Jail::expect_with(|jail| {
        let mut config = Config::default();
        config.probes.targets = toml::from_str::<ProbesConfig>(
            "[[targets]]\nname = \"a\"\nurl = \"http://x/\"\nheaders = { X-Probe = \"1\" }\n",
        )
        .map_err(|e| e.to_string())?
        .targets;
        jail.create_file("out.toml", &config.to_toml())?;
        let again = load(jail, Some("out.toml"), &FlagOverrides::default())?;
        assert_eq!(again, config);
        Ok(())
    });
}

#[test]
fn the_web_config_file_comes_from_the_file_the_environment_or_the_flag_and_is_checked() {
    Jail::expect_with(|jail| {
        jail.create_file("web.yml", "http_server_config:\n  http2: false\n")?;
        jail.create_file("bad.yml", "basic_auth_users:\n  alice: plain\n")?;
        let web = jail.directory().join("web.yml");
        let bad = jail.directory().join("bad.yml");
        let none = load_settings(jail, None, &FlagOverrides::default())?;
        assert!(none.web.is_none() && none.config.web_config_file.is_none());

        jail.create_file(
            "c.toml",
            &format!("web_config_file = {:?}\n", web.display().to_string()),
        )?;
        let from_file = load_settings(jail, Some("c.toml"), &FlagOverrides::default())?;
        assert!(!from_file.web.expect("loaded").config.http2);

        jail.set_env("SELFHEAL_WEB_CONFIG_FILE", bad.display().to_string());
        let error = load_settings(jail, Some("c.toml"), &FlagOverrides::default())
            .expect_err("the environment wins, and its file is bad");
        assert!(
            error.starts_with(&format!(
                "web config {}: basic_auth_users.alice: not a bcrypt hash",
                bad.display()
            )),
            "{error}"
        );

        let flags = FlagOverrides {
            web_config_file: Some(web.clone()),
            ..FlagOverrides::default()
        };
        let from_flag = load_settings(jail, Some("c.toml"), &flags)?;
        assert_eq!(
            from_flag.config.web_config_file.as_deref(),
            Some(web.as_path())
        );
        assert!(from_flag.config.to_toml().contains("web_config_file = "));
        Ok(())
    });
}
