//! Each node on a host of its own, and links between them the nemesis can cut. Two ways, one
//! interface:
//!
//! - [`Mode::Netns`] (root): one network namespace per node, joined to a bridge by a veth pair,
//!   each with its own 10.x.y.z address; a cut is an nftables drop rule inside both ends'
//!   namespaces (packets vanish, as on a real network).
//! - [`Mode::Proxy`] (no root needed): each node listens on its own loopback address
//!   (127.x.y.(10+id)) and is reached through a TCP proxy in this process. Nodes send from their
//!   listen address, so the proxy knows which link a connection belongs to; a cut link stops
//!   forwarding (bytes are held, not dropped, as TCP would retransmit them) until it heals.
//!
//! The harness itself is never cut: it reaches the nodes from the host (netns) or from
//! 127.0.0.1 (proxy).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{command}: {message} (network namespaces need root, `ip` and `nft`; try --net proxy)")]
    Command { command: String, message: String },
    #[error("proxy: {0}")]
    Io(#[from] std::io::Error),
    #[error("links cannot be cut with --net direct")]
    CannotCut,
}

/// How nodes get hosts of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Netns,
    Proxy,
    /// Plain loopback ports, nothing in between and nothing to cut (for benchmarks).
    Direct,
}

impl Mode {
    /// Namespaces when running as root, the proxy otherwise.
    pub fn auto() -> Mode {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
            .unwrap_or(false);
        if root { Mode::Netns } else { Mode::Proxy }
    }

    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::auto()),
            "netns" => Ok(Mode::Netns),
            "proxy" => Ok(Mode::Proxy),
            "direct" => Ok(Mode::Direct),
            other => Err(format!("unknown --net {other:?} (auto, netns, proxy, direct)")),
        }
    }
}

/// Where one node listens and where the others (and clients) reach it.
#[derive(Clone, Debug)]
pub struct Host {
    pub listen: String,
    pub advertise: String,
}

/// The run's network: created before the nodes start, torn down when dropped.
pub struct Net {
    hosts: BTreeMap<u64, Host>,
    kind: Kind,
}

enum Kind {
    Netns(Netns),
    Proxy(Proxy),
    Direct,
}

/// A loopback address with a port nothing listens on right now, below the kernel's ephemeral
/// range (32768 and up): a port the kernel hands out may be taken by any outgoing connection
/// before the node binds it, one from here only by another listener.
pub fn free_loopback_addr() -> std::io::Result<std::net::SocketAddr> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..22_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + std::process::id() * 97;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", 10_000 + (n % 22_000) as u16)) {
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The port every node listens on inside its namespace (each has its own address).
const NETNS_PORT: u16 = 7000;

impl Net {
    /// Hosts for nodes `1..=n`.
    pub async fn new(mode: Mode, n: u64) -> Result<Net, NetError> {
        match mode {
            Mode::Netns => {
                let netns = Netns::create(n)?;
                let hosts = (1..=n)
                    .map(|id| {
                        let addr = format!("{}:{NETNS_PORT}", netns.ip(id));
                        (id, Host { listen: addr.clone(), advertise: addr })
                    })
                    .collect();
                Ok(Net { hosts, kind: Kind::Netns(netns) })
            }
            Mode::Proxy => {
                let (proxy, hosts) = Proxy::start(n).await?;
                Ok(Net { hosts, kind: Kind::Proxy(proxy) })
            }
            Mode::Direct => {
                let mut hosts = BTreeMap::new();
                for id in 1..=n {
                    let addr = free_loopback_addr()?.to_string();
                    hosts.insert(id, Host { listen: addr.clone(), advertise: addr });
                }
                Ok(Net { hosts, kind: Kind::Direct })
            }
        }
    }

    pub fn mode(&self) -> Mode {
        match self.kind {
            Kind::Netns(_) => Mode::Netns,
            Kind::Proxy(_) => Mode::Proxy,
            Kind::Direct => Mode::Direct,
        }
    }

    pub fn hosts(&self) -> &BTreeMap<u64, Host> {
        &self.hosts
    }

    /// A command that runs `program` on node `id`'s host.
    pub fn command(&self, id: u64, program: &std::path::Path) -> Command {
        match &self.kind {
            Kind::Netns(netns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &netns.ns(id)]).arg(program);
                cmd
            }
            Kind::Proxy(_) | Kind::Direct => Command::new(program),
        }
    }

    /// Cuts traffic both ways between every node of `a` and every node of `b`.
    pub fn cut(&self, a: &[u64], b: &[u64]) -> Result<(), NetError> {
        let links: Vec<(u64, u64)> = a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))).collect();
        match &self.kind {
            Kind::Netns(netns) => {
                for (x, y) in links {
                    netns.drop_from(x, y)?;
                    netns.drop_from(y, x)?;
                }
                Ok(())
            }
            Kind::Proxy(proxy) => {
                proxy.cuts.send_modify(|cuts| {
                    for (x, y) in links {
                        cuts.insert((x, y));
                        cuts.insert((y, x));
                    }
                });
                Ok(())
            }
            Kind::Direct => Err(NetError::CannotCut),
        }
    }

    /// Every link restored.
    pub fn heal(&self) -> Result<(), NetError> {
        match &self.kind {
            Kind::Netns(netns) => netns.heal(),
            Kind::Proxy(proxy) => {
                proxy.cuts.send_modify(|cuts| cuts.clear());
                Ok(())
            }
            Kind::Direct => Ok(()),
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetError::Command { command: command.clone(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command { command, message: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// Namespaces `gj<pid>n<id>` on bridge `gj<pid>br`, subnet 10.a.b.0/24 derived from the pid so
/// concurrent runs never share names or addresses.
struct Netns {
    tag: String,
    subnet: String,
    nodes: u64,
}

impl Netns {
    fn create(n: u64) -> Result<Netns, NetError> {
        let pid = std::process::id();
        let netns =
            Netns { tag: format!("gj{pid}"), subnet: format!("10.{}.{}", 64 + (pid >> 8) % 128, pid % 256), nodes: n };
        // Leftovers of a crashed run with the same pid would clash: start clean.
        netns.remove();
        let bridge = netns.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}.1/24", netns.subnet), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for id in 1..=n {
            let (ns, host_end, node_end) = (netns.ns(id), format!("{}h{id}", netns.tag), format!("{}p{id}", netns.tag));
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &node_end, "netns", &ns])?;
            run("ip", &["link", "set", &host_end, "master", &bridge, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{}/24", netns.ip(id)), "dev", &node_end])?;
            run("ip", &["-n", &ns, "link", "set", &node_end, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run("ip", &["netns", "exec", &ns, "nft", "add", "table", "inet", "gavel"])?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    "gavel",
                    "cuts",
                    "{ type filter hook input priority 0 ; policy accept ; }",
                ],
            )?;
        }
        Ok(netns)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, id: u64) -> String {
        format!("{}n{id}", self.tag)
    }

    fn ip(&self, id: u64) -> String {
        format!("{}.{}", self.subnet, 10 + id)
    }

    /// Node `at` drops everything node `from` sends it.
    fn drop_from(&self, at: u64, from: u64) -> Result<(), NetError> {
        let ns = self.ns(at);
        let from_ip = self.ip(from);
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "add", "rule", "inet", "gavel", "cuts", "ip", "saddr", &from_ip, "drop"],
        )
    }

    fn heal(&self) -> Result<(), NetError> {
        for id in 1..=self.nodes {
            run("ip", &["netns", "exec", &self.ns(id), "nft", "flush", "chain", "inet", "gavel", "cuts"])?;
        }
        Ok(())
    }

    /// Deleting a namespace deletes its veth pair (and so the host end on the bridge).
    fn remove(&self) {
        for id in 1..=self.nodes {
            let _ = run("ip", &["netns", "delete", &self.ns(id)]);
        }
        let _ = run("ip", &["link", "delete", &self.bridge()]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One listener per node at its advertised address, forwarding to where the node listens.
struct Proxy {
    cuts: Arc<watch::Sender<BTreeSet<(u64, u64)>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The loopback /24 of this process (127.x.y), so concurrent runs never share addresses.
fn loopback_prefix() -> String {
    let pid = std::process::id();
    format!("127.{}.{}", 1 + (pid >> 8) % 250, 1 + pid % 250)
}

impl Proxy {
    async fn start(n: u64) -> Result<(Proxy, BTreeMap<u64, Host>), NetError> {
        let prefix = loopback_prefix();
        let cuts = Arc::new(watch::Sender::new(BTreeSet::new()));
        let mut sources = BTreeMap::new();
        let mut listeners = Vec::new();
        let mut hosts = BTreeMap::new();
        for id in 1..=n {
            let ip = format!("{prefix}.{}", 10 + id);
            let front = TcpListener::bind(format!("{ip}:0")).await?;
            // Reserve a port for the node, then free it for the node to bind.
            let back = std::net::TcpListener::bind(format!("{ip}:0"))?.local_addr()?;
            let ip_addr: IpAddr = back.ip();
            sources.insert(ip_addr, id);
            hosts.insert(id, Host { listen: back.to_string(), advertise: front.local_addr()?.to_string() });
            listeners.push((id, front, back));
        }
        let sources = Arc::new(sources);
        let tasks = listeners
            .into_iter()
            .map(|(id, front, back)| {
                let (cuts, sources) = (cuts.subscribe(), sources.clone());
                tokio::spawn(accept_loop(front, back, id, sources, cuts))
            })
            .collect();
        Ok((Proxy { cuts, tasks }, hosts))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept_loop(
    front: TcpListener,
    back: std::net::SocketAddr,
    to: u64,
    sources: Arc<BTreeMap<IpAddr, u64>>,
    cuts: watch::Receiver<BTreeSet<(u64, u64)>>,
) {
    loop {
        let Ok((conn, peer)) = front.accept().await else {
            // Out of file descriptors and the like: back off rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // Anything not from a node's address is a client: never cut.
        let link = sources.get(&peer.ip()).map(|from| (*from, to));
        let cuts = cuts.clone();
        tokio::spawn(async move {
            // Connections end all the time (nodes killed, restarted): nothing to report.
            let _ = forward(conn, back, link, cuts).await;
        });
    }
}

/// Waits until `link` is not cut; `Err` when the proxy is gone.
async fn open(cuts: &mut watch::Receiver<BTreeSet<(u64, u64)>>, link: Option<(u64, u64)>) -> std::io::Result<()> {
    let Some(link) = link else { return Ok(()) };
    cuts.wait_for(|c| !c.contains(&link)).await.map(|_| ()).map_err(|_| std::io::ErrorKind::BrokenPipe.into())
}

async fn forward(
    conn: TcpStream,
    back: std::net::SocketAddr,
    link: Option<(u64, u64)>,
    mut cuts: watch::Receiver<BTreeSet<(u64, u64)>>,
) -> std::io::Result<()> {
    // A connection attempted across a cut waits like a SYN that gets no answer.
    open(&mut cuts, link).await?;
    let upstream = TcpStream::connect(back).await?;
    conn.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (a_read, a_write) = conn.into_split();
    let (b_read, b_write) = upstream.into_split();
    let there = pump(a_read, b_write, link, cuts.clone());
    let back_again = pump(b_read, a_write, link, cuts);
    let (x, y) = tokio::join!(there, back_again);
    x.and(y)
}

/// Copies one direction, holding bytes while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Option<(u64, u64)>,
    mut cuts: watch::Receiver<BTreeSet<(u64, u64)>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        open(&mut cuts, link).await?;
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            // A cut while waiting for bytes: go back and wait for the heal (read is cancel-safe).
            _ = cuts.changed() => continue,
        };
        if n == 0 {
            return to.shutdown().await;
        }
        open(&mut cuts, link).await?;
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server(addr: &str) -> JoinHandle<()> {
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    }

    /// Connects to `to`'s advertised address from `from`'s address (as nodes do).
    async fn connect_as(net: &Net, from: u64, to: u64) -> TcpStream {
        let source: std::net::SocketAddr = net.hosts()[&from].listen.parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(source.ip(), 0)).unwrap();
        socket.connect(net.hosts()[&to].advertise.parse().unwrap()).await.unwrap()
    }

    async fn round_trip(conn: &mut TcpStream, within: Duration) -> bool {
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        matches!(tokio::time::timeout(within, conn.read_exact(&mut buf)).await, Ok(Ok(_)))
    }

    #[tokio::test]
    async fn the_proxy_holds_cut_links_and_releases_them_on_heal() {
        let net = Net::new(Mode::Proxy, 3).await.unwrap();
        let _server = echo_server(&net.hosts()[&1].listen).await;
        let mut from_2 = connect_as(&net, 2, 1).await;
        let mut from_3 = connect_as(&net, 3, 1).await;
        let mut client = TcpStream::connect(&net.hosts()[&1].advertise).await.unwrap();
        assert!(round_trip(&mut from_2, Duration::from_secs(5)).await);

        net.cut(&[1], &[2]).unwrap();
        assert!(!round_trip(&mut from_2, Duration::from_millis(300)).await, "a cut link must not deliver");
        assert!(round_trip(&mut from_3, Duration::from_secs(5)).await, "other links are untouched");
        assert!(round_trip(&mut client, Duration::from_secs(5)).await, "clients are never cut");

        net.heal().unwrap();
        // The held "ping" arrives after the heal, then the next one.
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), from_2.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"ping");
        assert!(round_trip(&mut from_2, Duration::from_secs(5)).await);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("proxy"), Ok(Mode::Proxy));
        assert_eq!(Mode::parse("netns"), Ok(Mode::Netns));
        assert!(Mode::parse("tc").is_err());
    }
}
