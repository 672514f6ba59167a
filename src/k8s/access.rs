//! How to reach the API server: from a kubeconfig file (YAML or JSON) or, without one, from the
//! in-cluster service-account environment. Credentials are read on every invocation, so a
//! rotated token file keeps working.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde::Deserialize;

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

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: KubeContext,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: String,
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
            coded(
                Code::InvalidConfig,
                format!("kubeconfig {}: no {what} named {name:?}", path.display()),
            )
        })
}

/// Reads a file or inline base64 data, whichever the kubeconfig gives; relative paths are
/// relative to the kubeconfig's directory, as kubectl resolves them.
fn material(
    base: &Path,
    file: Option<&PathBuf>,
    data: Option<&String>,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| {
                coded(
                    Code::InvalidConfig,
                    format!("kubeconfig {what}-data is not base64: {e}"),
                )
            })?;
        return Ok(Some(bytes));
    }
    match file.filter(|f| !f.as_os_str().is_empty()) {
        Some(f) => {
            let path = base.join(f);
            Ok(Some(std::fs::read(&path).with_context(|| {
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
        let kc: Kubeconfig = serde_yaml_ng::from_str(&text).map_err(|e| {
            coded(
                Code::InvalidConfig,
                format!("kubeconfig {}: {e}", path.display()),
            )
        })?;
        let context_name = if kc.current_context.is_empty() && kc.contexts.len() == 1 {
            kc.contexts[0].name.clone()
        } else {
            kc.current_context.clone()
        };
        let base = path.parent().unwrap_or(Path::new("/"));
        let (cluster, user) = if context_name.is_empty() && kc.clusters.len() == 1 {
            let cluster = kc
                .clusters
                .into_iter()
                .next()
                .map(|c| c.cluster)
                .unwrap_or_default();
            let user = kc
                .users
                .into_iter()
                .next()
                .map(|u| u.user)
                .unwrap_or_default();
            (cluster, user)
        } else {
            let ctx = pick(
                kc.contexts.into_iter().map(|c| (c.name, c.context)),
                &context_name,
                "context",
                path,
            )?;
            let cluster = pick(
                kc.clusters.into_iter().map(|c| (c.name, c.cluster)),
                &ctx.cluster,
                "cluster",
                path,
            )?;
            let user = if ctx.user.is_empty() {
                User::default()
            } else {
                pick(
                    kc.users.into_iter().map(|u| (u.name, u.user)),
                    &ctx.user,
                    "user",
                    path,
                )?
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
            (_, Some(f)) => Some(read_token(&base.join(f))?),
            _ => None,
        };
        Ok(Access {
            server: cluster.server.trim_end_matches('/').to_string(),
            ca_pem: material(
                base,
                cluster.certificate_authority.as_ref(),
                cluster.certificate_authority_data.as_ref(),
                "certificate-authority",
            )?,
            insecure: cluster.insecure_skip_tls_verify,
            client_cert_pem: material(
                base,
                user.client_certificate.as_ref(),
                user.client_certificate_data.as_ref(),
                "client-certificate",
            )?,
            client_key_pem: material(
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
                "no context named \"nope\"",
            ),
            (
                "clusters: [{name: c, cluster: {server: ''}}]\n",
                "no server",
            ),
            (
                "clusters: [{name: c, cluster: {server: 'https://x', certificate-authority-data: '!!'}}]\n",
                "not base64",
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
