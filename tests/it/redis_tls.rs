//! Redis over TLS (`rediss://`): a Redis that only speaks TLS, with a certificate from a private
//! CA that `redis.ca_file` names.
use std::process::{Command, Stdio};

use secrecy::SecretString;

use crate::harness::{Backend, Shared, TestApp};
use crate::mock;
use crate::servers::{free_port, wait_for_port};

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_redis_with_a_private_ca_coordinates_requests_over_rediss() {
    let dir = tempfile::tempdir().unwrap();
    let crate::servers::PrivateCa {
        ca_pem: ca,
        leaf_pem: leaf,
        key_pem: key,
        ..
    } = crate::servers::private_ca();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), &ca).unwrap();
    std::fs::write(path("redis.pem"), &leaf).unwrap();
    std::fs::write(path("redis.key"), &key).unwrap();
    let port = free_port();
    // No plaintext port at all: anything that works went over TLS.
    let _redis = Kill(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(path("redis.pem"))
            .arg("--tls-key-file")
            .arg(path("redis.key"))
            .arg("--tls-ca-cert-file")
            .arg(path("ca.pem"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_for_port(port);

    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.redis.url = Some(SecretString::from(format!("rediss://127.0.0.1:{port}")));
    // Without the CA the server's certificate is not trusted: the replica does not start.
    let err = keygate::App::build(shared.config.clone())
        .await
        .err()
        .expect("an untrusted Redis certificate is refused");
    assert!(err.to_string().contains("cannot connect to Redis"), "{err}");

    shared.config.redis.ca_file = Some(path("ca.pem"));
    let up = mock::start().await;
    let app = TestApp::spawn_with(&shared.config).await;
    assert_eq!(app.state.coord.backend(), "redis");
    let ak = app
        .with_service("tls", &up.base, &["sk-redis-tls-key-0001"])
        .await;
    for _ in 0..3 {
        assert_eq!(app.chat("tls", &ak).await.status(), 200);
    }
    let (s, keys) = app.admin("GET", "/admin/services/tls/keys", None).await;
    assert_eq!(s, 200);
    // The lease counters live in the TLS Redis: nothing is held once the answers are in.
    assert_eq!(keys["items"][0]["in_flight"], 0);
    assert!(!app.state.coord.degraded());
}
