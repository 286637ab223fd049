//! Redis Sentinel: a primary that Sentinels watch and replace when it fails. keygate asks the
//! Sentinels for the primary (the `redis` crate's `SentinelClient`, which also checks with `ROLE`
//! that the node it names is a primary), keeps one multiplexed connection to it, and asks again:
//! - when a Sentinel announces `+switch-master` for our master name (a pub/sub subscription on
//!   every Sentinel): after a forced or coordinated failover the old primary stays writable for
//!   seconds until the Sentinels demote it, and writes there would be lost;
//! - when a call on the primary fails at the connection level (the old primary went away, or was
//!   demoted and closed its clients): the call fails (it may have run, so it is not repeated) and
//!   feeds the outage mode like any Redis outage, and the next primary is looked up in the
//!   background;
//! - when the node answers READONLY (it was demoted while we stayed connected): the command was
//!   refused, so it is sent again once on the primary the Sentinels name now.
//!
//! Configured as one URL, `redis+sentinel://[user:password@]host1:26379,host2:26379/mymaster`
//! (`rediss+sentinel://` for TLS to the Sentinels and the data nodes): the credentials are the
//! data nodes'; Sentinels that require a password get `redis.sentinel_password`.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ConnectionAddr, IntoConnectionInfo, RedisError, RedisResult, TlsCertificates, TlsMode,
};

/// Port of a Sentinel given without one.
const SENTINEL_PORT: u16 = 26379;
/// One lookup of the primary (asking the Sentinels, checking its ROLE, connecting) gives up after
/// this long; the next failed call or announcement starts another.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Right after a `+switch-master`, a Sentinel that has not heard of it yet may still name the old
/// primary: ask again this often until one names the new one (within `RESOLVE_TIMEOUT`).
const STALE_RETRY: Duration = Duration::from_millis(50);

/// `redis+sentinel://` / `rediss+sentinel://` URLs, parsed. No `Debug`: it holds the password.
pub struct SentinelUrl {
    pub tls: bool,
    /// The Sentinels, `(host, port)`.
    pub nodes: Vec<(String, u16)>,
    /// The master name the Sentinels monitor (`sentinel monitor <name> ...`).
    pub master: String,
    /// The data nodes' ACL user and password.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// True when `url` names Sentinels rather than a Redis node.
pub fn is_sentinel_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme.eq_ignore_ascii_case("redis+sentinel") || scheme.eq_ignore_ascii_case("rediss+sentinel")
}

impl SentinelUrl {
    /// Parses `redis+sentinel://[user:password@]host[:port][,host[:port]...]/master`. Errors
    /// never repeat the URL (it may hold a password).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow::anyhow!("a Sentinel URL starts with redis+sentinel://"))?;
        let tls = if scheme.eq_ignore_ascii_case("redis+sentinel") {
            false
        } else if scheme.eq_ignore_ascii_case("rediss+sentinel") {
            true
        } else {
            anyhow::bail!("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://");
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let master = path.trim_end_matches('/');
        anyhow::ensure!(
            !master.is_empty() && !master.contains('/') && !master.contains('?'),
            "a Sentinel URL ends with the master name: redis+sentinel://host1:26379,host2:26379/mymaster"
        );
        let master = decode(master)?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (
                    Some(decode(user)?).filter(|u| !u.is_empty()),
                    Some(decode(pw)?).filter(|p| !p.is_empty()),
                ),
                // `redis://password@host` is how some tools write a password alone.
                None => (None, Some(decode(u)?).filter(|p| !p.is_empty())),
            },
        };
        let mut nodes = Vec::new();
        for node in hosts.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            // `[::1]:26379`, `host:26379` or `host`.
            let (host, port) = if let Some(v6) = node.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| anyhow::anyhow!("a Sentinel address lacks its closing ']'"))?;
                (h, after.strip_prefix(':'))
            } else {
                match node.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (node, None),
                }
            };
            let port = match port {
                Some(p) => p.parse::<u16>().map_err(|_| {
                    anyhow::anyhow!("a Sentinel address has a bad port ({host}:{p})")
                })?,
                None => SENTINEL_PORT,
            };
            anyhow::ensure!(!host.is_empty(), "a Sentinel address lacks its host");
            nodes.push((host.to_string(), port));
        }
        anyhow::ensure!(
            !nodes.is_empty(),
            "a Sentinel URL names at least one Sentinel"
        );
        Ok(Self {
            tls,
            nodes,
            master,
            username,
            password,
        })
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_string(), port)
        }
    }
}

fn decode(s: &str) -> anyhow::Result<String> {
    Ok(percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| anyhow::anyhow!("a Sentinel URL part is not UTF-8 once decoded"))?
        .into_owned())
}

/// The primary we are connected to, and which connection that is (a failed call names it, so
/// only the first failure of a connection replaces it).
struct Primary {
    conn: MultiplexedConnection,
    /// `host:port` as the Sentinels name it.
    addr: String,
    generation: u64,
}

struct Inner {
    /// Asked for the primary; one lookup at a time.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    primary: ArcSwap<Primary>,
    config: redis::AsyncConnectionConfig,
    master: String,
    /// A background lookup is under way: failed calls need not start another.
    resolving: AtomicBool,
    /// Dropped with the last handle: the `+switch-master` watchers end.
    _stop: tokio::sync::watch::Sender<()>,
}

/// A connection to the primary the Sentinels name, replaced when they name another. Cheap to
/// clone; every clone shares the one multiplexed connection.
#[derive(Clone)]
pub struct SentinelConn(Arc<Inner>);

impl SentinelConn {
    /// Asks the Sentinels for the primary, connects to it, and starts watching for failovers.
    /// `sentinel_password` is for Sentinels with `requirepass`; `ca_pem` (a private CA) is
    /// trusted for TLS to the Sentinels and the data nodes.
    pub async fn connect(
        url: &SentinelUrl,
        sentinel_password: Option<&str>,
        ca_pem: Option<Vec<u8>>,
        config: redis::AsyncConnectionConfig,
    ) -> anyhow::Result<Self> {
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: ca_pem.clone(),
        };
        let mut b = SentinelClientBuilder::new(
            url.nodes.iter().map(|(h, p)| url.addr(h, *p)),
            &url.master,
            SentinelServerType::Master,
        )?;
        if let Some(u) = &url.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &url.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(p) = sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        if url.tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if ca_pem.is_some() {
                b = b
                    .set_client_to_redis_certificates(certs())
                    .set_client_to_sentinel_certificates(certs());
            }
        }
        let mut client = b.build()?;
        let (conn, addr) = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            let (primary, addr) = primary_of(&mut client).await?;
            let conn = primary
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok::<_, RedisError>((conn, addr))
        })
        .await
        .map_err(|_| anyhow::anyhow!("the Sentinels did not name a primary within 5 s"))?
        .map_err(|e| {
            // NOAUTH from a Sentinel means REDIS_SENTINEL_PASSWORD; from the primary, the URL's.
            anyhow::anyhow!(
                "no primary for {:?} from the Sentinels: {e} (the data nodes' password goes in \
                     the URL, the Sentinels' in REDIS_SENTINEL_PASSWORD)",
                url.master
            )
        })?;
        tracing::info!(master = %url.master, primary = %addr, "Redis primary found through Sentinel");
        let (stop, stopped) = tokio::sync::watch::channel(());
        let me = Self(Arc::new(Inner {
            sentinel: tokio::sync::Mutex::new(client),
            primary: ArcSwap::from_pointee(Primary {
                conn,
                addr,
                generation: 0,
            }),
            config,
            master: url.master.clone(),
            resolving: AtomicBool::new(false),
            _stop: stop,
        }));
        for (host, port) in &url.nodes {
            let info = url.addr(host, *port).into_connection_info()?;
            let info = match sentinel_password {
                Some(p) => {
                    let redis = info.redis_settings().clone().set_password(p);
                    info.set_redis_settings(redis)
                }
                None => info,
            };
            let client = match &ca_pem {
                Some(_) if url.tls => redis::Client::build_with_tls(info, certs())?,
                _ => redis::Client::open(info)?,
            };
            tokio::spawn(watch(
                Arc::downgrade(&me.0),
                client,
                format!("{host}:{port}"),
                stopped.clone(),
            ));
        }
        Ok(me)
    }

    /// The primary's address as the Sentinels named it (`host:port`).
    pub fn primary(&self) -> String {
        self.0.primary.load().addr.clone()
    }

    /// Asks the Sentinels for the primary and connects to it when it is another node than ours,
    /// or when ours failed (`failed` = the generation of the connection that failed; a newer
    /// one is kept). `stale`: an address a Sentinel just said is no longer the primary, asked
    /// past while Sentinels that have not heard yet still name it.
    async fn resolve(&self, failed: Option<u64>, stale: Option<&str>) -> RedisResult<()> {
        let mut client = self.0.sentinel.lock().await;
        let current = self.0.primary.load_full();
        if failed.is_some_and(|g| g != current.generation) {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let deadline = started + RESOLVE_TIMEOUT;
        loop {
            let found = tokio::time::timeout_at(deadline, primary_of(&mut client))
                .await
                .map_err(|_| {
                    RedisError::from((
                        redis::ErrorKind::Io,
                        "the Sentinels did not name a primary in time",
                    ))
                })?;
            let (primary, addr) = found?;
            if stale == Some(addr.as_str()) && tokio::time::Instant::now() + STALE_RETRY < deadline
            {
                tokio::time::sleep(STALE_RETRY).await;
                continue;
            }
            if failed.is_none() && addr == current.addr {
                return Ok(());
            }
            let conn = tokio::time::timeout_at(
                deadline,
                primary.get_multiplexed_async_connection_with_config(&self.0.config),
            )
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "connecting timed out")))??;
            let took_ms = started.elapsed().as_millis() as u64;
            if addr == current.addr {
                tracing::info!(master = %self.0.master, primary = %addr, took_ms, "reconnected to the Redis primary");
            } else {
                tracing::warn!(
                    master = %self.0.master,
                    from = %current.addr,
                    to = %addr,
                    took_ms,
                    "Redis primary replaced: connected to the one the Sentinels name now"
                );
                metrics::counter!(crate::telemetry::metrics::COORD_PRIMARY_CHANGES_TOTAL)
                    .increment(1);
            }
            self.0.primary.store(Arc::new(Primary {
                conn,
                addr,
                generation: current.generation + 1,
            }));
            return Ok(());
        }
    }

    /// The outage probe's call: true once the node we are connected to answers as a primary.
    /// A PING would not do: a demoted primary answers it (and READONLY to every write), so the
    /// replica would leave degraded mode only to fall back at its next request. When it is not a
    /// primary (or does not answer), the primary is looked up again.
    pub async fn answers_as_primary(&self) -> bool {
        let p = self.0.primary.load_full();
        let mut conn = p.conn.clone();
        let role: RedisResult<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await;
        let primary = match &role {
            Ok(redis::Value::Array(v)) => matches!(
                v.first(),
                Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
            ),
            _ => false,
        };
        if !primary {
            self.resolve_later(p.generation);
        }
        primary
    }

    /// A connection-level failure of `generation`: look the primary up again in the background
    /// (one lookup at a time; the callers meanwhile fail fast and feed the outage mode).
    fn resolve_later(&self, generation: u64) {
        if self.0.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.resolve(Some(generation), None).await {
                tracing::debug!(error = %e, "no Redis primary from the Sentinels yet");
            }
            me.0.resolving.store(false, Ordering::Release);
        });
    }

    /// What a failed call tells us: READONLY (`Retry`: refused, safe to send again once the
    /// primary is found), a connection failure (`Lost`), or neither.
    fn classify(e: &RedisError) -> Failure {
        // A transaction the replica refused (EXECABORT) ran none of its commands.
        let refused = |errs: std::sync::Arc<[(usize, redis::ServerError)]>| {
            errs.iter()
                .any(|(_, se)| se.kind() == Some(redis::ServerErrorKind::ReadOnly))
        };
        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            || e.clone().into_server_errors().is_some_and(refused)
        {
            Failure::Retry
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            Failure::Lost
        } else {
            Failure::Other
        }
    }
}

enum Failure {
    Retry,
    Lost,
    Other,
}

/// A client for the primary the Sentinels name (checked with ROLE by the crate), and its
/// `host:port`. Connecting is left to the caller, which does it only when the primary changed.
async fn primary_of(client: &mut SentinelClient) -> RedisResult<(redis::Client, String)> {
    let c = client.async_get_client().await?;
    let addr = match &c.get_connection_info().addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        ConnectionAddr::Unix(p) => p.display().to_string(),
        _ => "?".to_string(),
    };
    Ok((c, addr))
}

/// Subscribes to `+switch-master` on one Sentinel for as long as the store lives, and looks the
/// primary up again when the Sentinel announces ours moved. After each (re)subscription the
/// primary is checked too: an announcement may have gone by while the subscription was down.
async fn watch(
    inner: std::sync::Weak<Inner>,
    client: redis::Client,
    sentinel: String,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut first = true;
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            if !std::mem::take(&mut first)
                && let Some(inner) = inner.upgrade()
            {
                let _ = SentinelConn(inner).resolve(None, None).await;
            }
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                // `<master name> <old ip> <old port> <new ip> <new port>`
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let parts: Vec<&str> = payload.split_whitespace().collect();
                let Some(inner) = inner.upgrade() else {
                    return Ok(());
                };
                if let [name, old_ip, old_port, new_ip, new_port] = parts[..]
                    && name == inner.master
                {
                    tracing::info!(master = name, from = %format!("{old_ip}:{old_port}"), to = %format!("{new_ip}:{new_port}"), sentinel = %sentinel, "Sentinel announced a new Redis primary");
                    let old = format!("{old_ip}:{old_port}");
                    if let Err(e) = SentinelConn(inner).resolve(None, Some(&old)).await {
                        tracing::warn!(error = %e, "could not reach the new Redis primary yet");
                    }
                }
            }
            Ok::<_, RedisError>(())
        };
        tokio::select! {
            r = session => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, sentinel = %sentinel, "Sentinel subscription lost");
                }
            }
            _ = stopped.changed() => return,
        }
        if inner.strong_count() == 0 {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// A READONLY answer anywhere in a reply (a command's, or one of a pipeline's): the node is a
/// replica now. Redis refused those writes, so the call can be sent again to the primary.
fn readonly(v: &redis::Value) -> bool {
    match v {
        redis::Value::ServerError(e) => e.kind() == Some(redis::ServerErrorKind::ReadOnly),
        redis::Value::Array(vs) => vs.iter().any(readonly),
        _ => false,
    }
}

impl SentinelConn {
    /// What to do after a call on connection `generation` answered `r`: `true` when it should
    /// be sent again (READONLY, and the Sentinels named another primary, now in place).
    async fn after(&self, generation: u64, failure: Failure) -> bool {
        match failure {
            Failure::Retry => match self.resolve(Some(generation), None).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "READONLY, and no other primary from the Sentinels yet");
                    false
                }
            },
            Failure::Lost => {
                self.resolve_later(generation);
                false
            }
            Failure::Other => false,
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let p = self.0.primary.load_full();
            let mut conn = p.conn.clone();
            let r = conn.req_packed_command(cmd).await;
            let failure = match &r {
                Ok(v) if readonly(v) => Failure::Retry,
                Ok(_) => return r,
                Err(e) => Self::classify(e),
            };
            if self.after(p.generation, failure).await {
                let mut conn = self.0.primary.load().conn.clone();
                return conn.req_packed_command(cmd).await;
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let p = self.0.primary.load_full();
            let mut conn = p.conn.clone();
            let r = conn.req_packed_commands(pipeline, offset, count).await;
            let failure = match &r {
                Ok(vs) if vs.iter().any(readonly) => Failure::Retry,
                Ok(_) => return r,
                Err(e) => Self::classify(e),
            };
            if self.after(p.generation, failure).await {
                let mut conn = self.0.primary.load().conn.clone();
                return conn.req_packed_commands(pipeline, offset, count).await;
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.0.primary.load().conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_data_nodes_credentials() {
        let u = SentinelUrl::parse(
            "redis+sentinel://app:p%40ss@10.0.0.1:26380,sentinel-2,[::1]:26381/mymaster",
        )
        .unwrap();
        assert!(!u.tls);
        assert_eq!(
            u.nodes,
            vec![
                ("10.0.0.1".to_string(), 26380),
                ("sentinel-2".to_string(), 26379),
                ("::1".to_string(), 26381)
            ]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));

        let u = SentinelUrl::parse("rediss+sentinel://:secret@s1:26379/cache/").unwrap();
        assert!(u.tls);
        assert_eq!((u.username, u.password.as_deref()), (None, Some("secret")));
        assert_eq!(u.master, "cache");
        assert!(is_sentinel_url("REDIS+SENTINEL://s1/m"));
        assert!(!is_sentinel_url("redis://s1:6379"));
    }

    #[test]
    fn a_sentinel_url_without_master_or_sentinels_is_refused_without_echoing_the_password() {
        for bad in [
            "redis+sentinel://:hunter2@s1:26379",
            "redis+sentinel://:hunter2@s1:26379/",
            "redis+sentinel://:hunter2@/mymaster",
            "redis+sentinel://:hunter2@s1:port/mymaster",
            "redis://:hunter2@s1:26379/mymaster",
        ] {
            let err = SentinelUrl::parse(bad).err().expect(bad).to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
