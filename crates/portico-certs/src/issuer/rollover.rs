//! Adopting an ACME account whose key instant-acme cannot sign with (certbot's RSA account
//! keys): one account key rollover (RFC 8555 §7.3.5) signed with the old key moves the account
//! to a fresh ECDSA P-256 key, which Portico keeps as its credentials. The account URL — what
//! CAA `accounturi` names and what ARI's rate-limit exemption is tied to — stays the same.
//!
//! Written by hand because instant-acme's signer is crate-private and P-256 only; this is the
//! one request Portico signs itself, and it signs it with ring (RS256 for the old key, ES256
//! for the new one) as instant-acme does for everything else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rsa::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};

/// The most a CA's answer to these few requests may be (a directory, a problem document).
const MAX_BODY: usize = 256 * 1024;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// An RSA private key from a JWK (RFC 7518 §6.3.2: `n`, `e`, `d`, `p`, `q`), as certbot's
/// `private_key.json` holds it, ready to sign RS256.
pub fn rsa_from_jwk(jwk: &Value) -> Result<RsaKeyPair, String> {
    let part = |k: &str| -> Result<rsa::BigUint, String> {
        let text = jwk[k]
            .as_str()
            .ok_or_else(|| format!("the account key has no {k:?}"))?;
        let bytes = B64
            .decode(text.trim_end_matches('='))
            .map_err(|e| format!("the account key's {k:?}: {e}"))?;
        Ok(rsa::BigUint::from_bytes_be(&bytes))
    };
    if jwk["kty"].as_str() != Some("RSA") {
        return Err(format!(
            "the account key is {:?}, not RSA",
            jwk["kty"].as_str().unwrap_or("of no type")
        ));
    }
    let key = rsa::RsaPrivateKey::from_components(
        part("n")?,
        part("e")?,
        part("d")?,
        vec![part("p")?, part("q")?],
    )
    .map_err(|e| format!("the account key: {e}"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| format!("the account key: {e}"))?;
    RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|e| format!("the account key: {e}"))
}

/// The public half of `key` as a JWK (what `oldKey` in the rollover names).
fn rsa_public_jwk(key: &RsaKeyPair) -> Value {
    let c: ring::rsa::PublicKeyComponents<Vec<u8>> = key.public().into();
    let strip = |v: &[u8]| B64.encode(&v[v.iter().take_while(|b| **b == 0).count()..]);
    json!({"e": strip(&c.e), "kty": "RSA", "n": strip(&c.n)})
}

/// Flattened JWS JSON (RFC 7515 §7.2.2) over `payload` with `protected`, signed by `sign`.
fn jws(
    protected: &Value,
    payload: &str,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Value, String> {
    let protected = B64.encode(protected.to_string());
    let payload = B64.encode(payload);
    let signature = sign(format!("{protected}.{payload}").as_bytes())?;
    Ok(json!({"protected": protected, "payload": payload, "signature": B64.encode(signature)}))
}

/// Rolls the account at `uri` (signed by `old`) over to a new P-256 key at the CA whose
/// directory is `directory`; returns the new key's PKCS#8 document.
pub async fn rollover(
    connector: Connector,
    directory: &str,
    uri: &str,
    old: &RsaKeyPair,
) -> Result<Vec<u8>, String> {
    let client = client(connector);
    let dir = get_directory(&client, directory).await?;
    let url = |k: &str| {
        dir[k]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("the directory {directory} has no {k}"))
    };
    let (new_nonce, key_change) = (url("newNonce")?, url("keyChange")?);
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "cannot generate a P-256 key".to_string())?;
    let new = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .map_err(|_| "cannot read the generated P-256 key".to_string())?;
    let point = new.public_key().as_ref();
    let new_jwk = json!({
        "crv": "P-256", "kty": "EC",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
    });
    // The inner JWS: the new key signs that it takes over the account from the old one.
    let inner = jws(
        &json!({"alg": "ES256", "jwk": new_jwk, "url": key_change}),
        &json!({"account": uri, "oldKey": rsa_public_jwk(old)}).to_string(),
        |m| {
            new.sign(&rng, m)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "cannot sign with the new key".to_string())
        },
    )?
    .to_string();
    let (_, mut nonce, _) = send(&client, http::Method::HEAD, &new_nonce, None).await?;
    // A CA may refuse a nonce (badNonce); its answer carries a fresh one to try again with.
    for _ in 0..4 {
        let Some(n) = nonce.take() else {
            return Err(format!("{new_nonce} gave no Replay-Nonce"));
        };
        let outer = jws(
            &json!({"alg": "RS256", "kid": uri, "nonce": n, "url": key_change}),
            &inner,
            |m| {
                let mut sig = vec![0; old.public().modulus_len()];
                old.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut sig)
                    .map_err(|_| "cannot sign with the account's RSA key".to_string())?;
                Ok(sig)
            },
        )?;
        let (status, fresh, body) = send(
            &client,
            http::Method::POST,
            &key_change,
            Some(outer.to_string()),
        )
        .await?;
        if status.is_success() {
            return Ok(pkcs8.as_ref().to_vec());
        }
        let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let kind = problem["type"].as_str().unwrap_or("");
        if kind.ends_with(":badNonce") && fresh.is_some() {
            nonce = fresh;
            continue;
        }
        return Err(format!(
            "the CA refused the key rollover ({status}): {} {}",
            kind,
            problem["detail"].as_str().unwrap_or("")
        ));
    }
    Err("the CA refused every nonce of the key rollover".into())
}

fn client(connector: Connector) -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// The CA's directory object (RFC 8555 §7.1.1).
pub async fn directory(connector: Connector, url: &str) -> Result<Value, String> {
    get_directory(&client(connector), url).await
}

async fn get_directory(client: &Client, url: &str) -> Result<Value, String> {
    let (status, _, body) = send(client, http::Method::GET, url, None).await?;
    if !status.is_success() {
        return Err(format!("the directory {url} answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the directory {url}: {e}"))
}

/// One request; the status, the `Replay-Nonce` and the body (at most `MAX_BODY`).
async fn send(
    client: &Client,
    method: http::Method,
    url: &str,
    jose: Option<String>,
) -> Result<(http::StatusCode, Option<String>, Bytes), String> {
    let mut req = http::Request::builder().method(method).uri(url);
    if jose.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/jose+json");
    }
    let req = req
        .body(Full::new(Bytes::from(jose.unwrap_or_default())))
        .map_err(|e| format!("{url}: {e}"))?;
    let rsp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer in 30 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = rsp.status();
    let nonce = rsp
        .headers()
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = http_body_util::Limited::new(rsp.into_body(), MAX_BODY);
    let body = tokio::time::timeout(std::time::Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| format!("{url}: the answer stalled"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    Ok((status, nonce, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWK made from an RSA key round-trips to a key that signs, and its public half is the
    /// key's own `n` and `e`.
    #[test]
    fn an_rsa_jwk_becomes_a_signing_key() {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let b = |n: &rsa::BigUint| B64.encode(n.to_bytes_be());
        let jwk = json!({
            "kty": "RSA", "n": b(key.n()), "e": b(key.e()), "d": b(key.d()),
            "p": b(&key.primes()[0]), "q": b(&key.primes()[1]),
        });
        let pair = rsa_from_jwk(&jwk).unwrap();
        assert_eq!(rsa_public_jwk(&pair)["n"], jwk["n"]);
        assert_eq!(rsa_public_jwk(&pair)["e"], jwk["e"]);
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            b"m",
            &mut sig,
        )
        .unwrap();
        let mut ec = jwk.clone();
        ec["kty"] = "EC".into();
        assert!(rsa_from_jwk(&ec).unwrap_err().contains("not RSA"));
        let mut short = jwk;
        short.as_object_mut().unwrap().remove("q");
        assert!(rsa_from_jwk(&short).unwrap_err().contains("\"q\""));
    }

    /// A test double of a CA's directory, newNonce and keyChange endpoints (plain HTTP on
    /// loopback): Pebble rejects nonces only at random (`PEBBLE_WFE_NONCEREJECT`), so the
    /// badNonce retry is driven here deterministically. `answers` are keyChange's answers in
    /// turn (status, problem type); each carries a fresh nonce. Returns the base URL and the
    /// nonces keyChange was signed with.
    async fn fake_ca(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let answers = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
        let (b, s) = (base.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let (base, seen, answers) = (b.clone(), s.clone(), answers.clone());
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (base, seen, answers) = (base.clone(), seen.clone(), answers.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            // Every answer carries a nonce never given before.
                            static ISSUED: std::sync::atomic::AtomicUsize =
                                std::sync::atomic::AtomicUsize::new(0);
                            let n = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let rsp = hyper::Response::builder()
                                .header("replay-nonce", format!("nonce-{n}"));
                            let rsp = match path.as_str() {
                            "/dir" => rsp.status(200).body(Full::new(Bytes::from(
                                json!({"newNonce": format!("{base}/nonce"), "keyChange": format!("{base}/kc")})
                                    .to_string(),
                            ))),
                            "/nonce" => rsp.status(200).body(Full::new(Bytes::new())),
                            _ => {
                                let jws: Value = serde_json::from_slice(&body).unwrap();
                                let protected: Value = serde_json::from_slice(
                                    &B64.decode(jws["protected"].as_str().unwrap()).unwrap(),
                                )
                                .unwrap();
                                seen.lock()
                                    .unwrap()
                                    .push(protected["nonce"].as_str().unwrap().to_string());
                                let (status, kind) =
                                    answers.lock().unwrap().pop_front().unwrap_or((500, "x"));
                                rsp.status(status).body(Full::new(Bytes::from(
                                    json!({"type": kind, "detail": "as the test asks"}).to_string(),
                                )))
                            }
                        };
                            Ok::<_, std::convert::Infallible>(rsp.unwrap())
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc),
                );
            }
        });
        (base, seen)
    }

    fn plain_http_connector() -> Connector {
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .build()
    }

    fn rsa_key() -> RsaKeyPair {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        RsaKeyPair::from_pkcs8(key.to_pkcs8_der().unwrap().as_bytes()).unwrap()
    }

    /// One rollover of a fresh RSA account key at the test double.
    async fn roll(base: &str) -> Result<Vec<u8>, String> {
        let dir = format!("{base}/dir");
        rollover(plain_http_connector(), &dir, "http://ca/acct/1", &rsa_key()).await
    }

    const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

    #[tokio::test]
    async fn a_refused_nonce_is_replaced_by_the_one_the_refusal_carries() {
        let (base, seen) = fake_ca(vec![(400, BAD_NONCE), (400, BAD_NONCE), (200, "")]).await;
        let key = roll(&base).await.unwrap();
        assert!(EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key,
            &SystemRandom::new()
        )
        .is_ok());
        // newNonce's nonce first, then each refusal's own: never one twice.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        let mut distinct = seen.clone();
        distinct.dedup();
        assert_eq!(distinct, seen, "a refused nonce was sent again");
    }

    #[tokio::test]
    async fn rollover_gives_up_after_four_refused_nonces_and_at_once_on_other_errors() {
        let (base, seen) = fake_ca(vec![(400, BAD_NONCE); 6]).await;
        let e = roll(&base).await.unwrap_err();
        assert!(e.contains("refused every nonce"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 4);

        let (base, seen) = fake_ca(vec![(403, "urn:ietf:params:acme:error:unauthorized")]).await;
        let e = roll(&base).await.unwrap_err();
        assert!(e.contains("403") && e.contains("unauthorized"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
