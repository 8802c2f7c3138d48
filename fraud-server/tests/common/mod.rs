//! The test client shared by the service's integration tests: `fraud serve` started for
//! real on a free port with its own data directory, and plain HTTP/1.1 requests to it; or
//! the same service in process ([`in_process`], [`send`]) through `actix_web::test`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const CARD: &str = "4111111111111111";

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub out: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `fraud serve` with `config` (TOML, may be empty) in `dir`; waits for /healthz.
pub fn start(dir: &Path, config: &str) -> Result<Server, String> {
    start_in(dir, config, None)
}

/// [`start`] with the process's umask set to `umask` (octal) first.
pub fn start_with_umask(dir: &Path, config: &str, umask: &str) -> Result<Server, String> {
    start_in(dir, config, Some(umask))
}

fn start_in(dir: &Path, config: &str, umask: Option<&str>) -> Result<Server, String> {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let cfg = dir.join("fraud.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = dir.join(format!("server-{port}.log"));
    let log = std::fs::File::create(&out).unwrap();
    let bin = env!("CARGO_BIN_EXE_fraud");
    let mut cmd = match umask {
        None => Command::new(bin),
        Some(m) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("umask {m} && exec \"$0\" \"$@\""), bin]);
            c
        }
    };
    let child = cmd
        .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&cfg)
        .env("FRAUD_DATA_DIR", dir.join("data"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut s = Server {
        child,
        port,
        dir: dir.to_path_buf(),
        out,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = s.child.try_wait() {
            return Err(std::fs::read_to_string(&s.out).unwrap_or_default());
        }
        if let Ok(r) = s.try_request("GET", "/healthz", None, &[], b"") {
            if r.0 == 200 {
                return Ok(s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("server did not start".into())
}

pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

impl Server {
    pub fn key(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/dev-api-key"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        request(self.port, method, path, key, headers, body)
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value, Vec<(String, String)>) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, headers, body) = self
            .try_request(
                method,
                path,
                key,
                &[("Content-Type", "application/json")],
                &bytes,
            )
            .unwrap();
        let v = serde_json::from_slice(&body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
        (status, v, headers)
    }
}

/// One HTTP/1.1 request to the service on local `port` (a connection of its own): status,
/// headers (names in lower case), body. An error when no whole answer came back (the server
/// died, or closed the connection).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    for (h, v) in headers {
        req.push_str(&format!("{h}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}

pub fn tx(id: &str, amount: &str) -> Value {
    json!({
        "transaction_id": id, "timestamp": "2024-05-01T10:00:00Z", "amount": amount,
        "currency": "EUR", "card_number": CARD, "customer_id": "C1", "merchant_id": "M1",
        "mcc": "5411", "terminal_id": "T1", "channel": "ecommerce", "card_country": "BE",
        "merchant_country": "BE", "ip": "10.0.0.1", "ip_country": "BE", "device_id": "d1",
        "email": "c1@example.com"
    })
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Every file under `dir`, recursively, as bytes.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Writes a keys file of (name, secret, roles) to `dir/keys.json`.
pub fn write_keys(dir: &Path, keys: &[(&str, &str, &[&str])]) -> PathBuf {
    let list: Vec<Value> = keys
        .iter()
        .map(|(name, secret, roles)| {
            let h: String = Sha256::digest(secret.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            json!({"name": name, "roles": roles, "sha256": h, "created": "2026-01-01T00:00:00Z"})
        })
        .collect();
    let p = dir.join("keys.json");
    std::fs::write(&p, json!({"keys": list}).to_string()).unwrap();
    p
}

/// Runs the `fraud` command with `args`.
pub fn fraud_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fraud"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `fraud audit verify DIR` with `extra` options: (success, stdout and stderr).
pub fn audit_verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = fraud_cli(&args);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A service on its defaults in a new temporary directory, and its development key.
pub fn dev_service() -> (tempfile::TempDir, Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "").unwrap();
    let key = s.key();
    (dir, s, key)
}

/// Asserts that no file under `dir` holds any of `needles`.
pub fn assert_no_file_holds(dir: &Path, needles: &[&str]) {
    for (path, bytes) in all_files(dir) {
        for n in needles {
            assert!(!contains(&bytes, n), "{n} in {}", path.display());
        }
    }
}

/// The service of `config` (TOML; `data_dir` under `dir`) built in process, as `fraud serve`
/// builds it, and its development API key.
pub fn in_process(dir: &Path, config: &str) -> (fraud_server::service::Service, String) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("fraud.toml");
    std::fs::write(&file, config).unwrap();
    let vars = [(
        "FRAUD_DATA_DIR".to_string(),
        dir.join("data").display().to_string(),
    )];
    let cfg = fraud_server::service::Config::load(Some(&file), vars).unwrap();
    cfg.check().unwrap();
    let service = fraud_server::service::build(&cfg).unwrap();
    let key = std::fs::read_to_string(service.dev_key.as_ref().expect("development mode"))
        .unwrap()
        .trim()
        .to_string();
    (service, key)
}

/// An answer of the in-process service: status, content type, body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `method path` with `key` (as a bearer token) and a JSON `body` to an app made by
/// `fraud_server::service::app` and `actix_web::test::init_service`.
pub async fn send<S, B>(
    app: &S,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Answer
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody,
{
    let payload = body.map(|b| ("application/json", b.to_string().into_bytes()));
    send_raw(app, method, path, key, payload).await
}

/// [`send`] with a body of any content type: `(content type, bytes)`.
pub async fn send_raw<S, B>(
    app: &S,
    method: &str,
    path: &str,
    key: Option<&str>,
    payload: Option<(&str, Vec<u8>)>,
) -> Answer
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody,
{
    let mut req = actix_web::test::TestRequest::default()
        .method(method.parse().unwrap())
        .uri(path);
    if let Some(k) = key {
        req = req.insert_header(("authorization", format!("Bearer {k}")));
    }
    if let Some((content_type, bytes)) = payload {
        req = req
            .insert_header(("content-type", content_type.to_string()))
            .set_payload(bytes);
    }
    let resp = actix_web::test::call_service(app, req.to_request()).await;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = actix_web::test::read_body(resp).await.to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// A PostgreSQL server of its own (Debian's `initdb` and `postgres`) in a temporary
/// directory, on a free port, trusting local connections: as `nobody` when the tests run as
/// root (PostgreSQL refuses to run as root). Stopped when dropped.
/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the comm may hold spaces, so after its last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Postgres {
    fn bin(name: &str) -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin").join(name))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
            .pop()
            .unwrap_or_else(|| panic!("PostgreSQL's {name} is not installed (the test command installs the Debian package)"))
    }

    fn as_owner(&self, program: &Path) -> Command {
        if rustix::process::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// initdb, then start; waits until it accepts connections.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        }
        let mut pg = Postgres {
            child: None,
            port: 0,
            dir,
        };
        let data = pg.dir.path().join("data");
        let st = pg
            .as_owner(&Self::bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "fraud", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        pg.run();
        pg
    }

    /// Starts the server on its data directory (a new port the first time, the same after).
    pub fn run(&mut self) {
        if self.port == 0 {
            self.port = free_port();
        }
        let log = std::fs::File::create(self.dir.path().join("server.log")).ok();
        let mut cmd = self.as_owner(&Self::bin("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdout(Stdio::null());
        match log {
            Some(f) => cmd.stderr(Stdio::from(f)),
            None => cmd.stderr(Stdio::null()),
        };
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while postgres::Client::connect(&self.url(), postgres::NoTls).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (SIGKILL: as a crash would), its backends with it, and
    /// waits until they are gone (a backend outliving its postmaster holds the shared memory
    /// and the next start fails).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let backends = children(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for pid in &backends {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            // Gone, or a zombie (which holds no memory) left to whoever reaps orphans.
            let alive = |p: &u32| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                    st.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .is_some_and(|state| state != "Z" && state != "X")
                })
            };
            while backends.iter().any(alive) {
                assert!(
                    Instant::now() < deadline,
                    "PostgreSQL's backends outlived it"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://fraud@127.0.0.1:{}/postgres", self.port)
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown (its backends stop with it), then the directory goes.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// A throw-away `redis-server` (no persistence, loopback only), stopped when dropped: a
/// failed assertion must not leave it running.
pub struct Redis(std::process::Child);

impl Redis {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A [`Redis`] on `port`.
pub fn redis_server(port: u16) -> Redis {
    Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (the test command installs it)"),
    )
}

/// `redis-cli -p port args...`: its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is not installed (it comes with redis-server)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A Redis Cluster of three primaries in `dir` (the slots split in three, the nodes
/// introduced to each other), once every node says it is ok: the servers and their URLs.
pub fn redis_cluster(dir: &Path) -> (Vec<Redis>, Vec<String>) {
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = free_port();
        if p < 55_000
            && !ports.contains(&p)
            && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            ports.push(p);
        }
    }
    let nodes: Vec<Redis> = ports
        .iter()
        .map(|&port| {
            let node_dir = dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is not installed (the test command installs it)");
            Redis(child)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for &p in &ports {
        while !redis_cli(p, &["PING"]).contains("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on {p} did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (&p, (a, b)) in ports
        .iter()
        .zip([("0", "5460"), ("5461", "10922"), ("10923", "16383")])
    {
        redis_cli(p, &["CLUSTER", "ADDSLOTSRANGE", a, b]);
    }
    for &p in &ports[1..] {
        redis_cli(ports[0], &["CLUSTER", "MEET", "127.0.0.1", &p.to_string()]);
    }
    for &p in &ports {
        loop {
            let info = redis_cli(p, &["CLUSTER", "INFO"]);
            if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let urls = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    (nodes, urls)
}

/// What replicas share, made in `dir`: a tokenization key file (one card, one token) and a
/// keys file holding one key with every role. Returns the key and the config lines naming
/// both files.
pub fn shared_keys(dir: &Path) -> (String, String) {
    use std::os::unix::fs::PermissionsExt;
    let token_key = dir.join("tokenization.key");
    std::fs::write(&token_key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&token_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keys = dir.join("keys.json");
    let key = create_key(dir, "checkout", "score,analyst,admin");
    let cfg = format!(
        "keys_file = {:?}\ntokenization_key_file = {:?}\n",
        keys.to_str().unwrap(),
        token_key.to_str().unwrap()
    );
    (key, cfg)
}

/// Creates an API key `name` with `roles` (comma-separated) in `<dir>/keys.json` with
/// `fraud keys create`: its secret.
pub fn create_key(dir: &Path, name: &str, roles: &str) -> String {
    let out = fraud_cli(&[
        "keys",
        "create",
        "--role",
        roles,
        "--name",
        name,
        "--keys-file",
        dir.join("keys.json").to_str().unwrap(),
        "--data-dir",
        dir.join("keys-data").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("fsk_"))
        .unwrap()
        .to_string()
}

/// A service replica on `cfg` in `dir`, once it answers (its stores may still be starting).
pub fn replica(dir: &Path, cfg: &str) -> Server {
    for _ in 0..100 {
        if let Ok(s) = start(dir, cfg) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "replica in {} did not start: {}",
        dir.display(),
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("server-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `fraud state rebuild` with `args`, run until it succeeds (the redis-server it writes to
/// may still be starting): its output. Fails with its last error after a minute.
pub fn state_rebuild(args: &[&str]) -> String {
    let mut all = vec!["state", "rebuild"];
    all.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = fraud_cli(&all);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "fraud state rebuild did not succeed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Luhn-valid 16-digit number from `seed`.
pub fn card_number(seed: u64) -> String {
    let mut digits: Vec<u32> = format!(
        "4{:014}",
        seed.wrapping_mul(2_862_933_555_777_941_757) % 100_000_000_000_000
    )
    .chars()
    .map(|c| c.to_digit(10).unwrap())
    .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

/// A feature spec file in `dir`: the default spec and one feature more
/// (`merchant_txn_count_2h`), which the demo model does not read.
pub fn wider_spec(dir: &Path) -> PathBuf {
    let spec = dir.join("spec.toml");
    let default = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fraud-core/src/features/default_spec.toml"),
    )
    .unwrap();
    std::fs::write(
        &spec,
        format!(
            "{default}\n[[windows]]\nentity = \"merchant\"\nwindows = [\"2h\"]\naggregations = [\"count\"]\n"
        ),
    )
    .unwrap();
    spec
}

/// Polls `probe` every `every` until it answers `Ok`, for at most `limit`: its value, or a
/// panic with its last complaint. What tests wait with for an event they cannot be told of
/// (a replica following the store, a server coming back), never a fixed sleep.
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(every);
    }
}
