//! How to reach the API server: from a kubeconfig file (YAML or JSON) or, without one, from the
//! in-cluster service-account environment. Credentials are read on every invocation, so a
//! rotated token file keeps working.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::error::{Code, coded};

/// The service-account directory of in-cluster configuration.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Everything needed to talk to one API server as one user.
#[derive(Clone, Default)]
pub struct Access {
    /// `https://host:port`, without a trailing slash.
    pub server: String,
    /// PEM of the CA that signed the server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// Skip server certificate verification (`insecure-skip-tls-verify`).
    pub insecure: bool,
    /// PEM of the client certificate chain, for client-certificate authentication.
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM of the client key.
    pub client_key_pem: Option<Vec<u8>>,
    /// Bearer token.
    pub token: Option<String>,
    /// Override for the server name checked in its certificate (`tls-server-name`).
    pub tls_server_name: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.debug_struct("Access")
            .field("server", &self.server)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Default)]
struct User {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Default)]
struct KubeContext {
    cluster: String,
    user: String,
}

/// The parts of a kubeconfig multihome reads, in file order.
#[derive(Default)]
struct Kubeconfig {
    clusters: Vec<(String, Cluster)>,
    users: Vec<(String, User)>,
    contexts: Vec<(String, KubeContext)>,
    current_context: String,
}

/// Reads the kubeconfig's shape from its YAML. A wrong shape is an error naming the key and the
/// shape expected, never the value found: a token pasted in the wrong place must not end up in
/// an error object, which kubelet logs, nor in multihome's own logs.
struct Shape<'a> {
    file: &'a Path,
}

impl Shape<'_> {
    fn wrong(&self, at: &str, expected: &str) -> anyhow::Error {
        coded(
            Code::InvalidConfig,
            format!(
                "kubeconfig {}: {at} must be {expected}",
                self.file.display()
            ),
        )
    }

    /// A mapping; absent or `null` reads as an empty one, as kubectl reads it.
    fn map<'v>(&self, value: Option<&'v Yaml>, at: &str) -> Result<Option<&'v Mapping>> {
        match value {
            None | Some(Yaml::Null) => Ok(None),
            Some(Yaml::Mapping(m)) => Ok(Some(m)),
            Some(_) => Err(self.wrong(at, "a mapping")),
        }
    }

    fn string(&self, map: Option<&Mapping>, key: &str, at: &str) -> Result<Option<String>> {
        match map.and_then(|m| m.get(key)) {
            None | Some(Yaml::Null) => Ok(None),
            Some(Yaml::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(&format!("{at}.{key}"), "a string")),
        }
    }

    fn path(&self, map: Option<&Mapping>, key: &str, at: &str) -> Result<Option<PathBuf>> {
        Ok(self.string(map, key, at)?.map(PathBuf::from))
    }

    fn flag(&self, map: Option<&Mapping>, key: &str, at: &str) -> Result<bool> {
        match map.and_then(|m| m.get(key)) {
            None | Some(Yaml::Null) => Ok(false),
            Some(Yaml::Bool(b)) => Ok(*b),
            Some(_) => Err(self.wrong(&format!("{at}.{key}"), "true or false")),
        }
    }

    /// A list of `{name: ..., <inner>: {...}}` entries, each read by `read`.
    fn named<T>(
        &self,
        top: Option<&Mapping>,
        key: &str,
        inner: &str,
        read: impl Fn(Option<&Mapping>, &str) -> Result<T>,
    ) -> Result<Vec<(String, T)>> {
        let items = match top.and_then(|m| m.get(key)) {
            None | Some(Yaml::Null) => return Ok(Vec::new()),
            Some(Yaml::Sequence(items)) => items,
            Some(_) => return Err(self.wrong(key, "a list")),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{key}[{i}]");
                let entry = self.map(Some(item), &at)?;
                let name = self.string(entry, "name", &at)?.unwrap_or_default();
                let at = format!("{at}.{inner}");
                let body = self.map(entry.and_then(|e| e.get(inner)), &at)?;
                Ok((name, read(body, &at)?))
            })
            .collect()
    }

    fn kubeconfig(&self, text: &str) -> Result<Kubeconfig> {
        // The parser's own messages may quote the text; only the place is reported.
        let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| {
            let place = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            coded(
                Code::InvalidConfig,
                format!("kubeconfig {}: not valid YAML{place}", self.file.display()),
            )
        })?;
        let top = self.map(Some(&doc), "the document")?;
        Ok(Kubeconfig {
            clusters: self.named(top, "clusters", "cluster", |m, at| {
                Ok(Cluster {
                    server: self.string(m, "server", at)?.unwrap_or_default(),
                    certificate_authority: self.path(m, "certificate-authority", at)?,
                    certificate_authority_data: self.string(m, "certificate-authority-data", at)?,
                    insecure_skip_tls_verify: self.flag(m, "insecure-skip-tls-verify", at)?,
                    tls_server_name: self.string(m, "tls-server-name", at)?,
                })
            })?,
            users: self.named(top, "users", "user", |m, at| {
                Ok(User {
                    client_certificate: self.path(m, "client-certificate", at)?,
                    client_certificate_data: self.string(m, "client-certificate-data", at)?,
                    client_key: self.path(m, "client-key", at)?,
                    client_key_data: self.string(m, "client-key-data", at)?,
                    token: self.string(m, "token", at)?,
                    token_file: self.path(m, "tokenFile", at)?,
                })
            })?,
            contexts: self.named(top, "contexts", "context", |m, at| {
                Ok(KubeContext {
                    cluster: self.string(m, "cluster", at)?.unwrap_or_default(),
                    user: self.string(m, "user", at)?.unwrap_or_default(),
                })
            })?,
            current_context: self
                .string(top, "current-context", "the document")?
                .unwrap_or_default(),
        })
    }
}

fn pick<T>(
    items: impl IntoIterator<Item = (String, T)>,
    name: &str,
    what: &str,
    path: &Path,
) -> Result<T> {
    items
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, item)| item)
        .ok_or_else(|| {
            // A context's `user` may be a token pasted into the wrong field (found by the
            // kubeconfig fuzz target): that reference is never repeated.
            let named = if what == "user" {
                String::new()
            } else {
                format!(" named {name:?}")
            };
            coded(
                Code::InvalidConfig,
                format!(
                    "kubeconfig {}: the current context's {what}{named} is not defined in the file",
                    path.display()
                ),
            )
        })
}

/// Reads a file or inline base64 data, whichever the kubeconfig gives; relative paths are
/// relative to the kubeconfig's directory, as kubectl resolves them.
fn material(
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    base: &Path,
    file: Option<&PathBuf>,
    data: Option<&String>,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        // The decoder's message names the offending byte: say nothing of the data.
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| {
                coded(
                    Code::InvalidConfig,
                    format!("kubeconfig {what}-data is not valid base64"),
                )
            })?;
        return Ok(Some(bytes));
    }
    match file.filter(|f| !f.as_os_str().is_empty()) {
        Some(f) => {
            let path = base.join(f);
            Ok(Some(read(&path).with_context(|| {
                format!("reading kubeconfig {what} {}", path.display())
            })?))
        }
        None => Ok(None),
    }
}

impl Access {
    /// Reads a kubeconfig file and resolves its current context (or its only one).
    pub fn from_kubeconfig(path: &Path) -> Result<Access> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        Self::from_kubeconfig_text(&text, path, &|p| std::fs::read(p))
    }

    /// [`Access::from_kubeconfig`] of `text`, the contents of the kubeconfig at `path`, with the
    /// files it names read through `read` (the seam the fuzz target uses).
    pub fn from_kubeconfig_text(
        text: &str,
        path: &Path,
        read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Access> {
        let kc = Shape { file: path }.kubeconfig(text)?;
        let context_name = if kc.current_context.is_empty() && kc.contexts.len() == 1 {
            kc.contexts[0].0.clone()
        } else {
            kc.current_context.clone()
        };
        let base = path.parent().unwrap_or(Path::new("/"));
        let (cluster, user) = if context_name.is_empty() && kc.clusters.len() == 1 {
            let cluster = kc
                .clusters
                .into_iter()
                .next()
                .map(|c| c.1)
                .unwrap_or_default();
            let user = kc.users.into_iter().next().map(|u| u.1).unwrap_or_default();
            (cluster, user)
        } else {
            let ctx = pick(kc.contexts, &context_name, "context", path)?;
            let cluster = pick(kc.clusters, &ctx.cluster, "cluster", path)?;
            let user = if ctx.user.is_empty() {
                User::default()
            } else {
                pick(kc.users, &ctx.user, "user", path)?
            };
            (cluster, user)
        };
        if cluster.server.is_empty() {
            return Err(coded(
                Code::InvalidConfig,
                format!("kubeconfig {}: cluster has no server", path.display()),
            ));
        }
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(f)) => {
                let file = base.join(f);
                let bytes = read(&file)
                    .with_context(|| format!("reading token file {}", file.display()))?;
                Some(String::from_utf8_lossy(&bytes).trim().to_string())
            }
            _ => None,
        };
        Ok(Access {
            server: cluster.server.trim_end_matches('/').to_string(),
            ca_pem: material(
                read,
                base,
                cluster.certificate_authority.as_ref(),
                cluster.certificate_authority_data.as_ref(),
                "certificate-authority",
            )?,
            insecure: cluster.insecure_skip_tls_verify,
            client_cert_pem: material(
                read,
                base,
                user.client_certificate.as_ref(),
                user.client_certificate_data.as_ref(),
                "client-certificate",
            )?,
            client_key_pem: material(
                read,
                base,
                user.client_key.as_ref(),
                user.client_key_data.as_ref(),
                "client-key",
            )?,
            token,
            tls_server_name: cluster.tls_server_name.filter(|s| !s.is_empty()),
        })
    }

    /// In-cluster configuration, when `KUBERNETES_SERVICE_HOST`/`_PORT` are set: the service
    /// account's token and CA from `sa_dir`.
    pub fn in_cluster(
        get_env: impl Fn(&str) -> Option<String>,
        sa_dir: &Path,
    ) -> Result<Option<Access>> {
        let (Some(host), Some(port)) = (
            get_env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty()),
            get_env("KUBERNETES_SERVICE_PORT").filter(|p| !p.is_empty()),
        ) else {
            return Ok(None);
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let ca = sa_dir.join("ca.crt");
        Ok(Some(Access {
            server: format!("https://{host}:{port}"),
            ca_pem: Some(
                std::fs::read(&ca)
                    .with_context(|| format!("reading in-cluster CA {}", ca.display()))?,
            ),
            token: Some(read_token(&sa_dir.join("token"))?),
            ..Access::default()
        }))
    }
}

fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    Ok(token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mh-access-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn yaml_kubeconfig_with_inline_data_and_current_context() {
        let d = dir("yaml");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kc = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: node\nclusters:\n- name: other\n  cluster:\n    server: https://198.18.9.9\n- name: local\n  cluster:\n    server: https://127.0.0.1:6443/\n    certificate-authority-data: {}\n    tls-server-name: api.example\nusers:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: other\n  context: {{cluster: other, user: node}}\n- name: node\n  context:\n    cluster: local\n    user: node\n",
            b64("CA"),
            b64("CERT"),
            b64("KEY")
        );
        std::fs::write(d.join("kc.yaml"), kc).unwrap();
        let a = Access::from_kubeconfig(&d.join("kc.yaml")).unwrap();
        assert_eq!(a.server, "https://127.0.0.1:6443");
        assert_eq!(a.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(a.client_cert_pem.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(a.client_key_pem.as_deref(), Some(&b"KEY"[..]));
        assert_eq!(a.tls_server_name.as_deref(), Some("api.example"));
        assert!(a.token.is_none() && !a.insecure);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn json_kubeconfig_with_relative_files_and_token_file() {
        let d = dir("json");
        std::fs::write(d.join("ca.pem"), "CAFILE").unwrap();
        std::fs::write(d.join("token"), "tok-1\n").unwrap();
        let kc = r#"{"clusters":[{"name":"c","cluster":{"server":"https://k","certificate-authority":"ca.pem","insecure-skip-tls-verify":true}}],
                     "users":[{"name":"u","user":{"tokenFile":"token"}}],
                     "contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}]}"#;
        std::fs::write(d.join("kc.json"), kc).unwrap();
        let a = Access::from_kubeconfig(&d.join("kc.json")).unwrap();
        assert_eq!(a.ca_pem.as_deref(), Some(&b"CAFILE"[..]));
        assert_eq!(
            a.token.as_deref(),
            Some("tok-1"),
            "the only context is used without current-context"
        );
        assert!(a.insecure);
        std::fs::write(d.join("token"), "tok-2").unwrap();
        let a = Access::from_kubeconfig(&d.join("kc.json")).unwrap();
        assert_eq!(
            a.token.as_deref(),
            Some("tok-2"),
            "a rotated token is picked up"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn kubeconfig_errors_name_the_problem() {
        let d = dir("bad");
        let cases = [
            (
                "current-context: nope\ncontexts: []\nclusters: []\n",
                "context named \"nope\" is not defined",
            ),
            (
                "clusters: [{name: c, cluster: {server: ''}}]\n",
                "no server",
            ),
            (
                "clusters: [{name: c, cluster: {server: 'https://x', certificate-authority-data: '!!'}}]\n",
                "not valid base64",
            ),
            (
                "clusters: [{name: c, cluster: {server: 'https://x', certificate-authority: missing.pem}}]\n",
                "missing.pem",
            ),
            ("clusters: {", "kubeconfig"),
        ];
        for (text, fragment) in cases {
            std::fs::write(d.join("kc"), text).unwrap();
            let e = crate::error::CniError::from_anyhow(
                &Access::from_kubeconfig(&d.join("kc")).unwrap_err(),
            );
            assert!(e.msg.contains(fragment), "{text}: {}", e.msg);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn no_error_ever_quotes_a_secret_value_in_the_wrong_shape() {
        let d = dir("secret");
        let secret = "eyJhbGciOiJSUzI1NiJ9.SECRET-VALUE-1234";
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let cluster = "clusters: [{name: c, cluster: {server: 'https://x', insecure-skip-tls-verify: true}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n";
        let cases = [
            (
                format!("{cluster}users: [{{name: u, user: {secret}}}]\n"),
                "users[0].user must be a mapping",
            ),
            (
                format!("{cluster}users: {secret}\n"),
                "users must be a list",
            ),
            (
                format!("{cluster}users: [{secret}]\n"),
                "users[0] must be a mapping",
            ),
            (
                format!("{cluster}users: [{{name: u, user: {{token: [{secret}]}}}}]\n"),
                "users[0].user.token must be a string",
            ),
            (
                format!("{cluster}users: [{{name: u, user: {{token: {{t: {secret}}}}}}}]\n"),
                "users[0].user.token must be a string",
            ),
            (
                format!("{cluster}users: [{{name: u, user: {{client-key-data: [{b64}]}}}}]\n"),
                "client-key-data must be a string",
            ),
            (
                format!("{cluster}users: [{{name: u, user: {{client-key-data: '!{secret}'}}}}]\n"),
                "client-key-data is not valid base64",
            ),
            (
                format!(
                    "{cluster}users: [{{name: u, user: {{client-certificate-data: '%{secret}'}}}}]\n"
                ),
                "client-certificate-data is not valid base64",
            ),
            (
                format!("{cluster}users: [{{name: u, user: {{tokenFile: {{f: {secret}}}}}}}]\n"),
                "tokenFile must be a string",
            ),
            (
                format!(
                    "clusters: [{{name: c, cluster: {{server: 'https://x', certificate-authority-data: '*{secret}'}}}}]\n"
                ),
                "certificate-authority-data is not valid base64",
            ),
            (
                format!("clusters: [{{name: c, cluster: {secret}}}]\n"),
                "clusters[0].cluster must be a mapping",
            ),
            (
                format!("{cluster}users: [{{name: u, user: {{token: '{secret}'\n"),
                "not valid YAML",
            ),
            (format!("{secret}\n"), "the document must be a mapping"),
            (
                format!(
                    "{cluster}users: [{{name: u, user: {{token: {secret}}}}}]\ncurrent-context: [{secret}]\n"
                ),
                "current-context must be a string",
            ),
        ];
        for (text, fragment) in cases {
            std::fs::write(d.join("kc"), &text).unwrap();
            let e = crate::error::CniError::from_anyhow(
                &Access::from_kubeconfig(&d.join("kc")).unwrap_err(),
            );
            assert!(e.msg.contains(fragment), "{text}: {}", e.msg);
            assert!(
                !e.msg.contains("SECRET") && !e.details.contains("SECRET"),
                "{text}: {}",
                e.msg
            );
            assert!(!e.msg.contains(&b64[4..20]), "{text}: {}", e.msg);
            assert_eq!(e.code, 7);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn in_cluster_needs_both_env_vars_and_reads_the_service_account() {
        let d = dir("sa");
        std::fs::write(d.join("ca.crt"), "CA").unwrap();
        std::fs::write(d.join("token"), " t \n").unwrap();
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("2001:db8::cafe".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
            _ => None,
        };
        let a = Access::in_cluster(env, &d).unwrap().unwrap();
        assert_eq!(a.server, "https://[2001:db8::cafe]:443");
        assert_eq!(a.token.as_deref(), Some("t"));
        assert!(Access::in_cluster(|_| None, &d).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
