//! Link, address and route operations over rtnetlink. Each function takes the handle of a
//! socket bound to one namespace; [`crate::netns::NetNs::with_netlink`] provides it on a
//! dedicated thread inside that namespace. Nothing here runs `ip`.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// EEXIST as netlink reports it.
const EEXIST: i32 = -17;

/// Every rtnetlink error leaves this module through here. rtnetlink's own `Display` prints an
/// unexpected reply with `{:?}`, and handing it to anyhow would link the `Debug` code of every
/// netlink message type into the binary (about 0.3 MB) for a message nobody can act on.
fn lean(e: rtnetlink::Error) -> anyhow::Error {
    use rtnetlink::Error as E;
    match e {
        E::NetlinkError(m) => m.to_io().into(),
        E::UnexpectedMessage(m) => anyhow!(
            "unexpected netlink reply (message type {})",
            m.header.message_type
        ),
        E::RequestFailed => anyhow!("the netlink request failed"),
        E::NamespaceError(s) => anyhow!("namespace error: {s}"),
        E::InvalidHardwareAddress(a) => anyhow!("invalid hardware address {a:02x?}"),
        E::InvalidIp(a) => anyhow!("invalid IP address {a:?}"),
        E::InvalidAddress(ip, mask) => anyhow!("invalid address {ip:?}/{mask:?}"),
        E::InvalidNla(s) => anyhow!("invalid netlink attribute: {s}"),
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:..` (absent for links without one).
    pub mac: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Its kind (`veth`, `bridge`, `macvlan`, ...); `None` for a physical device.
    pub kind: Option<String>,
    /// Operational state (`up`, `down`, `lowerlayerdown`, ...).
    pub state: String,
    /// The index of the link it is enslaved to (a bridge, a bond).
    pub master: Option<u32>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            kind: None,
            state: "unknown".into(),
            master: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::OperState(s) => link.state = format!("{s:?}").to_lowercase(),
                LinkAttribute::Controller(i) => link.master = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    });
                }
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) if !a.is_empty() => {
                    link.mac = Some(
                        a.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    );
                }
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                _ => {}
            }
        }
        link
    }
}

/// Every link of the namespace.
pub async fn links(h: &Handle) -> Result<Vec<Link>> {
    let mut stream = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(lean)
        .context("listing links")?
    {
        out.push(Link::from_message(msg));
    }
    Ok(out)
}

/// Every address of the namespace: link index and address with prefix.
pub async fn addresses(h: &Handle) -> Result<Vec<(u32, IpNetwork)>> {
    let mut stream = h.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(lean)
        .context("listing addresses")?
    {
        // IFA_LOCAL is the address itself (IFA_ADDRESS is the peer on point-to-point links).
        let ip = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
            .or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
        if let Some(net) = ip.and_then(|ip| IpNetwork::new(ip, msg.header.prefix_len).ok()) {
            out.push((msg.header.index, net));
        }
    }
    Ok(out)
}

/// The link called `name`, if any.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>> {
    Ok(links(h).await?.into_iter().find(|l| l.name == name))
}

/// Brings a link up.
pub async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(lean)
        .context("setting link up")
}

/// Moves a link into the namespace of `target`, renamed to `name`, in one request. The link is
/// set down first: kernels before 6.2 refuse to rename an interface that is up.
pub async fn move_link(h: &Handle, index: u32, target: &File, name: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(lean)
        .context("setting link down")?;
    let msg = LinkUnspec::new_with_index(index)
        .setns_by_fd(target.as_raw_fd())
        .name(name)
        .build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(lean)
        .with_context(|| format!("moving link {index} to another namespace as {name}"))
}

/// Adds an address to a link.
pub async fn add_address(h: &Handle, index: u32, addr: IpNetwork) -> Result<()> {
    match h
        .address()
        .add(index, addr.ip(), addr.prefix())
        .execute()
        .await
    {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == EEXIST => Ok(()),
        other => other
            .map_err(lean)
            .with_context(|| format!("adding address {addr}")),
    }
}

/// Adds a route to `dst`/`prefix` through `index` (an existing identical route is fine).
pub async fn add_route(
    h: &Handle,
    index: u32,
    dst: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
) -> Result<()> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, prefix)
        .with_context(|| format!("route {dst}/{prefix}"))?
        .output_interface(index);
    if let Some(gw) = gateway {
        builder = builder
            .gateway(gw)
            .with_context(|| format!("route {dst} via {gw}"))?;
    }
    match h.route().add(builder.build()).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == EEXIST => Ok(()),
        other => {
            let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            other
                .map_err(lean)
                .with_context(|| format!("adding route {dst}/{prefix}{via} on link {index}"))
        }
    }
}

/// A default route of the main table.
#[derive(Debug, Clone)]
pub struct DefaultRoute {
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
    message: RouteMessage,
}

/// The unicast default routes (0.0.0.0/0 and ::/0) of the main table. The kernel ignores dump
/// filters without strict checking, so filtering happens here.
pub async fn default_routes(h: &Handle) -> Result<Vec<DefaultRoute>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessageBuilder::<IpAddr>::new().build();
        query.header.address_family = family;
        let mut stream = h.route().get(query).execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(lean)
            .context("listing routes")?
        {
            let table = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            let main = table.unwrap_or(u32::from(msg.header.table))
                == u32::from(RouteHeader::RT_TABLE_MAIN);
            if msg.header.destination_prefix_length != 0
                || !main
                || msg.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut route = DefaultRoute {
                v4: family == AddressFamily::Inet,
                gateway: None,
                oif: None,
                message: msg.clone(),
            };
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => {
                        route.gateway = Some(IpAddr::V4(*a))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => {
                        route.gateway = Some(IpAddr::V6(*a))
                    }
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(route);
        }
    }
    Ok(out)
}

/// Deletes a route as it was dumped (so protocol, scope and table match).
pub async fn del_route(h: &Handle, route: &DefaultRoute) -> Result<()> {
    h.route()
        .del(route.message.clone())
        .execute()
        .await
        .map_err(lean)
        .context("deleting a default route")
}
