//! The binary's protocol surface: VERSION, no command, bad input, unimplemented commands.

use serde_json::json;

use crate::harness::run_binary;

fn base_env(command: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", "ctr-binary".to_string()),
        ("CNI_NETNS", "/run/netns/none".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
    ]
}

fn run(vars: &[(&'static str, String)], stdin: &str) -> crate::harness::Run {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_binary(None, &vars, stdin.as_bytes())
}

#[test]
fn version_lists_every_supported_version() {
    let out = run(
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"0.4.0"}"#,
    )
    .success()
    .stdout;
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(
        out["supportedVersions"],
        json!([
            "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"
        ])
    );
    let out = run(&[("CNI_COMMAND", "VERSION".into())], "")
        .success()
        .stdout;
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn no_command_prints_about_to_stderr_and_exits_zero() {
    let r = run(&[], "").success();
    assert!(r.stdout_raw.is_empty());
    assert!(
        r.stderr.contains("multihome") && r.stderr.contains("CNI"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_environment_and_stdin_give_cni_errors() {
    let mut vars = base_env("ADD");
    vars.retain(|(k, _)| *k != "CNI_CONTAINERID");
    let err = run(&vars, "{}").failure();
    assert_eq!(err["code"], 4);
    assert!(err["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));

    let err = run(&base_env("ADD"), r#"{"cniVersion":"1.0.0","name":"m","#).failure();
    assert_eq!(err["code"], 6, "{err}");

    let err = run(&base_env("ADD"), r#"{"cniVersion":"1.0.0","name":"m"}"#).failure();
    assert_eq!(err["code"], 7);
    assert_eq!(err["cniVersion"], "1.0.0");

    let err = run(
        &base_env("ADD"),
        r#"{"cniVersion":"0.4.0","name":"m","delegates":[{"name":"x","type":"../../bin/sh"}]}"#,
    )
    .failure();
    assert_eq!(err["code"], 7);
    assert!(err["msg"].as_str().unwrap().contains("delegates"), "{err}");
    assert_eq!(err["cniVersion"], "0.4.0");

    let err = run(
        &base_env("ADD"),
        r#"{"cniVersion":"1.0.0","name":"m","delegates":[{"name":"x","type":"bridge"}]}"#,
    )
    .failure();
    assert_eq!(err["code"], 4, "a netns that does not exist: {err}");
    assert!(err["msg"].as_str().unwrap().contains("CNI_NETNS"), "{err}");

    let mut not_a_netns = base_env("ADD");
    not_a_netns.retain(|(k, _)| *k != "CNI_NETNS");
    not_a_netns.push(("CNI_NETNS", "/etc/hostname".into()));
    let err = run(
        &not_a_netns,
        r#"{"cniVersion":"1.0.0","name":"m","delegates":[{"name":"x","type":"bridge"}]}"#,
    )
    .failure();
    assert_eq!(err["code"], 4, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("not a network namespace"),
        "{err}"
    );
}

#[test]
fn gc_and_status_need_1_1_0_and_say_what_is_wrong() {
    for command in ["GC", "STATUS"] {
        let err = run(
            &base_env(command),
            r#"{"cniVersion":"1.0.0","name":"m","clusterNetwork":"x"}"#,
        )
        .failure();
        assert_eq!(err["code"], 1, "{command} needs 1.1.0: {err}");
        assert!(err["msg"].as_str().unwrap().contains(command), "{err}");
    }
    let err = run(
        &base_env("STATUS"),
        r#"{"cniVersion":"1.1.0","name":"m","clusterNetwork":"/nonexistent/x.conf","confDir":"/nonexistent"}"#,
    )
    .failure();
    assert_eq!(err["code"], 50, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("clusterNetwork"),
        "{err}"
    );
}
