//! Plugin fixtures (real components built from `plugins/` and `host/tests/plugins/`
//! for `wasm32-wasip2` by the test command) and a tiny HTTP server on 127.0.0.1 that
//! counts the connections it accepts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use maestro_host::plugins::{Manifest, sha256_hex};
use maestro_host::sandbox::{CallLimits, LoadedPlugin, Sandbox, SandboxConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Cargo's target directory, found from the test binary's own path.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<binary>").to_owned()
}

/// The built component of a plugin crate (`maestro-plugin-<name>`).
pub(crate) fn component(name: &str) -> PathBuf {
    let path = target_dir().join(format!("wasm32-wasip2/release/maestro_plugin_{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first (scripts/test does: cargo build --release --target wasm32-wasip2 -p maestro-plugin-{name})",
        path.display()
    );
    path
}

/// The source directory of a plugin crate.
pub(crate) fn source_dir(name: &str) -> PathBuf {
    let shipped = root().join("plugins").join(name);
    if shipped.is_dir() { shipped } else { root().join("host/tests/plugins").join(name) }
}

/// Installs a plugin into `plugin_dir/<name>/` as `maestro plugin build` would: the
/// component plus its manifest with the sha256 filled in.
pub(crate) fn install(plugin_dir: &Path, name: &str) -> PathBuf {
    let mut manifest = Manifest::read(&source_dir(name).join("plugin.toml")).expect("source manifest");
    let bytes = std::fs::read(component(name)).expect("component");
    manifest.sha256 = Some(sha256_hex(&bytes));
    let dir = plugin_dir.join(name);
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::write(dir.join(&manifest.component), &bytes).expect("write component");
    std::fs::write(dir.join("plugin.toml"), toml::to_string(&manifest).expect("manifest toml"))
        .expect("write manifest");
    dir
}

/// A sandbox shared by the tests in this binary (its own runtime outlives every test
/// runtime), with the compiled-code cache under the target directory.
pub(crate) fn sandbox() -> Arc<Sandbox> {
    static SANDBOX: std::sync::OnceLock<Arc<Sandbox>> = std::sync::OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let config =
                SandboxConfig { cache_dir: Some(target_dir().join("maestro-test-cache")), ..SandboxConfig::default() };
            Arc::new(Sandbox::new(config).expect("sandbox starts"))
        })
        .clone()
}

/// The hostile fixture plugin, loaded once.
pub(crate) async fn hostile() -> LoadedPlugin {
    static HOSTILE: tokio::sync::OnceCell<LoadedPlugin> = tokio::sync::OnceCell::const_new();
    HOSTILE
        .get_or_init(|| async {
            let bytes = std::fs::read(component("hostile")).expect("component");
            sandbox().load("hostile", bytes, CallLimits::default()).await.expect("hostile loads")
        })
        .await
        .clone()
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `respond(head)`.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) accepts: Arc<AtomicUsize>,
    pub(crate) heads: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    pub(crate) async fn start(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let (a, h) = (accepts.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (respond, heads) = (respond.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    heads.lock().expect("heads").push(head.clone());
                    let _ = socket.write_all(respond(&head).as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { addr, accepts, heads }
    }

    /// A plain 200 with `body`.
    pub(crate) async fn ok(body: &'static str) -> Self {
        Self::start(move |_| {
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
        })
        .await
    }

    /// A 302 to `location`.
    pub(crate) async fn redirect(location: String) -> Self {
        Self::start(move |_| {
            format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        })
        .await
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}
