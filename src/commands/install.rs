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

use crate::config::config_files;
use crate::error::{Code, coded};

/// The generated config's network name, as Multus names its own.
const NETWORK_NAME: &str = "multus-cni-network";
/// The generated config's file name (without extension).
const OWN_STEM: &str = "00-multihome";

fn flag(s: &str) -> std::result::Result<bool, String> {
    match s {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// `install`'s arguments: Multus's entrypoint flags, and a few of multihome's own.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the generated config goes (the host's CNI conf dir, as mounted)
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub(super) cni_conf_dir: PathBuf,
    /// Where the binary is copied (the host's CNI bin dir, as mounted)
    #[arg(long, default_value = "/host/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// `auto` generates the config from the primary one; a path is copied as it is
    #[arg(long, default_value = "auto")]
    multus_conf_file: String,
    /// Where the primary CNI config is looked for [default: --cni-conf-dir]
    #[arg(long)]
    pub(super) multus_autoconfig_dir: Option<PathBuf>,
    /// The kubeconfig's path on the host, named in the generated config
    #[arg(long, default_value = "/etc/cni/net.d/multus.d/multus.kubeconfig")]
    multus_kubeconfig_file_host: PathBuf,
    /// The primary CNI config's file name [default: the alphabetically first]
    #[arg(long, default_value = "")]
    multus_master_cni_file_name: String,
    /// namespaceIsolation in the generated config
    #[arg(long, default_value = "false", default_missing_value = "true", num_args = 0..=1, value_parser = flag)]
    namespace_isolation: bool,
    /// globalNamespaces in the generated config
    #[arg(long, default_value = "")]
    global_namespaces: String,
    /// logLevel in the generated config
    #[arg(long, default_value = "")]
    multus_log_level: String,
    /// logFile in the generated config
    #[arg(long, default_value = "")]
    multus_log_file: String,
    /// readinessindicatorfile in the generated config
    #[arg(long, default_value = "")]
    readiness_indicator_file: String,
    /// binDir in the generated config
    #[arg(long, default_value = "")]
    additional_bin_dir: String,
    /// The cniVersion of the generated config; must be the primary's unless forced
    #[arg(long, default_value = "")]
    cni_version: String,
    /// Use --cni-version even when the primary's differs
    #[arg(long, default_value = "false", default_missing_value = "true", num_args = 0..=1, value_parser = flag)]
    force_cni_version: bool,
    /// Do not copy the binary
    #[arg(long, default_value = "false", default_missing_value = "true", num_args = 0..=1, value_parser = flag)]
    skip_multus_binary_copy: bool,
    /// Remove the generated config on exit (Multus's behaviour); by default it stays, so that
    /// no pod starts without multihome during a rolling upgrade
    #[arg(long, default_value = "false", default_missing_value = "true", num_args = 0..=1, value_parser = flag)]
    pub(super) cleanup_config_on_exit: bool,
    /// Do not watch the primary config and the service account after installing
    #[arg(long, default_value = "false", default_missing_value = "true", num_args = 0..=1, value_parser = flag)]
    pub(super) skip_config_watch: bool,
    /// Install once and exit (an init container)
    #[arg(long)]
    once: bool,
    /// The host's path of --cni-conf-dir, for clusterNetwork in the generated config
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir_host: PathBuf,
    /// The pod's service-account directory (token, ca.crt)
    #[arg(long, default_value = crate::k8s::access::SERVICE_ACCOUNT_DIR)]
    pub(super) service_account_dir: PathBuf,
    /// nadPolicy in the generated config, from this JSON file (see README, "Security")
    #[arg(long, value_name = "FILE")]
    nad_policy: Option<PathBuf>,
    /// How long to wait for a primary CNI config before giving up, in seconds
    #[arg(long, default_value = "120")]
    primary_timeout: u64,
}

/// Installs; then keeps the files current unless `--once` or `--skip-config-watch`.
pub fn install(args: Args) -> Result<ExitCode> {
    // A SIGTERM during the first install waits for it to finish, then ends the watch.
    let signals = if args.once {
        None
    } else {
        Some(super::install_watch::block_signals()?)
    };
    if !args.skip_multus_binary_copy {
        copy_binary(&args.cni_bin_dir)?;
    }
    write_kubeconfig(&args)?;
    let config = generate(&args)?;
    let Some(signals) = signals else {
        return Ok(ExitCode::SUCCESS);
    };
    super::install_watch::watch(&args, &config, signals)?;
    if args.cleanup_config_on_exit {
        match fs::remove_file(&config) {
            Ok(()) => log(&format!("removed {}", config.display())),
            Err(e) => log(&format!("removing {}: {e}", config.display())),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per action, to stderr.
pub(super) fn log(line: &str) {
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
pub(super) fn write_kubeconfig(args: &Args) -> Result<()> {
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
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
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
pub(super) fn generate(args: &Args) -> Result<PathBuf> {
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
    let name = primary.file_name().unwrap_or_default();
    let mut plugin = json!({
        "type": "multihome",
        "clusterNetwork": args.cni_conf_dir_host.join(name),
        "kubeconfig": args.multus_kubeconfig_file_host,
        "logToStderr": false,
    });
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
