//! The pod's default routes when a selection element carries `default-route` (network spec
//! 4.1.2.1.9).
//!
//! Every delegate adds what it adds (the reference plugins append default routes, so several
//! can coexist); once all attachments are added, [`settle`] makes the requesting attachment
//! carry the default route of each family it asks for, and [`rewrite_results`] makes the
//! recorded results (returned, cached, reported) say what the kernel then has.

use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::cache::Record;
use crate::cni::result::set_default_routes;
use crate::netlink;
use crate::netns::NetNs;
use crate::plan::default_route_changes;

/// A default route as it is in the end: family, next hop, and the interface it leaves by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface name.
    pub ifname: Option<String>,
}

/// The unspecified address of a family: with prefix 0, the default destination.
fn any(v4: bool) -> IpAddr {
    if v4 {
        [0u8; 4].into()
    } else {
        [0u16; 8].into()
    }
}

/// Makes `ifname` carry the requested default routes (see [`default_route_changes`]) and returns
/// the namespace's default routes as they end up.
pub fn settle(netns: &NetNs, ifname: &str, request: &[IpAddr]) -> Result<Vec<Final>> {
    netns
        .with_netlink(|h| async move {
            let links = netlink::links(&h).await?;
            let index = links
                .iter()
                .find(|l| l.name == ifname)
                .map(|l| l.index)
                .with_context(|| format!("interface {ifname} is not in the pod namespace"))?;
            let current = netlink::default_routes(&h).await?;
            let view: Vec<_> = current.iter().map(|r| (r.v4, r.gateway, r.oif)).collect();
            let (delete, add) = default_route_changes(&view, index, request);
            for i in delete {
                netlink::del_route(&h, &current[i]).await?;
            }
            for gw in add {
                netlink::add_route(&h, index, any(gw.is_ipv4()), 0, Some(gw)).await?;
            }
            let name_of = |oif: Option<u32>| {
                oif.and_then(|i| links.iter().find(|l| l.index == i))
                    .map(|l| l.name.clone())
            };
            Ok(netlink::default_routes(&h)
                .await?
                .into_iter()
                .map(|r| Final {
                    v4: r.v4,
                    gateway: r.gateway,
                    ifname: name_of(r.oif),
                })
                .collect())
        })
        .with_context(|| format!("making {ifname} carry the default route"))
}

/// Makes every recorded result list, for each family `ifname` carries a default route of, the
/// default routes that really leave by that attachment's interface. Other families were left
/// as the delegates made them, and so are their results.
pub fn rewrite_results(record: &mut Record, ifname: &str, routes: &[Final]) -> Result<()> {
    for v4 in [true, false] {
        if !routes
            .iter()
            .any(|r| r.v4 == v4 && r.ifname.as_deref() == Some(ifname))
        {
            continue;
        }
        for a in &mut record.attachments {
            let version = a.attachment.network.cni_version;
            let gws: Vec<Option<IpAddr>> = routes
                .iter()
                .filter(|r| r.v4 == v4 && r.ifname.as_deref() == Some(a.attachment.ifname.as_str()))
                .map(|r| r.gateway)
                .collect();
            if let Some(result) = a.result.as_mut() {
                set_default_routes(result, version, v4, &gws)?;
            }
        }
    }
    Ok(())
}
