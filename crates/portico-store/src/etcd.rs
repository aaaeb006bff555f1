//! etcd (v3 API, through `etcd-client`) as the store of a cluster: the same keys as the state
//! directory under a prefix (`portico/` by default), the same bytes.
//!
//! Locks are a key created only if absent (`create_revision == 0`) and bound to a lease with a
//! TTL, kept alive while the holder works; a holder that dies loses it when the lease expires.
//! etcd's lease alone does not guarantee mutual exclusion (a paused holder's lease can expire),
//! so every write made under a lock goes through [`Lock::put`], a transaction that compares the
//! lock key's create revision with the one this holder made: a holder that lost the lock cannot
//! write.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, WatchOptions,
};

use crate::{check_key, Batch, Entry, Lock, Store, MAX_REQUEST_BYTES, MAX_TXN_OPS};

/// Keys per page when reading a range: a zone of a million names is read in pages, all at one
/// revision. A page of large values (names with big TXT sets) can exceed what one gRPC answer
/// may carry: such a page is asked for again with half the keys, down to one.
const PAGE: i64 = 2000;
/// The largest gRPC answer a range read accepts (tonic's default is 4 MiB). Portico writes no
/// value above etcd's default request limit (1.5 MiB, [`MAX_REQUEST_BYTES`]), so a page of one
/// key always fits.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Transactions of a bulk write (`put_many`) in flight at once: etcd commits concurrent
/// proposals together, so a new zone generation is not written one fsync per 128 keys.
const IN_FLIGHT: usize = 8;

/// How long one etcd call may take before the store reports etcd unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS towards etcd: a CA to trust and optionally a client certificate.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    client: Client,
    /// A runtime of the store's own on a thread of its own: callers on any runtime (or none)
    /// hand it the call and wait for the answer on a channel.
    rt: tokio::runtime::Handle,
}

fn unreachable(endpoints: &[String], e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("etcd {} unreachable: {e}", endpoints.join(",")),
    )
}

impl Etcd {
    /// Connects (lazily: a node starts even while etcd is down, and serves its local cache).
    pub fn connect(endpoints: &[String], prefix: &str, tls: Option<EtcdTls>) -> io::Result<Etcd> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("portico-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                // Serves the store's calls for the life of the process.
                rt.block_on(std::future::pending::<()>());
            })?;
        let rt = rx
            .recv()
            .map_err(|_| io::Error::other("the etcd thread did not start"))??;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(t) = tls {
            let mut o = etcd_client::TlsOptions::new();
            if let Some(ca) = t.ca_pem {
                o = o.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let (Some(c), Some(k)) = (t.cert_pem, t.key_pem) {
                o = o.identity(etcd_client::Identity::from_pem(c, k));
            }
            opts = opts.with_tls(o);
        }
        let eps = endpoints.to_vec();
        let client = run(&rt, async move {
            Client::connect(eps, Some(opts))
                .await
                .map_err(io::Error::other)
        })??;
        Ok(Etcd {
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_string(),
            client,
            rt,
        })
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// Every key under `prefix` (with values unless `keys_only`; only those changed at or after
    /// `min_mod` when it is above 0) as of `revision` (0: the revision of the first page), with
    /// the revision read at. Page by page, each call with its own timeout: a large range takes
    /// as long as it takes, and a stalled etcd still fails within CALL_TIMEOUT.
    fn pages(
        &self,
        prefix: &str,
        keys_only: bool,
        min_mod: i64,
        revision: i64,
    ) -> io::Result<(i64, Vec<KeyValue>)> {
        let start = self.key(prefix);
        let end = prefix_end(&start);
        let mut from = if start.is_empty() { vec![0] } else { start };
        let mut rev = revision;
        let mut out = Vec::new();
        let mut limit = PAGE;
        loop {
            let key = from.clone();
            let mut c = self
                .client
                .kv_client()
                .max_decoding_message_size(MAX_ANSWER_BYTES);
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if rev > 0 {
                o = o.with_revision(rev);
            }
            if keys_only {
                o = o.with_keys_only();
            }
            if min_mod > 0 {
                o = o.with_min_mod_revision(min_mod);
            }
            let mut res = match self.call_raw(async move { c.get(key, Some(o)).await })? {
                Ok(res) => res,
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::OutOfRange && limit > 1 =>
                {
                    // The page's answer was over MAX_ANSWER_BYTES: the same keys in smaller
                    // pages (and the rest of the range too, as its values are likely alike).
                    limit = (limit / 2).max(1);
                    continue;
                }
                Err(e) => return Err(unreachable(&self.endpoints, e)),
            };
            if rev <= 0 {
                rev = res.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = res.more();
            let kvs = res.take_kvs();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0); // the next key after it
            }
            let done = !more || kvs.is_empty();
            out.extend(kvs);
            if done {
                return Ok((rev, out));
            }
        }
    }

    /// Runs one etcd call on the store's runtime, bounded by [`CALL_TIMEOUT`]; etcd's own
    /// answer, error or not, is the inner result.
    fn call_raw<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> io::Result<Result<T, etcd_client::Error>> {
        let eps = self.endpoints.clone();
        run(&self.rt, async move {
            tokio::time::timeout(CALL_TIMEOUT, f)
                .await
                .map_err(|_| unreachable(&eps, "no answer within 5 s"))
        })?
    }

    /// Runs one etcd call on the store's runtime, bounded by [`CALL_TIMEOUT`].
    fn call<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> io::Result<T> {
        self.call_raw(f)?
            .map_err(|e| unreachable(&self.endpoints, e))
    }
}

/// Runs `f` on `rt` and waits for it on this thread (never inside `rt` itself).
fn run<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("the etcd runtime stopped"))
}

impl Store for Etcd {
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        check_key(key)?;
        let (mut c, k) = (self.client.clone(), self.key(key));
        let res = self.call(async move { c.get(k, None).await })?;
        Ok(res.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn put(&self, key: &str, value: &[u8], _mode: u32) -> io::Result<()> {
        check_key(key)?;
        let (mut c, k, v) = (self.client.clone(), self.key(key), value.to_vec());
        self.call(async move { c.put(k, v, None).await })?;
        Ok(())
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out: Vec<String> = self
            .pages(prefix, true, 0, 0)?
            .1
            .iter()
            .filter_map(|kv| {
                let k = std::str::from_utf8(kv.key()).ok()?;
                k.strip_prefix(&self.prefix).map(str::to_string)
            })
            .filter(|k| !k.starts_with(".locks/"))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        check_key(key)?;
        let (mut c, k) = (self.client.clone(), self.key(key));
        self.call(async move { c.delete(k, None).await })?;
        Ok(())
    }

    fn try_lock(&self, name: &str, ttl: Duration) -> io::Result<Option<Box<dyn Lock>>> {
        check_key(name)?;
        let key = self.key(&format!(".locks/{name}"));
        let ttl_s = ttl.as_secs().max(2) as i64;
        let mut c = self.client.clone();
        let lease = self
            .call(async move { c.lease_grant(ttl_s, None).await })?
            .id();
        let (mut c, k) = (self.client.clone(), key.clone());
        let holder = format!("{}:{}", hostname(), std::process::id());
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k.clone(),
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(k.clone(), None)]);
        let res = self.call(async move { c.txn(txn).await })?;
        if !res.succeeded() {
            let mut c = self.client.clone();
            let _ = self.call(async move { c.lease_revoke(lease).await });
            return Ok(None);
        }
        let revision = res.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Box::new(EtcdLock {
            store: Arc::new(self.clone()),
            key,
            lease,
            revision,
        })))
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {:?})",
            self.endpoints.join(","),
            self.prefix
        )
    }

    fn put_if(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        _mode: u32,
    ) -> io::Result<bool> {
        check_key(key)?;
        let k = self.key(key);
        let cmp = match expected {
            None => Compare::create_revision(k.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::value(k.clone(), CompareOp::Equal, v.to_vec()),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(k, value.to_vec(), None)]);
        let mut c = self.client.clone();
        Ok(self.call(async move { c.txn(txn).await })?.succeeded())
    }

    fn updates_since(
        &self,
        prefixes: &[&str],
        revision: u64,
    ) -> io::Result<Option<(u64, Vec<Entry>)>> {
        let min = (revision as i64).saturating_add(1);
        // The first range fixes the revision; the others are read at it.
        let (mut now, mut kvs) = (0, Vec::new());
        for prefix in prefixes {
            let (rev, found) = self.pages(prefix, false, min, now)?;
            now = rev;
            kvs.extend(found);
        }
        let entries = kvs
            .iter()
            .filter_map(|kv| {
                let k = std::str::from_utf8(kv.key()).ok()?;
                let k = k.strip_prefix(&self.prefix)?;
                (!k.starts_with(".locks/")).then(|| (k.to_string(), kv.value().to_vec()))
            })
            .collect();
        Ok(Some((now.max(0) as u64, entries)))
    }

    fn get_at(&self, key: &str) -> io::Result<(u64, Option<Vec<u8>>)> {
        check_key(key)?;
        let (mut c, k) = (self.client.clone(), self.key(key));
        let res = self.call(async move { c.get(k, None).await })?;
        let rev = res.header().map(|h| h.revision()).unwrap_or(0).max(0) as u64;
        Ok((rev, res.kvs().first().map(|kv| kv.value().to_vec())))
    }

    fn scan(&self, prefix: &str, revision: u64) -> io::Result<Vec<Entry>> {
        Ok(self
            .pages(prefix, false, 0, revision as i64)?
            .1
            .into_iter()
            .filter_map(|kv| {
                let k = std::str::from_utf8(kv.key()).ok()?;
                let k = k.strip_prefix(&self.prefix)?.to_string();
                Some((k, kv.value().to_vec()))
            })
            .collect())
    }

    fn apply(&self, batch: &Batch) -> io::Result<bool> {
        for (k, _) in &batch.puts {
            check_key(k)?;
        }
        if batch.ops() > MAX_TXN_OPS || batch.bytes() > MAX_REQUEST_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} operations of {} bytes exceed etcd's transaction limits (--max-txn-ops {MAX_TXN_OPS}, --max-request-bytes {MAX_REQUEST_BYTES})",
                    batch.ops(),
                    batch.bytes()
                ),
            ));
        }
        let mut ops = Vec::with_capacity(batch.ops());
        for p in &batch.delete_prefixes {
            ops.push(TxnOp::delete(
                self.key(p),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        for k in &batch.deletes {
            ops.push(TxnOp::delete(self.key(k), None));
        }
        for (k, v) in &batch.puts {
            ops.push(TxnOp::put(self.key(k), v.clone(), None));
        }
        let compares: Vec<Compare> = batch
            .compares
            .iter()
            .map(|(k, v)| {
                let k = self.key(k);
                match v {
                    None => Compare::create_revision(k, CompareOp::Equal, 0),
                    Some(v) => Compare::value(k, CompareOp::Equal, v.clone()),
                }
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let mut c = self.client.clone();
        Ok(self.call(async move { c.txn(txn).await })?.succeeded())
    }

    fn put_many(&self, entries: Vec<Entry>) -> io::Result<()> {
        for (k, _) in &entries {
            check_key(k)?;
        }
        // Transactions of at most MAX_TXN_OPS puts and a third of the request limit each.
        let mut txns: Vec<Vec<TxnOp>> = vec![Vec::new()];
        let mut bytes = 0;
        for (k, v) in entries {
            let size = k.len() + v.len() + 16;
            let full = txns.last().is_some_and(|t| t.len() >= MAX_TXN_OPS)
                || bytes + size > MAX_REQUEST_BYTES / 3;
            if full && txns.last().is_some_and(|t| !t.is_empty()) {
                txns.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(t) = txns.last_mut() {
                t.push(TxnOp::put(self.key(&k), v, None));
            }
        }
        let c = self.client.clone();
        let eps = self.endpoints.clone();
        run(&self.rt, async move {
            let mut pending = tokio::task::JoinSet::new();
            for ops in txns.into_iter().filter(|t| !t.is_empty()) {
                while pending.len() >= IN_FLIGHT {
                    if let Some(r) = pending.join_next().await {
                        r.map_err(io::Error::other)??;
                    }
                }
                let mut c = c.clone();
                let eps = eps.clone();
                pending.spawn(async move {
                    match tokio::time::timeout(CALL_TIMEOUT, c.txn(Txn::new().and_then(ops))).await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(unreachable(&eps, e)),
                        Err(_) => Err(unreachable(&eps, "no answer within 5 s")),
                    }
                });
            }
            while let Some(r) = pending.join_next().await {
                r.map_err(io::Error::other)??;
            }
            Ok(())
        })?
    }

    fn watch(&self, prefixes: &[&str]) -> Option<tokio::sync::watch::Receiver<u64>> {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let tx = Arc::new(tx);
        for prefix in prefixes {
            let (client, key, tx) = (self.client.clone(), self.key(prefix), tx.clone());
            self.rt.spawn(follow_prefix(client, key, tx));
        }
        Some(rx)
    }
}

/// The end of the range of keys that start with `prefix` (etcd's "range end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// Keeps one etcd watch on `key` (a prefix) open for as long as someone listens, bumping `tx`
/// on every batch of events. A broken stream (etcd down, leader change) is opened again after a
/// pause, and the reopening bumps `tx` too: writes made while the stream was down are then read
/// by the follower's next `updates_since`.
async fn follow_prefix(client: Client, key: Vec<u8>, tx: Arc<tokio::sync::watch::Sender<u64>>) {
    let bump = |tx: &tokio::sync::watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    while !tx.is_closed() {
        let mut c = client.clone();
        let opened = tokio::time::timeout(
            CALL_TIMEOUT,
            c.watch(key.clone(), Some(WatchOptions::new().with_prefix())),
        )
        .await;
        if let Ok(Ok((_watcher, mut stream))) = opened {
            bump(&tx);
            // `_watcher` is kept: dropping it would close the request side of the stream.
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(r)) if r.canceled() => break,
                        Ok(Some(r)) if !r.events().is_empty() => bump(&tx),
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                    _ = tx.closed() => return,
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

struct EtcdLock {
    store: Arc<Etcd>,
    key: Vec<u8>,
    lease: i64,
    /// The revision at which this holder created the lock key: the fence for its writes.
    revision: i64,
}

impl Lock for EtcdLock {
    fn keep_alive(&self) -> io::Result<()> {
        let (mut c, lease) = (self.store.client.clone(), self.lease);
        let ttl = self.store.call(async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map(|m| m.ttl()).unwrap_or(0))
        })?;
        if ttl <= 0 {
            return Err(io::Error::other(
                "the lock's lease expired: another node may hold it now",
            ));
        }
        Ok(())
    }

    fn put(&self, key: &str, value: &[u8], _mode: u32) -> io::Result<()> {
        check_key(key)?;
        let (mut c, k, v) = (
            self.store.client.clone(),
            self.store.key(key),
            value.to_vec(),
        );
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::put(k, v, None)]);
        let res = self.store.call(async move { c.txn(txn).await })?;
        if !res.succeeded() {
            return Err(io::Error::other(
                "lost the lock before writing (its lease expired): nothing was written",
            ));
        }
        Ok(())
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        let (mut c, lease) = (self.store.client.clone(), self.lease);
        // Revoking the lease deletes the lock key with it.
        let _ = self.store.call(async move { c.lease_revoke(lease).await });
    }
}
