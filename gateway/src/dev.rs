//! `gavel dev`: a local 3-node cluster (real Raft over loopback gRPC, RocksDB) and the gateway
//! in one process, with demo users and a live sale, all under one data directory. Running it
//! again resumes from that directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Command, LotStatus, Role};
use node::{Client, Node, NodeConfig};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::auth::{Passwords, random_bytes};
use crate::config::{GatewayConfig, HttpArgs};
use crate::feed::now_ms;
use crate::server::{ADMIN, Gateway};

#[derive(Args, Clone, Debug)]
pub struct DevArgs {
    /// Where the cluster's data and the demo credentials live.
    #[arg(long, env = "GAVEL_DEV_DIR", default_value = ".gavel-dev")]
    pub data_dir: PathBuf,
    /// The nodes listen on 127.0.0.1 at this port and the next two.
    #[arg(long, env = "GAVEL_DEV_GRPC_PORT_BASE", default_value_t = 7701)]
    pub grpc_port_base: u16,
    /// How long the demo sale runs (its first lot closes then; the others a minute apart).
    #[arg(long, env = "GAVEL_DEV_SALE_MINUTES", default_value_t = 60)]
    pub sale_minutes: u32,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("data directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("credentials file {0}: {1}")]
    Credentials(PathBuf, String),
    #[error("node {0}: {1}")]
    Node(u64, node::NodeError),
    #[error("gateway: {0}")]
    Gateway(#[from] crate::GatewayError),
    #[error("demo data: {0}")]
    Seed(String),
    #[error("shutdown: {0}")]
    Shutdown(String),
}

/// The demo logins, kept in the data directory so a restart prints the same ones.
#[derive(Serialize, Deserialize)]
struct Credentials {
    /// Hex; the token signing secret when `GAVEL_JWT_SECRET` is not set.
    jwt_secret: String,
    admin_password: String,
    users: Vec<DemoUser>,
}

#[derive(Clone, Serialize, Deserialize)]
struct DemoUser {
    user_id: String,
    username: String,
    password: String,
    role: String,
}

const NODE_COUNT: u64 = 3;
const SALE_ID: &str = "demo-evening-sale";
const CREDENTIALS_FILE: &str = "credentials.json";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_password() -> Result<String, DevError> {
    random_bytes::<9>().map(|b| hex(&b)).map_err(|e| DevError::Seed(e.to_string()))
}

/// Reads the credentials file, or makes and writes one (readable by its owner only).
fn credentials(dir: &Path, admin_password: Option<&str>) -> Result<Credentials, DevError> {
    let path = dir.join(CREDENTIALS_FILE);
    let err = |e: String| DevError::Credentials(path.clone(), e);
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        return serde_json::from_str(&text).map_err(|e| err(e.to_string()));
    }
    let user = |name: &str, role: &str| -> Result<DemoUser, DevError> {
        Ok(DemoUser {
            user_id: format!("u-{name}"),
            username: name.to_owned(),
            password: random_password()?,
            role: role.to_owned(),
        })
    };
    let credentials = Credentials {
        jwt_secret: hex(&random_bytes::<32>().map_err(|e| err(e.to_string()))?),
        admin_password: match admin_password {
            Some(p) => p.to_owned(),
            None => random_password()?,
        },
        users: vec![user("alice", "user")?, user("bob", "user")?, user("carol", "curator")?],
    };
    let text = serde_json::to_string_pretty(&credentials).map_err(|e| err(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| err(e.to_string()))?;
    Ok(credentials)
}

/// The jwt secret `gavel token --dev-dir` should use.
pub fn dev_jwt_secret(dir: &Path) -> Result<Vec<u8>, DevError> {
    let path = dir.join(CREDENTIALS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| DevError::Credentials(path.clone(), e.to_string()))?;
    let c: Credentials = serde_json::from_str(&text).map_err(|e| DevError::Credentials(path, e.to_string()))?;
    Ok(c.jwt_secret.into_bytes())
}

fn node_config(args: &DevArgs, id: u64) -> NodeConfig {
    let addr = |i: u64| format!("127.0.0.1:{}", u64::from(args.grpc_port_base) + i - 1);
    NodeConfig {
        id,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], args.grpc_port_base.saturating_add((id - 1) as u16))),
        advertise: addr(id),
        data_dir: args.data_dir.join(format!("node-{id}")),
        initial_members: (1..=NODE_COUNT).map(|i| (i, addr(i))).collect(),
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        snapshot_logs: 10_000,
        logs_kept_after_snapshot: 1_000,
        leader_snapshot_defer: node::limits::LEADER_SNAPSHOT_DEFER_INTERVALS,
        // Catalog, search and the fan-out follow the feed from index 0.
        feed_retention: node::FeedRetention::default(),
        clock_offset_ms: 0,
        unsafe_modes: node::UnsafeModes::default(),
    }
}

/// Runs until SIGINT or SIGTERM, then stops the gateway (finishing requests) and the nodes.
pub async fn run(args: DevArgs) -> Result<(), DevError> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| DevError::Dir(args.data_dir.clone(), e))?;
    let credentials = credentials(&args.data_dir, args.http.admin_password.as_deref())?;
    let mut nodes = Vec::new();
    for id in 1..=NODE_COUNT {
        nodes.push(Node::start(node_config(&args, id)).await.map_err(|e| DevError::Node(id, e))?);
    }
    let addrs: Vec<String> = (1..=NODE_COUNT).map(|id| node_config(&args, id).advertise).collect();
    let secret = args.http.jwt_secret.clone().unwrap_or_else(|| credentials.jwt_secret.clone()).into_bytes();
    let mut config = GatewayConfig::from_args(&args.http, addrs.clone(), secret);
    if args.http.catalog_dir.is_none() {
        config.catalog_dir = args.data_dir.join("catalog");
    }
    if let Some(search) = config.search.as_mut()
        && args.http.search_dir.is_none()
    {
        search.dir = args.data_dir.join("search");
    }
    if args.http.images.is_none() {
        config.images = args.data_dir.join("images").to_string_lossy().into_owned();
    }
    let admin_password = args.http.admin_password.clone().unwrap_or_else(|| credentials.admin_password.clone());
    config.admin_password = Some(admin_password.clone());
    let search_model = config.search.as_ref().map(|s| s.model.clone());
    let gateway = Gateway::start(config).await?;
    let client = Client::new(addrs);
    seed(&client, &credentials.users, args.sale_minutes).await?;
    print_banner(&gateway, &args.data_dir, &admin_password, &credentials.users, search_model.as_deref());

    Node::until_signal().await;
    info!("shutting down");
    let result = gateway.shutdown().await;
    // All at once: stopped one by one, the last ones would hold elections among themselves.
    let stopping: Vec<_> =
        nodes.into_iter().map(|node| tokio::spawn(async move { (node.id(), node.shutdown().await) })).collect();
    for stop in stopping {
        match stop.await {
            Ok((_, Ok(()))) => {}
            Ok((id, Err(e))) => return Err(DevError::Node(id, e)),
            Err(e) => return Err(DevError::Shutdown(format!("node shutdown task failed: {e}"))),
        }
    }
    result?;
    Ok(())
}

fn print_banner(gateway: &Gateway, dir: &Path, admin_password: &str, users: &[DemoUser], model: Option<&Path>) {
    let url = format!("http://{}", gateway.addr());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Gavel dev: 3 nodes and the gateway, data in {}", dir.display());
    let _ = writeln!(out, "Logins (username / password / role):");
    let _ = writeln!(out, "  admin / {admin_password} / admin");
    for u in users {
        let _ = writeln!(out, "  {} / {} / {}", u.username, u.password, u.role);
    }
    let _ = writeln!(out, "Demo sale: GET {url}/v1/auctions/{SALE_ID}");
    match model {
        Some(model) if model.exists() => {
            let _ = writeln!(out, "Search, any language: GET {url}/v1/search?q=puerto%20al%20atardecer");
        }
        Some(model) => {
            let _ = writeln!(out, "Search is off: no model at {} (scripts/setup installs it)", model.display());
        }
        None => {}
    }
    let _ = writeln!(out, "Gavel is running at {url}  (Ctrl-C to stop)");
    let _ = out.flush();
}

fn command(body: Body) -> Command {
    Command { at_ms: 0, actor: String::new(), log_index: 0, body: Some(body) }
}

/// One demo lot; amounts in US cents.
struct DemoLot {
    title: &'static str,
    artist: &'static str,
    category: &'static str,
    description: &'static str,
    start_price: i64,
    reserve_price: Option<i64>,
}

const DEMO_LOTS: [DemoLot; 5] = [
    DemoLot {
        title: "Harbour at Dusk",
        artist: "Mirela Voss",
        category: "painting",
        description: "Oil on canvas, 1962. A quiet harbour under a violet evening sky.",
        start_price: 200_000,
        reserve_price: Some(450_000),
    },
    DemoLot {
        title: "Untitled (Blue Study)",
        artist: "Tomas Ferreira",
        category: "painting",
        description: "Acrylic on paper, 1987. Layered blues in loose horizontal bands.",
        start_price: 50_000,
        reserve_price: None,
    },
    DemoLot {
        title: "Seated Figure",
        artist: "Ines Okafor",
        category: "sculpture",
        description: "Bronze with dark patina, edition 3 of 8, 2004.",
        start_price: 800_000,
        reserve_price: Some(1_200_000),
    },
    DemoLot {
        title: "Market Street, Rain",
        artist: "Henrik Aalto",
        category: "photography",
        description: "Gelatin silver print, 1955, printed by the artist.",
        start_price: 30_000,
        reserve_price: None,
    },
    DemoLot {
        title: "Garden Vessel",
        artist: "Akiko Mori",
        category: "ceramics",
        description: "Stoneware with ash glaze, 1979. Wheel-thrown, 41 cm high.",
        start_price: 120_000,
        reserve_price: Some(150_000),
    },
];

/// Creates the demo users and a live sale of five lots with soft close, once.
async fn seed(client: &Client, users: &[DemoUser], sale_minutes: u32) -> Result<(), DevError> {
    let err = |e: String| DevError::Seed(e);
    if client.read_auction(SALE_ID, false).await.map_err(|e| err(e.to_string()))?.auction.is_some() {
        return Ok(());
    }
    let passwords = Passwords::new(2);
    let mut commands = Vec::new();
    for u in users {
        let role = ledger::state::parse_role(&u.role).unwrap_or(Role::User);
        let hash = passwords.hash(u.password.clone()).await.map_err(|e| err(e.message))?;
        commands.push(command(Body::CreateUser(pb::CreateUser {
            user_id: u.user_id.clone(),
            username: u.username.clone(),
            role: role as i32,
            password_hash: hash.into_bytes(),
        })));
    }
    let seller = users.iter().find(|u| u.role == "curator").map_or(ADMIN.to_owned(), |u| u.user_id.clone());
    let starts_at_ms = now_ms();
    let ends_at_ms = starts_at_ms + i64::from(sale_minutes.max(1)) * 60_000;
    commands.push(command(Body::CreateAuction(pb::CreateAuction {
        auction_id: SALE_ID.into(),
        title: "Evening Sale: Modern and Contemporary".into(),
        currency: "USD".into(),
        starts_at_ms,
        ends_at_ms,
        lot_interval_secs: 60,
        increment_ladder: Vec::new(),
    })));
    // A small category tree: every demo lot's category under one root.
    commands.push(command(Body::PutCategory(pb::PutCategory {
        category_id: "art".into(),
        name: "Art".into(),
        parent_id: String::new(),
    })));
    let mut categories: Vec<&str> = DEMO_LOTS.iter().map(|l| l.category).collect();
    categories.sort_unstable();
    categories.dedup();
    for category in categories {
        commands.push(command(Body::PutCategory(pb::PutCategory {
            category_id: category.into(),
            name: category.into(),
            parent_id: "art".into(),
        })));
    }
    for (i, lot) in DEMO_LOTS.iter().enumerate() {
        let lot_id = format!("demo-lot-{}", i + 1);
        commands.push(command(Body::CreateLot(pb::CreateLot {
            lot_id: lot_id.clone(),
            title: lot.title.into(),
            description: lot.description.into(),
            artist: lot.artist.into(),
            category: lot.category.into(),
            currency: "USD".into(),
            start_price: lot.start_price,
            reserve_price: lot.reserve_price,
            starts_at_ms,
            ends_at_ms,
            soft_close_secs: 120,
            seller_id: seller.clone(),
            increment_ladder: Vec::new(),
        })));
        // The medium, as the catalog's `attr.medium=` filters it: the description's first phrase.
        let medium = lot.description.split([',', '.']).next().unwrap_or(lot.description).trim().to_lowercase();
        commands.push(command(Body::AddAttributes(pb::AddAttributes {
            lot_id: lot_id.clone(),
            attributes: vec![pb::AttributeInput { key: "medium".into(), value: medium }],
        })));
        for status in [LotStatus::UnderReview, LotStatus::Authenticated, LotStatus::ReadyForAuction] {
            commands
                .push(command(Body::SetLotStatus(pb::SetLotStatus { lot_id: lot_id.clone(), status: status as i32 })));
        }
        commands.push(command(Body::AddLotToAuction(pb::AddLotToAuction { auction_id: SALE_ID.into(), lot_id })));
    }
    commands.push(command(Body::SetAuctionStatus(pb::SetAuctionStatus {
        auction_id: SALE_ID.into(),
        status: pb::AuctionStatus::Live as i32,
    })));
    let results = tokio::time::timeout(Duration::from_secs(30), client.propose(commands))
        .await
        .map_err(|_| err("the cluster did not answer in 30 s".into()))?
        .map_err(|e| err(e.to_string()))?;
    for result in results {
        if let Some(Res::Rejected(r)) = result.outcome.and_then(|o| o.result) {
            return Err(err(format!("{}: {}", r.code, r.message)));
        }
    }
    info!(sale = SALE_ID, "demo data created");
    Ok(())
}
