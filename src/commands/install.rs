//! `multihome install`: the DaemonSet's entrypoint. It does what Multus's thin entrypoint does,
//! under the same flag names: copy the binary into the host's CNI bin dir, write a kubeconfig
//! from the pod's service account, generate `00-multihome.conflist` (`.conf` below 1.0.0) from
//! the primary CNI config. Every file is written atomically (a temporary file in the same
//! directory, fsync, rename) and only when its bytes change: the runtime never reads a
//! half-written config, kubelet never runs a half-written binary, and a running binary is never
//! overwritten in place ("text file busy").
//!
//! The kubeconfig names the token and CA files beside it, which the installer keeps current, so
//! a rotated service-account token takes effect without rewriting the kubeconfig.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::cli::{self, Parser};
use super::install_watch;
use crate::config::config_files;
use crate::error::{Code, coded};

/// The generated config's network name, as Multus names its own.
const NETWORK_NAME: &str = "multus-cni-network";
/// The generated config's file name (without extension).
const OWN_STEM: &str = "00-multihome";

const HELP: &str = "\
The DaemonSet's entrypoint: copy the binary into the host's CNI bin dir, write a kubeconfig from
the pod's service account, generate 00-multihome.conflist from the primary CNI config; then keep
them current until SIGTERM. Multus's entrypoint flags, under their names; a boolean takes
--name or --name=true|false.

Usage: multihome install [OPTIONS]

Options:
      --cni-conf-dir DIR       Where the generated config goes (the host's CNI conf dir, as
                               mounted) [default: /host/etc/cni/net.d]
      --cni-bin-dir DIR        Where the binary is copied (the host's CNI bin dir, as mounted)
                               [default: /host/opt/cni/bin]
      --multus-conf-file FILE  `auto` generates the config from the primary one; a path is
                               copied as it is [default: auto]
      --multus-autoconfig-dir DIR
                               Where the primary CNI config is looked for
                               [default: --cni-conf-dir]
      --multus-kubeconfig-file-host FILE
                               The kubeconfig's path on the host, named in the generated config
                               [default: /etc/cni/net.d/multus.d/multus.kubeconfig]
      --multus-master-cni-file-name NAME
                               The primary CNI config's file name [default: the alphabetically
                               first]
      --namespace-isolation    namespaceIsolation in the generated config
      --global-namespaces LIST globalNamespaces in the generated config
      --multus-log-level LEVEL logLevel in the generated config
      --multus-log-file FILE   logFile in the generated config
      --readiness-indicator-file FILE
                               readinessindicatorfile in the generated config
      --additional-bin-dir DIR binDir in the generated config
      --cni-version VERSION    The cniVersion of the generated config; must be the primary's
                               unless forced
      --force-cni-version      Use --cni-version even when the primary's differs
      --skip-multus-binary-copy
                               Do not copy the binary
      --cleanup-config-on-exit Remove the generated config on exit (Multus's behaviour); by
                               default it stays, so that no pod starts without multihome during
                               a rolling upgrade
      --skip-config-watch      Do not watch the primary config and the service account after
                               installing
      --once                   Install once and exit (an init container)
      --cni-conf-dir-host DIR  The host's path of --cni-conf-dir: the generated config then
                               names the primary by that path (clusterNetwork) and follows it
                               without a rewrite. Without it, the primary is copied into the
                               generated config (delegates, as Multus does) and rewritten when
                               it changes, which works whatever the host's conf dir is
      --service-account-dir DIR
                               The pod's service-account directory (token, ca.crt)
                               [default: /var/run/secrets/kubernetes.io/serviceaccount]
      --nad-policy FILE        nadPolicy in the generated config, from this JSON file (see
                               README, \"Security\")
      --primary-timeout SECONDS
                               How long to wait for a primary CNI config before giving up
                               [default: 120]
  -h, --help                   Print help
";

/// `install`'s arguments: Multus's entrypoint flags, and a few of multihome's own (see [`HELP`]).
#[derive(Debug)]
pub struct Args {
    cni_conf_dir: PathBuf,
    cni_bin_dir: PathBuf,
    multus_conf_file: String,
    multus_autoconfig_dir: Option<PathBuf>,
    multus_kubeconfig_file_host: PathBuf,
    multus_master_cni_file_name: String,
    namespace_isolation: bool,
    global_namespaces: String,
    multus_log_level: String,
    multus_log_file: String,
    readiness_indicator_file: String,
    additional_bin_dir: String,
    cni_version: String,
    force_cni_version: bool,
    skip_multus_binary_copy: bool,
    cleanup_config_on_exit: bool,
    skip_config_watch: bool,
    once: bool,
    cni_conf_dir_host: Option<PathBuf>,
    service_account_dir: PathBuf,
    nad_policy: Option<PathBuf>,
    primary_timeout: u64,
}

impl Args {
    /// Reads them; `None` when help was asked for instead.
    pub(super) fn parse(p: &mut Parser) -> Result<Option<Args>> {
        let mut a = Args {
            cni_conf_dir: "/host/etc/cni/net.d".into(),
            cni_bin_dir: "/host/opt/cni/bin".into(),
            multus_conf_file: "auto".into(),
            multus_autoconfig_dir: None,
            multus_kubeconfig_file_host: "/etc/cni/net.d/multus.d/multus.kubeconfig".into(),
            multus_master_cni_file_name: String::new(),
            namespace_isolation: false,
            global_namespaces: String::new(),
            multus_log_level: String::new(),
            multus_log_file: String::new(),
            readiness_indicator_file: String::new(),
            additional_bin_dir: String::new(),
            cni_version: String::new(),
            force_cni_version: false,
            skip_multus_binary_copy: false,
            cleanup_config_on_exit: false,
            skip_config_watch: false,
            once: false,
            cni_conf_dir_host: None,
            service_account_dir: crate::k8s::access::SERVICE_ACCOUNT_DIR.into(),
            nad_policy: None,
            primary_timeout: 120,
        };
        let run = cli::options(p, HELP, |name, p| {
            match name {
                "cni-conf-dir" => a.cni_conf_dir = cli::path(p)?,
                "cni-bin-dir" => a.cni_bin_dir = cli::path(p)?,
                "multus-conf-file" => a.multus_conf_file = cli::string(p)?,
                "multus-autoconfig-dir" => a.multus_autoconfig_dir = Some(cli::path(p)?),
                "multus-kubeconfig-file-host" => a.multus_kubeconfig_file_host = cli::path(p)?,
                "multus-master-cni-file-name" => a.multus_master_cni_file_name = cli::string(p)?,
                "namespace-isolation" => a.namespace_isolation = cli::flag(p, name)?,
                "global-namespaces" => a.global_namespaces = cli::string(p)?,
                "multus-log-level" => a.multus_log_level = cli::string(p)?,
                "multus-log-file" => a.multus_log_file = cli::string(p)?,
                "readiness-indicator-file" => a.readiness_indicator_file = cli::string(p)?,
                "additional-bin-dir" => a.additional_bin_dir = cli::string(p)?,
                "cni-version" => a.cni_version = cli::string(p)?,
                "force-cni-version" => a.force_cni_version = cli::flag(p, name)?,
                "skip-multus-binary-copy" => a.skip_multus_binary_copy = cli::flag(p, name)?,
                "cleanup-config-on-exit" => a.cleanup_config_on_exit = cli::flag(p, name)?,
                "skip-config-watch" => a.skip_config_watch = cli::flag(p, name)?,
                "once" => a.once = cli::flag(p, name)?,
                "cni-conf-dir-host" => a.cni_conf_dir_host = Some(cli::path(p)?),
                "service-account-dir" => a.service_account_dir = cli::path(p)?,
                "nad-policy" => a.nad_policy = Some(cli::path(p)?),
                "primary-timeout" => a.primary_timeout = cli::seconds(p, name)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(run.map(|()| a))
    }
}

/// Installs; then keeps the files current unless `--once` or `--skip-config-watch`.
pub fn install(args: Args) -> Result<ExitCode> {
    // A SIGTERM during the first install waits for it to finish, then ends the watch.
    let signals = if args.once {
        None
    } else {
        Some(install_watch::block_signals()?)
    };
    if !args.skip_multus_binary_copy {
        copy_binary(&args.cni_bin_dir)?;
    }
    write_kubeconfig(&args)?;
    let config = generate(&args)?;
    let Some(signals) = signals else {
        return Ok(ExitCode::SUCCESS);
    };
    let primary_dir = args
        .multus_autoconfig_dir
        .as_ref()
        .unwrap_or(&args.cni_conf_dir);
    let dirs: Vec<&Path> = if args.skip_config_watch {
        log("not watching (--skip-config-watch)");
        vec![]
    } else {
        vec![primary_dir, &args.service_account_dir]
    };
    let sig = install_watch::watch(&dirs, signals, log, || {
        if let Err(e) = write_kubeconfig(&args) {
            log(&format!("kubeconfig: {e:#}"));
        }
        if let Err(e) = generate(&args) {
            log(&format!("config: {e:#}"));
        }
    })?;
    log(&format!(
        "{sig}: exiting{}",
        if args.cleanup_config_on_exit {
            String::new()
        } else {
            format!(", {} stays in place", config.display())
        }
    ));
    if args.cleanup_config_on_exit {
        match fs::remove_file(&config) {
            Ok(()) => log(&format!("removed {}", config.display())),
            Err(e) => log(&format!("removing {}: {e}", config.display())),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per action, to stderr.
fn log(line: &str) {
    eprintln!(
        "{} multihome install: {line}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
}

/// Writes `bytes` to `path` atomically, unless it already holds exactly them. Returns whether
/// it wrote.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        // Closed before it takes the name: an exec of an executable that is still open for
        // writing fails with "text file busy", so a runtime starting the binary the instant
        // it appears would fail a pod start.
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        coded(Code::Io, format!("writing {}: {e}", path.display()))
    })?;
    Ok(true)
}

fn copy_binary(bin_dir: &Path) -> Result<()> {
    let me = std::env::current_exe().context("finding this binary")?;
    let bytes = fs::read(&me).with_context(|| format!("reading {}", me.display()))?;
    let dest = bin_dir.join("multihome");
    if write_atomic(&dest, &bytes, 0o755)? {
        log(&format!("copied {} to {}", me.display(), dest.display()));
    } else {
        log(&format!("{} is up to date", dest.display()));
    }
    Ok(())
}

/// The directory where the kubeconfig, token and CA are written (as mounted).
fn kube_dir(args: &Args) -> PathBuf {
    let sub = args
        .multus_kubeconfig_file_host
        .parent()
        .and_then(|p| p.file_name())
        .map(PathBuf::from)
        .unwrap_or_else(|| "multus.d".into());
    args.cni_conf_dir.join(sub)
}

/// The kubeconfig from the service account: the API from `KUBERNETES_SERVICE_HOST`/`_PORT`, the
/// token and CA copied beside it (0600, in a 0700 directory) and named by relative paths.
fn write_kubeconfig(args: &Args) -> Result<()> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(host), Some(port)) = (
        get("KUBERNETES_SERVICE_HOST"),
        get("KUBERNETES_SERVICE_PORT"),
    ) else {
        log("not in a cluster (no KUBERNETES_SERVICE_HOST/PORT): no kubeconfig written");
        return Ok(());
    };
    let sa = &args.service_account_dir;
    let token = fs::read(sa.join("token"))
        .with_context(|| format!("reading {}", sa.join("token").display()))?;
    let ca = fs::read(sa.join("ca.crt"))
        .with_context(|| format!("reading {}", sa.join("ca.crt").display()))?;
    let dir = kube_dir(args);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // Only when needed: a chmod is an IN_ATTRIB event in the watched conf dir, and a pass that
    // always made one would wake the watch for ever.
    let loose = fs::metadata(&dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .permissions()
        .mode()
        & 0o077
        != 0;
    if loose {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let name = args
        .multus_kubeconfig_file_host
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| "multus.kubeconfig".into());
    let kubeconfig = format!(
        "# Written by multihome install; the token and CA beside it are kept current.\napiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority: ca.crt\nusers:\n- name: multihome\n  user:\n    tokenFile: token\ncontexts:\n- name: multihome\n  context:\n    cluster: local\n    user: multihome\ncurrent-context: multihome\n"
    );
    for (file, bytes) in [("token", &token), ("ca.crt", &ca)] {
        if write_atomic(&dir.join(file), bytes, 0o600)? {
            log(&format!("wrote {}", dir.join(file).display()));
        }
    }
    if write_atomic(&dir.join(&name), kubeconfig.as_bytes(), 0o600)? {
        log(&format!("wrote {}", dir.join(&name).display()));
    }
    Ok(())
}

/// Waits for the primary CNI config and generates multihome's from it; returns its path.
fn generate(args: &Args) -> Result<PathBuf> {
    if args.multus_conf_file != "auto" {
        let src = Path::new(&args.multus_conf_file);
        let bytes = fs::read(src)
            .with_context(|| format!("reading --multus-conf-file {}", src.display()))?;
        let dest = args.cni_conf_dir.join(src.file_name().unwrap_or_default());
        if write_atomic(&dest, &bytes, 0o600)? {
            log(&format!("copied {} to {}", src.display(), dest.display()));
        }
        return Ok(dest);
    }
    let dir = args
        .multus_autoconfig_dir
        .clone()
        .unwrap_or_else(|| args.cni_conf_dir.clone());
    let start = Instant::now();
    let mut said = false;
    let primary = loop {
        if let Some(p) = find_primary(args, &dir)? {
            break p;
        }
        if start.elapsed() >= Duration::from_secs(args.primary_timeout) {
            return Err(coded(
                Code::TryAgainLater,
                format!(
                    "no primary CNI config (.conf or .conflist) appeared in {} within {}s",
                    dir.display(),
                    args.primary_timeout
                ),
            ));
        }
        if !said {
            log(&format!(
                "waiting for a primary CNI config in {}",
                dir.display()
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (bytes, name) = render(args, &primary)?;
    let dest = args.cni_conf_dir.join(name);
    // A config of the other extension left by an earlier primary version would come first.
    for other in [".conf", ".conflist"] {
        let stale = args.cni_conf_dir.join(format!("{OWN_STEM}{other}"));
        if stale != dest && stale.exists() {
            fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    if write_atomic(&dest, &bytes, 0o600)? {
        log(&format!(
            "wrote {} from {}",
            dest.display(),
            primary.display()
        ));
    } else {
        log(&format!("{} is up to date", dest.display()));
    }
    Ok(dest)
}

/// The primary: the named file, or the alphabetically first `.conf`/`.conflist` that is not
/// ours and not another meta-plugin's.
fn find_primary(args: &Args, dir: &Path) -> Result<Option<PathBuf>> {
    if !args.multus_master_cni_file_name.is_empty() {
        let p = dir.join(&args.multus_master_cni_file_name);
        return Ok(p.exists().then_some(p));
    }
    let Ok(files) = config_files(dir) else {
        return Ok(None);
    };
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(OWN_STEM) || name.ends_with(".json") {
            continue;
        }
        let text = fs::read(&f).unwrap_or_default();
        let value: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        let meta = |v: &Value| {
            matches!(
                v.get("type").and_then(Value::as_str),
                Some("multus" | "multus-shim" | "multihome")
            )
        };
        if meta(&value)
            || value
                .get("plugins")
                .and_then(Value::as_array)
                .is_some_and(|p| p.iter().any(meta))
        {
            log(&format!(
                "skipping {}: a meta-plugin's config, not a primary",
                f.display()
            ));
            continue;
        }
        return Ok(Some(f));
    }
    Ok(None)
}

/// multihome's config for `primary`, and its file name.
fn render(args: &Args, primary: &Path) -> Result<(Vec<u8>, String)> {
    let bytes =
        fs::read(primary).with_context(|| format!("reading primary {}", primary.display()))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        coded(
            Code::Decode,
            format!(
                "primary CNI config {} is not valid JSON: {e}",
                primary.display()
            ),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(coded(
            Code::InvalidConfig,
            format!(
                "primary CNI config {} is not a JSON object",
                primary.display()
            ),
        ));
    };
    let theirs = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if theirs.is_empty() {
        return Err(coded(
            Code::InvalidConfig,
            format!("primary CNI config {} has no cniVersion", primary.display()),
        ));
    }
    let version = match args.cni_version.as_str() {
        "" => theirs,
        v if v == theirs || args.force_cni_version => v.to_string(),
        v => {
            return Err(coded(
                Code::IncompatibleVersion,
                format!(
                    "--cni-version {v} differs from {theirs} of the primary {}; pass --force-cni-version to use it anyway",
                    primary.display()
                ),
            ));
        }
    };
    let parsed = crate::cni::version::Version::parse_supported(&version)
        .with_context(|| format!("cniVersion of {}", primary.display()))?;
    let mut capabilities = Map::new();
    let plugins: Vec<&Value> = match obj.get("plugins").and_then(Value::as_array) {
        Some(p) => p.iter().collect(),
        None => vec![&value],
    };
    for p in plugins {
        for (k, v) in p
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if v.as_bool() == Some(true) {
                capabilities.insert(k.clone(), json!(true));
            }
        }
    }
    let mut plugin = json!({
        "type": "multihome",
        "kubeconfig": args.multus_kubeconfig_file_host,
        "logToStderr": false,
    });
    // The host's path of the conf dir is known only when given: the same default as Multus's
    // would name a file that does not exist on k3s, RKE2 or microk8s. Without it, the primary
    // travels inside the config, which the watch rewrites whenever the primary changes.
    match &args.cni_conf_dir_host {
        Some(host) => {
            plugin["clusterNetwork"] = json!(host.join(primary.file_name().unwrap_or_default()));
        }
        None => plugin["delegates"] = json!([value.clone()]),
    }
    if !capabilities.is_empty() {
        plugin["capabilities"] = Value::Object(capabilities);
    }
    for (key, value) in [
        ("globalNamespaces", &args.global_namespaces),
        ("logLevel", &args.multus_log_level),
        ("logFile", &args.multus_log_file),
        ("readinessindicatorfile", &args.readiness_indicator_file),
        ("binDir", &args.additional_bin_dir),
    ] {
        if !value.is_empty() {
            plugin[key] = json!(value);
        }
    }
    if args.namespace_isolation {
        plugin["namespaceIsolation"] = json!(true);
    }
    if let Some(file) = &args.nad_policy {
        let text =
            fs::read(file).with_context(|| format!("reading --nad-policy {}", file.display()))?;
        let policy: Value = serde_json::from_slice(&text).map_err(|e| {
            coded(
                Code::Decode,
                format!("--nad-policy {}: not valid JSON: {e}", file.display()),
            )
        })?;
        serde_json::from_value::<Vec<crate::policy::Rule>>(policy.clone()).map_err(|e| {
            coded(
                Code::InvalidConfig,
                format!("--nad-policy {}: {e}", file.display()),
            )
        })?;
        plugin["nadPolicy"] = policy;
    }
    let (doc, ext) = if parsed >= crate::cni::version::Version::new(1, 0, 0) {
        (
            json!({"cniVersion": version, "name": NETWORK_NAME, "plugins": [plugin]}),
            "conflist",
        )
    } else {
        plugin["cniVersion"] = json!(version);
        plugin["name"] = json!(NETWORK_NAME);
        (plugin, "conf")
    };
    let mut text = serde_json::to_vec_pretty(&doc).context("encoding the config")?;
    text.push(b'\n');
    Ok((text, format!("{OWN_STEM}.{ext}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>> {
        Args::parse(&mut Parser::from_args(args.iter().copied()))
    }

    #[test]
    fn multus_daemonset_arguments_carry_over_in_both_forms() {
        let a = parse(&[
            "--cni-conf-dir=/h/net.d",
            "--cni-bin-dir",
            "/h/bin",
            "--multus-conf-file=auto",
            "--namespace-isolation=true",
            "--global-namespaces=default,kube-system",
            "--multus-log-level",
            "verbose",
            "--cleanup-config-on-exit",
            "--skip-multus-binary-copy=false",
            "--primary-timeout=5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.cni_conf_dir, Path::new("/h/net.d"));
        assert_eq!(a.cni_bin_dir, Path::new("/h/bin"));
        assert!(a.namespace_isolation && a.cleanup_config_on_exit);
        assert!(!a.skip_multus_binary_copy && !a.once && !a.skip_config_watch);
        assert_eq!(a.global_namespaces, "default,kube-system");
        assert_eq!(a.multus_log_level, "verbose");
        assert_eq!(a.primary_timeout, 5);
        // What was not given keeps Multus's defaults.
        assert_eq!(a.multus_conf_file, "auto");
        assert_eq!(a.cni_conf_dir_host, None);
        assert_eq!(
            a.multus_kubeconfig_file_host,
            Path::new("/etc/cni/net.d/multus.d/multus.kubeconfig")
        );
        assert_eq!(a.multus_autoconfig_dir, None);
    }

    #[test]
    fn bad_arguments_name_the_option() {
        let err = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert_eq!(err(&["--multus-conf"]), "invalid option '--multus-conf'");
        assert_eq!(
            err(&["--once=maybe"]),
            "--once=maybe: expected true or false"
        );
        assert_eq!(
            err(&["--cni-bin-dir"]),
            "missing argument for option '--cni-bin-dir'"
        );
        assert_eq!(err(&["extra"]), "unexpected argument \"extra\"");
        assert!(parse(&["--help"]).unwrap().is_none());
    }
}
