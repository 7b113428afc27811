//! `gavel dev` as a newcomer runs it: start it, wait for the URL, sign in with a printed
//! login, bid over HTTP, stop it with SIGINT; start it again and find the bid.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::free_port;
use serde_json::{Value, json};

struct Dev {
    child: Child,
    url: String,
    /// username -> password, as printed.
    logins: Vec<(String, String)>,
}

impl Drop for Dev {
    /// A failed test does not leave `gavel dev` running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `gavel dev` and reads its banner until the URL line (at most 120 s).
#[allow(clippy::zombie_processes, reason = "Dev owns the child: stop() waits for it, Drop reaps it on failure")]
fn start(dir: &Path, http_port: u16, grpc_base: u16, env: &[(String, String)]) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .args(["--grpc-port-base", &grpc_base.to_string()])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env_remove("GAVEL_ADMIN_PASSWORD")
        .env_remove("GAVEL_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gavel dev");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut logins = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("gavel dev printed no URL in 120 s");
        if let Some(rest) = line.strip_prefix("Gavel is running at ") {
            let url = rest.split_whitespace().next().unwrap().to_owned();
            return Dev { child, url, logins };
        }
        let parts: Vec<&str> = line.trim().split(" / ").collect();
        if parts.len() == 3 {
            logins.push((parts[0].to_owned(), parts[1].to_owned()));
        }
    }
}

fn stop(mut dev: Dev) {
    // (Dev's Drop then finds the child already reaped.)
    let pid = dev.child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    for _ in 0..300 {
        if let Some(status) = dev.child.try_wait().unwrap() {
            assert!(status.success(), "gavel dev exited with {status} after SIGINT");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = dev.child.kill();
    panic!("gavel dev did not stop within 30 s of SIGINT");
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gavel_dev_runs_takes_a_bid_stops_on_sigint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev-data");
    let (http_port, grpc_base) = (free_port(), free_port());
    let http = reqwest::Client::new();

    let dev = start(&data, http_port, grpc_base, &[]);
    let names: Vec<&str> = dev.logins.iter().map(|(u, _)| u.as_str()).collect();
    assert!(names.contains(&"admin") && names.contains(&"alice"), "printed logins: {names:?}");
    let password = dev.logins.iter().find(|(u, _)| u == "alice").unwrap().1.clone();
    let (status, session) =
        post(&http, format!("{}/v1/sessions", dev.url), None, json!({"username": "alice", "password": password})).await;
    assert_eq!(status, 200, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();

    let sale: Value =
        http.get(format!("{}/v1/auctions/demo-evening-sale", dev.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(sale["status"], "Live", "{sale}");
    let lot: Value = http.get(format!("{}/v1/lots/demo-lot-2", dev.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(lot["status"], "InAuction", "{lot}");
    let amount = lot["start_price"].as_i64().unwrap();
    let (status, bid) = post(
        &http,
        format!("{}/v1/lots/demo-lot-2/bids", dev.url),
        Some(&token),
        json!({"bid_id": "dev-1", "max_amount": amount}),
    )
    .await;
    assert_eq!(status, 200, "{bid}");
    assert_eq!(bid["outcome"], "leading");
    let url = dev.url.clone();
    stop(dev);
    assert!(http.get(format!("{url}/healthz")).send().await.is_err(), "still serving after SIGINT");

    // Again, on the same data: the same logins, the bid is there, the token still works.
    let dev = start(&data, http_port, grpc_base, &[]);
    assert_eq!(dev.logins.iter().find(|(u, _)| u == "alice").unwrap().1, password);
    let lot: Value = http.get(format!("{}/v1/lots/demo-lot-2", dev.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(lot["bid_count"], 1, "{lot}");
    assert_eq!(lot["leading_bidder"], "u-alice");
    let (status, again) = post(
        &http,
        format!("{}/v1/lots/demo-lot-2/bids", dev.url),
        Some(&token),
        json!({"bid_id": "dev-1", "max_amount": amount}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again, bid, "the retried bid gets its first answer");
    stop(dev);
}

/// An S3-compatible server: `GAVEL_S3_ENDPOINT` when set (credentials in the usual `AWS_*`
/// variables, `GAVEL_S3_BUCKET` an existing bucket), else moto's server as scripts/setup
/// installs it, on a loopback port with a fresh bucket.
struct S3 {
    /// What `gavel dev` and the test's own client are configured with.
    env: Vec<(String, String)>,
    bucket: String,
    moto: Option<Child>,
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(moto) = &mut self.moto {
            let _ = moto.kill();
            let _ = moto.wait();
        }
    }
}

impl S3 {
    async fn start() -> S3 {
        let allow_http = ("AWS_ALLOW_HTTP".to_owned(), "true".to_owned());
        if let Ok(endpoint) = std::env::var("GAVEL_S3_ENDPOINT") {
            let bucket =
                std::env::var("GAVEL_S3_BUCKET").expect("GAVEL_S3_BUCKET: an existing bucket at GAVEL_S3_ENDPOINT");
            return S3 { env: vec![("AWS_ENDPOINT".to_owned(), endpoint), allow_http], bucket, moto: None };
        }
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.s3-emulator/bin/python");
        assert!(python.exists(), "{} is missing: scripts/setup installs the S3 emulator", python.display());
        let port = free_port();
        let moto = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        let bucket = "gavel-images".to_owned();
        let s3 = S3 {
            env: vec![
                ("AWS_ENDPOINT".to_owned(), endpoint.clone()),
                allow_http,
                ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
                ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ],
            bucket,
            moto: Some(moto),
        };
        // moto takes unsigned requests; object_store has no call to make a bucket.
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = http.put(format!("{endpoint}/{}", s3.bucket)).send().await {
                assert!(response.status().is_success(), "making the bucket: {}", response.status());
                return s3;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto's server did not answer on {endpoint} within 20 s");
    }

    /// The test's own client for the bucket.
    fn bucket(&self) -> object_store::aws::AmazonS3 {
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        for (key, value) in &self.env {
            builder = builder.with_config(key.to_ascii_lowercase().parse().unwrap(), value);
        }
        builder.build().unwrap()
    }
}

/// A small PNG, different for each `seed`.
fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, seed]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload(http: &reqwest::Client, url: &str, token: &str, bytes: Vec<u8>) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes).file_name("photo.png").mime_str("image/png").unwrap();
    let response = http
        .post(format!("{url}/v1/lots/demo-lot-2/images"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("image", part))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn exists(bucket: &object_store::aws::AmazonS3, key: &str) -> bool {
    use object_store::ObjectStoreExt;
    match bucket.head(&object_store::path::Path::from(key)).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("{key}: {e}"),
    }
}

/// `--images s3://bucket/prefix` through the real binary: uploads land in the bucket, are
/// served from it, deleted images' bytes are swept from it, and a store that is down fails an
/// upload in seconds with nothing committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gavel_dev_keeps_lot_images_in_an_s3_store() {
    use object_store::ObjectStoreExt;
    let mut s3 = S3::start().await;
    let prefix = format!("run-{}", common::now_ms());
    let mut env = s3.env.clone();
    env.push(("GAVEL_IMAGES".to_owned(), format!("s3://{}/{prefix}", s3.bucket)));
    env.push(("GAVEL_IMAGE_SWEEP_SECS".to_owned(), "1".to_owned()));
    env.push(("GAVEL_IMAGE_GRACE_SECS".to_owned(), "2".to_owned()));
    let dir = tempfile::tempdir().unwrap();
    let dev = start(&dir.path().join("dev-data"), free_port(), free_port(), &env);
    let http = reqwest::Client::new();
    let password = dev.logins.iter().find(|(u, _)| u == "carol").expect("carol, the curator").1.clone();
    let (status, session) =
        post(&http, format!("{}/v1/sessions", dev.url), None, json!({"username": "carol", "password": password})).await;
    assert_eq!(status, 200, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();

    let (kept, gone) = (png(1), png(2));
    let (status, kept_image) = upload(&http, &dev.url, &token, kept.clone()).await;
    assert_eq!(status, 201, "{kept_image}");
    let (status, gone_image) = upload(&http, &dev.url, &token, gone.clone()).await;
    assert_eq!(status, 201, "{gone_image}");
    let bucket = s3.bucket();
    let (kept_hash, gone_hash) = (blake3::hash(&kept).to_hex(), blake3::hash(&gone).to_hex());
    for (bytes, hash) in [(&kept, &kept_hash), (&gone, &gone_hash)] {
        let key = object_store::path::Path::from(format!("{prefix}/images/{hash}"));
        let stored = bucket.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.as_ref(), bytes.as_slice(), "the upload's bytes, under its hash");
        let key = object_store::path::Path::from(format!("{prefix}/thumbs/{hash}"));
        let thumb = bucket.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(image::guess_format(&thumb).unwrap(), image::ImageFormat::Jpeg);
    }

    // Served from the bucket with its validators.
    let url = format!("{}{}", dev.url, kept_image["url"].as_str().unwrap());
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{kept_hash}\""));
    assert_eq!(response.bytes().await.unwrap().as_ref(), kept.as_slice());
    let response = http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(response.status(), 304);

    // A deleted image's bytes are swept from the bucket once past the grace; the other's stay.
    let image_id = gone_image["image_id"].as_str().unwrap();
    let response = http
        .delete(format!("{}/v1/lots/demo-lot-2/images/{image_id}", dev.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let swept = async {
        loop {
            let full = exists(&bucket, &format!("{prefix}/images/{gone_hash}")).await;
            let thumb = exists(&bucket, &format!("{prefix}/thumbs/{gone_hash}")).await;
            if !full && !thumb {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), swept).await.expect("the deleted image's bytes swept within 30 s");
    assert!(exists(&bucket, &format!("{prefix}/images/{kept_hash}")).await, "a committed image's bytes are kept");
    assert!(exists(&bucket, &format!("{prefix}/thumbs/{kept_hash}")).await);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);

    // The store down (only the emulator can be stopped): the upload fails in seconds, clearly,
    // and the gallery is as it was.
    if let Some(mut moto) = s3.moto.take() {
        moto.kill().unwrap();
        moto.wait().unwrap();
        let started = std::time::Instant::now();
        let (status, body) = upload(&http, &dev.url, &token, png(3)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
        assert!(started.elapsed() < Duration::from_secs(30), "failed after {:?}", started.elapsed());
        let gallery: Value =
            http.get(format!("{}/v1/lots/demo-lot-2/images", dev.url)).send().await.unwrap().json().await.unwrap();
        let ids: Vec<&Value> = gallery["images"].as_array().unwrap().iter().map(|i| &i["image_id"]).collect();
        assert_eq!(ids, [&kept_image["image_id"]]);
    }
    stop(dev);
}
