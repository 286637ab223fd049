//! Egress per service and per key (an HTTP or SOCKS5 proxy, extra upstream headers, a private
//! CA) and Azure OpenAI's deployment paths, through the real gateway. The proxies, the TLS
//! front and the Azure mock are small servers this file starts on loopback ports.
use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::mock::{self, MockServer};

/// What a test proxy saw of one client connection.
#[derive(Debug, Clone)]
struct ProxySeen {
    /// `CONNECT host:port`, or the absolute URL of a plain-HTTP request.
    method: String,
    target: String,
    proxy_auth: Option<String>,
    /// The upstream key of a plain-HTTP request (a CONNECT tunnel hides it).
    upstream_auth: Option<String>,
}

#[derive(Clone)]
struct TestProxy {
    /// `127.0.0.1:port`
    addr: String,
    seen: Arc<Mutex<Vec<ProxySeen>>>,
}

impl TestProxy {
    fn seen(&self) -> Vec<ProxySeen> {
        self.seen.lock().clone()
    }
}

async fn read_head(s: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
    }
}

/// A forward HTTP proxy: `CONNECT` tunnels (HTTPS upstreams) and absolute-form requests (plain
/// HTTP upstreams, which a client sends to a proxy without a tunnel). It records each tunnel and
/// each plain request: a plain request is forwarded with `connection: close`, so every request
/// comes on a connection of its own and none passes unrecorded on a kept-alive one.
async fn start_http_proxy() -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = TestProxy {
        addr: listener.local_addr().unwrap().to_string(),
        seen: Default::default(),
    };
    let seen = proxy.seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(relay_http(conn, seen.clone()));
        }
    });
    proxy
}

async fn relay_http(mut client: TcpStream, seen: Arc<Mutex<Vec<ProxySeen>>>) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    seen.lock().push(ProxySeen {
        method: method.clone(),
        target: target.clone(),
        proxy_auth: header("proxy-authorization"),
        upstream_auth: header("authorization"),
    });
    let dest = if method == "CONNECT" {
        target.clone()
    } else {
        let u = url::Url::parse(&target).unwrap();
        format!(
            "{}:{}",
            u.host_str().unwrap(),
            u.port_or_known_default().unwrap()
        )
    };
    let Ok(mut upstream) = TcpStream::connect(&dest).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if method == "CONNECT" {
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await;
    } else {
        // The upstream takes the absolute-form request as it is; the proxy's credentials stay here.
        let mut forwarded: String = text
            .strip_suffix("\r\n")
            .unwrap_or(&text)
            .split_inclusive("\r\n")
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                !l.starts_with("proxy-authorization:") && !l.starts_with("connection:")
            })
            .collect();
        forwarded.push_str("connection: close\r\n\r\n");
        let _ = upstream.write_all(forwarded.as_bytes()).await;
    }
    let _ = upstream.write_all(&rest).await;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A SOCKS5 proxy that requires a username and password (RFC 1928/1929) and records them with
/// each CONNECT target.
async fn start_socks5_proxy() -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = TestProxy {
        addr: listener.local_addr().unwrap().to_string(),
        seen: Default::default(),
    };
    let seen = proxy.seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = relay_socks5(conn, seen).await;
            });
        }
    });
    proxy
}

async fn relay_socks5(mut c: TcpStream, seen: Arc<Mutex<Vec<ProxySeen>>>) -> std::io::Result<()> {
    let mut hello = [0u8; 2];
    c.read_exact(&mut hello).await?;
    let mut methods = vec![0u8; hello[1] as usize];
    c.read_exact(&mut methods).await?;
    if !methods.contains(&2) {
        c.write_all(&[5, 0xff]).await?;
        return Ok(());
    }
    c.write_all(&[5, 2]).await?;
    let mut ver_len = [0u8; 2];
    c.read_exact(&mut ver_len).await?;
    let mut user = vec![0u8; ver_len[1] as usize];
    c.read_exact(&mut user).await?;
    let mut plen = [0u8; 1];
    c.read_exact(&mut plen).await?;
    let mut pass = vec![0u8; plen[0] as usize];
    c.read_exact(&mut pass).await?;
    c.write_all(&[1, 0]).await?;
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut ip = [0u8; 4];
            c.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            c.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            c.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).to_string()
        }
        _ => return Ok(()),
    };
    let mut port = [0u8; 2];
    c.read_exact(&mut port).await?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    seen.lock().push(ProxySeen {
        method: "SOCKS5".into(),
        target: target.clone(),
        proxy_auth: Some(format!(
            "{}:{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&pass)
        )),
        upstream_auth: None,
    });
    let mut upstream = TcpStream::connect(&target).await?;
    c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut c, &mut upstream).await?;
    Ok(())
}

fn host_port(base: &str) -> String {
    let u = url::Url::parse(base).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
}

async fn patch(app: &TestApp, path: &str, body: Value) -> Value {
    let (s, v) = app.admin("PATCH", path, Some(body)).await;
    assert_eq!(s, 200, "PATCH {path}: {v}");
    v
}

async fn key_ids(app: &TestApp, slug: &str) -> Vec<i64> {
    let (_, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect()
}

const KEY_A: &str = "sk-egress-key-aaaa-0001";
const KEY_B: &str = "sk-egress-key-bbbb-0002";

both!(
    a_service_proxy_carries_upstream_calls_and_a_key_proxy_overrides_it,
    |b: Backend| async move {
        let upstream = mock::start().await;
        let (svc_proxy, key_proxy) = (start_http_proxy().await, start_http_proxy().await);
        let app = TestApp::spawn(b).await;
        app.create_service("eg", "openai", &upstream.base).await;
        patch(
            &app,
            "/admin/services/eg",
            json!({"egress_proxy": format!("http://svc-user:svc-pass@{}", svc_proxy.addr)}),
        )
        .await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/eg/keys",
                Some(json!({"keys": [
                    {"key": KEY_A},
                    {"key": KEY_B, "egress_proxy": format!("http://{}", key_proxy.addr)},
                ]})),
            )
            .await;
        assert_eq!((s, v["added"].as_u64()), (200, Some(2)), "{v}");
        let ak = app.access_key().await;

        for _ in 0..4 {
            assert_eq!(app.chat("eg", &ak).await.status(), 200);
        }
        let counts = upstream.mock.counts();
        assert_eq!(counts.values().sum::<usize>(), 4, "{counts:?}");
        assert!(counts.contains_key(KEY_A) && counts.contains_key(KEY_B));

        let basic = base64::engine::general_purpose::STANDARD.encode("svc-user:svc-pass");
        let via_svc = svc_proxy.seen();
        assert_eq!(
            via_svc.len(),
            2,
            "key A's calls went through the service's proxy"
        );
        for s in &via_svc {
            assert_eq!(s.method, "POST", "{s:?}");
            assert!(s.target.starts_with(&upstream.base), "{s:?}");
            assert_eq!(
                s.proxy_auth.as_deref(),
                Some(format!("Basic {basic}").as_str())
            );
            assert_eq!(
                s.upstream_auth.as_deref(),
                Some(format!("Bearer {KEY_A}").as_str())
            );
        }
        let via_key = key_proxy.seen();
        assert_eq!(via_key.len(), 2, "key B's calls went through its own proxy");
        for s in &via_key {
            assert_eq!(s.proxy_auth, None, "{s:?}");
            assert_eq!(
                s.upstream_auth.as_deref(),
                Some(format!("Bearer {KEY_B}").as_str())
            );
        }

        // Cleared, key B's own proxy gives way to the service's again.
        let b_id = key_ids(&app, "eg").await[1];
        let v = patch(
            &app,
            &format!("/admin/services/eg/keys/{b_id}"),
            json!({"egress_proxy": null}),
        )
        .await;
        assert_eq!(v["egress_proxy"], Value::Null, "{v}");
        let before = key_proxy.seen().len();
        for _ in 0..2 {
            assert_eq!(app.chat("eg", &ak).await.status(), 200);
        }
        assert_eq!(key_proxy.seen().len(), before);
        let via_svc = svc_proxy.seen();
        assert_eq!(
            via_svc.len(),
            4,
            "both keys' calls now go through the service's proxy"
        );
        assert!(
            via_svc[2..]
                .iter()
                .any(|s| s.upstream_auth.as_deref() == Some(&format!("Bearer {KEY_B}"))),
        );

        // A proxy that is down fails the call: traffic never goes around it.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        patch(
            &app,
            "/admin/services/eg",
            json!({"egress_proxy": format!("http://{dead_addr}")}),
        )
        .await;
        let seen_before = upstream.mock.seen().len();
        let r = app.chat("eg", &ak).await;
        assert!(r.status().is_server_error(), "{}", r.status());
        assert_eq!(upstream.mock.seen().len(), seen_before);
    }
);

both!(
    a_socks5_proxy_carries_calls_and_one_that_cannot_be_built_takes_the_keys_out,
    |b: Backend| async move {
        let upstream = mock::start().await;
        let socks = start_socks5_proxy().await;
        let app = TestApp::spawn(b).await;
        let ak = app.with_service("sk5", &upstream.base, &[KEY_A]).await;
        let v = patch(
            &app,
            "/admin/services/sk5",
            json!({"egress_proxy": format!("socks5h://sock-user:sock-pass@{}", socks.addr)}),
        )
        .await;
        assert_eq!(
            v["egress_proxy"],
            format!("socks5h://***@{}", socks.addr),
            "{v}"
        );
        assert_eq!(app.chat("sk5", &ak).await.status(), 200);
        let seen = socks.seen();
        assert!(!seen.is_empty());
        assert_eq!(seen[0].target, host_port(&upstream.base));
        assert_eq!(seen[0].proxy_auth.as_deref(), Some("sock-user:sock-pass"));
        assert_eq!(upstream.mock.counts().get(KEY_A), Some(&1));

        // A stored proxy no client can be built from (a row edited by hand) takes the service's
        // keys out of rotation: its calls are refused, never sent around the proxy.
        use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
        let db = &app.state.db;
        let rows = keygate::db::entity::service::Entity::find()
            .all(db)
            .await
            .unwrap();
        let row = rows.into_iter().find(|s| s.slug == "sk5").unwrap();
        let mut am: keygate::db::entity::service::ActiveModel = row.into();
        am.egress_proxy = Set(Some("ftp://not-a-proxy:21".into()));
        am.update(db).await.unwrap();
        app.state.config_changed().await.unwrap();
        assert_eq!(app.chat("sk5", &ak).await.status(), 503);
        assert_eq!(upstream.mock.seen().len(), 1);
        assert_eq!(socks.seen().len(), seen.len());
    }
);

both!(
    upstream_headers_reach_the_upstream_and_win_over_the_clients_own,
    |b: Backend| async move {
        let upstream = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app.with_service("hd", &upstream.base, &[KEY_A]).await;
        let v = patch(
            &app,
            "/admin/services/hd",
            json!({"upstream_headers": {"X-Org": "org-operator-123", "x-title": "keygate-tests"}}),
        )
        .await;
        let shown = v["upstream_headers"]["x-org"].as_str().unwrap();
        assert_ne!(shown, "org-operator-123", "values are masked in the view");

        let r = app
            .http
            .post(app.url("/llm/hd/v1/chat/completions"))
            .bearer_auth(&ak)
            .header("x-org", "org-from-client")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // A translated call (Anthropic client, OpenAI upstream) carries them too.
        let r = app
            .http
            .post(app.url("/llm/hd/v1/messages"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = upstream.mock.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(s.headers["x-org"], "org-operator-123");
            assert_eq!(s.headers["x-title"], "keygate-tests");
            assert_eq!(s.headers["authorization"], format!("Bearer {KEY_A}"));
        }

        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/hd",
                Some(json!({"upstream_headers": {"Authorization": "Bearer other"}})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("upstream_headers"),
            "{v}"
        );
        let v = patch(&app, "/admin/services/hd", json!({"upstream_headers": {}})).await;
        assert_eq!(v["upstream_headers"], json!({}));
    }
);

const AZURE_KEY: &str = "azure-resource-key-0123456789";
const DEPLOYMENT: &str = "prod-gpt4o";
const API_VERSION: &str = "2024-10-21";

/// An Azure OpenAI resource: 404 unless the call goes to the deployment's path, with the
/// `api-version` query parameter and the key in `api-key`.
async fn start_azure() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let log = log.clone();
        async move { azure_answer(req, &log) }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, seen)
}

fn azure_answer(req: Request, log: &Mutex<Vec<String>>) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    log.lock().push(format!("{path}?{query}"));
    let versioned = url::form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "api-version" && v == API_VERSION);
    let keyed = req.headers().get("api-key").is_some_and(|v| v == AZURE_KEY)
        && !req.headers().contains_key("authorization");
    let base = format!("/openai/deployments/{DEPLOYMENT}");
    let not_found = (
        axum::http::StatusCode::NOT_FOUND,
        axum::Json(
            json!({"error": {"code": "DeploymentNotFound", "message": "no such deployment"}}),
        ),
    );
    if !versioned || !keyed {
        return not_found.into_response();
    }
    if path == format!("{base}/chat/completions") {
        axum::Json(json!({
            "id": "chatcmpl-az", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello from azure"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        }))
        .into_response()
    } else if path == format!("{base}/embeddings") {
        axum::Json(json!({
            "object": "list", "model": DEPLOYMENT,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}
        }))
        .into_response()
    } else {
        not_found.into_response()
    }
}

both!(
    azure_deployments_get_their_path_api_version_and_api_key,
    |b: Backend| async move {
        let (base, seen) = start_azure().await;
        let app = TestApp::spawn(b).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({
                    "slug": "az", "kind": "openai", "base_url": format!("{base}/openai"),
                    "deployment_path": "deployments/{model}", "api_version": API_VERSION,
                    "model_aliases": {"gpt-4o": DEPLOYMENT},
                })),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["deployment_path"], "deployments/{model}");
        assert_eq!(v["api_version"], API_VERSION);
        app.add_keys("az", &[AZURE_KEY]).await;
        let ak = app.access_key().await;

        let chat = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
        let r = app
            .http
            .post(app.url("/llm/az/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", seen.lock());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "hello from azure");
        assert_eq!(
            seen.lock().last().unwrap(),
            &format!("/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={API_VERSION}")
        );

        // Translated (an Anthropic client): the deployment goes on the translated path.
        let r = app
            .http
            .post(app.url("/llm/az/v1/messages"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", seen.lock());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "message", "{v}");

        // A body sent without a length streams; it is read whole to find its deployment.
        let bytes = serde_json::to_vec(&json!({"model": DEPLOYMENT, "input": "hi"})).unwrap();
        let r = app
            .http
            .post(app.url("/llm/az/v1/embeddings"))
            .bearer_auth(&ak)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::once(
                async move { Ok::<_, std::io::Error>(bytes) },
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", seen.lock());

        // A model that is no deployment reaches Azure's own 404, passed through.
        let r = app
            .http
            .post(app.url("/llm/az/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
);

/// A CA, and a certificate for 127.0.0.1 that it signed: (CA PEM, leaf DER, leaf key DER).
fn private_ca() -> (String, Vec<u8>, Vec<u8>) {
    let c = crate::servers::private_ca();
    (c.ca_pem, c.leaf_der, c.key_der)
}

/// A TLS front for the mock upstream, with a certificate only the private CA vouches for.
async fn start_tls_front(mock: &MockServer, leaf: Vec<u8>, key: Vec<u8>) -> String {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = host_port(&mock.base);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(&backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    format!("https://127.0.0.1:{port}/v1")
}

both!(
    a_private_ca_lets_keygate_reach_a_tls_upstream_directly_and_through_a_connect_proxy,
    |b: Backend| async move {
        let upstream = mock::start().await;
        let (ca_pem, leaf, key) = private_ca();
        let base = start_tls_front(&upstream, leaf, key).await;
        let proxy = start_http_proxy().await;
        let app = TestApp::spawn(b).await;
        let ak = app.with_service("tls", &base, &[KEY_A]).await;

        let r = app.chat("tls", &ak).await;
        assert!(
            r.status().is_server_error(),
            "an unknown CA is refused: {}",
            r.status()
        );
        assert!(upstream.mock.seen().is_empty());

        let v = patch(&app, "/admin/services/tls", json!({"tls_ca_pem": ca_pem})).await;
        let prints = v["tls_ca_sha256"].as_array().unwrap();
        assert_eq!(prints.len(), 1, "{v}");
        assert_eq!(prints[0].as_str().unwrap().len(), 64);
        assert_eq!(app.chat("tls", &ak).await.status(), 200);
        assert_eq!(upstream.mock.counts().get(KEY_A), Some(&1));

        // Through a proxy the call tunnels (CONNECT), and the CA still holds on the tunnel.
        patch(
            &app,
            "/admin/services/tls",
            json!({"egress_proxy": format!("http://{}", proxy.addr)}),
        )
        .await;
        assert_eq!(app.chat("tls", &ak).await.status(), 200);
        let seen = proxy.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].method, "CONNECT");
        assert_eq!(
            seen[0].target,
            base.trim_start_matches("https://").trim_end_matches("/v1")
        );
        assert_eq!(upstream.mock.counts().get(KEY_A), Some(&2));
    }
);

both!(
    admin_refuses_bad_egress_settings_and_never_shows_proxy_credentials,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let create = |extra: Value| {
            let mut body =
                json!({"slug": "adm", "kind": "openai", "base_url": "https://api.example.com/v1"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let raw = app
            .http
            .post(app.url("/admin/services"))
            .bearer_auth(&app.token)
            .json(&create(
                json!({"egress_proxy": "ftp://user:hunter2-pw@proxy:21"}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 400);
        assert_eq!(raw.headers()["content-type"], "application/problem+json");
        let text = raw.text().await.unwrap();
        assert!(
            text.contains("egress_proxy") && !text.contains("hunter2-pw"),
            "{text}"
        );

        let (ca_pem, _, key) = private_ca();
        let key_pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&key)
        );
        for (extra, field) in [
            (json!({"egress_proxy": "http://"}), "egress_proxy"),
            (json!({"tls_ca_pem": "not a certificate"}), "tls_ca_pem"),
            (
                json!({"tls_ca_pem": format!("{ca_pem}{key_pem}")}),
                "tls_ca_pem",
            ),
            (
                json!({"upstream_headers": {"content-length": "1"}}),
                "upstream_headers",
            ),
            (
                json!({"upstream_headers": {"authorization": "x"}}),
                "upstream_headers",
            ),
            // Azure options move the key to `api-key`, which then is the auth header.
            (
                json!({"api_version": "2024-10-21", "upstream_headers": {"api-key": "x"}}),
                "upstream_headers",
            ),
            (
                json!({"deployment_path": "chat/{model}"}),
                "deployment_path",
            ),
            (json!({"api_version": "a&b"}), "api_version"),
        ] {
            let (s, v) = app
                .admin("POST", "/admin/services", Some(create(extra.clone())))
                .await;
            assert_eq!(s, 400, "{extra}: {v}");
            assert!(
                v["detail"].as_str().unwrap().starts_with(field),
                "{extra}: {v}"
            );
        }
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "ant", "kind": "anthropic", "base_url": "https://api.example.com/v1", "deployment_path": "deployments/{model}"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");

        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(create(json!({"egress_proxy": "http://alice:s3cr3t-pw@proxy.internal:3128", "tls_ca_pem": ca_pem}))),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["egress_proxy"], "http://***@proxy.internal:3128");
        assert_eq!(v["tls_ca_sha256"].as_array().unwrap().len(), 1);
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/adm/keys",
                Some(json!({"keys": [{"key": KEY_A, "egress_proxy": "socks5://bob:hunter2-pw@10.0.0.9:1080"}]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/adm/keys",
                Some(json!({"keys": [{"key": KEY_B, "egress_proxy": "gopher://x"}]})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("egress_proxy"),
            "{v}"
        );

        for path in [
            "/admin/services",
            "/admin/services/adm",
            "/admin/services/adm/keys",
        ] {
            let text = app
                .http
                .get(app.url(path))
                .bearer_auth(&app.token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for secret in ["s3cr3t-pw", "alice", "hunter2-pw", "bob"] {
                assert!(!text.contains(secret), "{path} shows {secret}: {text}");
            }
        }
        let (_, v) = app.admin("GET", "/admin/services/adm/keys", None).await;
        assert_eq!(v["items"][0]["egress_proxy"], "socks5://***@10.0.0.9:1080");

        // At rest the proxy is sealed like a key.
        use sea_orm::EntityTrait;
        let row = keygate::db::entity::service::Entity::find()
            .all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.slug == "adm")
            .unwrap();
        let stored = row.egress_proxy.unwrap();
        assert!(
            stored.starts_with("v2:") && !stored.contains("s3cr3t"),
            "{stored}"
        );

        let v = patch(
            &app,
            "/admin/services/adm",
            json!({"egress_proxy": "", "tls_ca_pem": null}),
        )
        .await;
        assert_eq!(v["egress_proxy"], Value::Null, "{v}");
        assert_eq!(v["tls_ca_sha256"], json!([]));
    }
);
