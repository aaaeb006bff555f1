//! The ACME issuer (RFC 8555) on instant-acme: any directory URL, with `letsencrypt` and
//! `letsencrypt-staging` shortcuts; the account created on first use and kept per directory host
//! under `acme/accounts/<host>/` (0600); HTTP-01 answered by the load balancer's HTTP listeners.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use portico_config::files::write_atomic;

use std::sync::Arc;

use crate::challenge::{Dns01Publisher, Http01Tokens, TlsAlpn01Challenges};
use crate::storage::Issued;

pub struct AcmeIssuer {
    directory: String,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
    email: Option<String>,
    eab: Option<(String, Vec<u8>)>,
    ca_root: Option<PathBuf>,
    accounts: PathBuf,
    account: tokio::sync::Mutex<Option<Account>>,
}

/// `letsencrypt`, `letsencrypt-staging`, or a directory URL as given.
pub fn directory_url(d: &str) -> String {
    match d {
        "letsencrypt" => instant_acme::LetsEncrypt::Production.url().to_string(),
        "letsencrypt-staging" => instant_acme::LetsEncrypt::Staging.url().to_string(),
        other => other.to_string(),
    }
}

/// Where the ACME account for `directory` is kept in `state_dir`.
fn accounts_dir(state_dir: &Path, directory: &str) -> PathBuf {
    let url = directory_url(directory);
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("unknown")
        .replace(':', "_");
    state_dir.join("acme").join("accounts").join(host)
}

/// The account URL (RFC 8555 §7.3, what CAA `accounturi` names, RFC 8657) of the account
/// Portico registered at `directory`, once it has one.
pub fn account_uri(state_dir: &Path, directory: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(accounts_dir(state_dir, directory).join("account.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("id")?.as_str().map(String::from)
}

impl AcmeIssuer {
    pub fn new(
        state_dir: &Path,
        directory: &str,
        email: Option<String>,
        ca_root: Option<PathBuf>,
        eab: Option<(String, Vec<u8>)>,
    ) -> Self {
        AcmeIssuer {
            directory: directory_url(directory),
            retry_after: Arc::default(),
            email,
            eab,
            ca_root,
            accounts: accounts_dir(state_dir, directory),
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// The HTTPS connector to the CA: the configured root (Pebble, a private CA) or the
    /// platform's verifier.
    fn connector(
        &self,
    ) -> Result<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        String,
    > {
        let tls = match &self.ca_root {
            Some(root) => {
                use rustls_pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for der in rustls_pki_types::CertificateDer::pem_file_iter(root)
                    .map_err(|e| format!("ACME client with root {}: {e}", root.display()))?
                {
                    let der =
                        der.map_err(|e| format!("ACME client with root {}: {e}", root.display()))?;
                    roots
                        .add(der)
                        .map_err(|e| format!("ACME client with root {}: {e}", root.display()))?;
                }
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(client_provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| format!("ACME client: {e}"))?
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            }
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_platform_verifier(client_provider())
                .map_err(|e| format!("ACME client: {e}"))?,
        };
        Ok(tls.https_only().enable_http1().enable_http2().build())
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(self.connector()?);
        Ok(Account::builder_with_http(Box::new(RetryAfterClient {
            inner: client,
            retry_after: self.retry_after.clone(),
        })))
    }

    /// The CAA domains the CA names in its directory (`meta.caaIdentities`, RFC 8555 §7.1.1).
    pub async fn caa_identities(&self) -> Result<Vec<String>, String> {
        let dir = super::rollover::directory(self.connector()?, &self.directory).await?;
        Ok(dir["meta"]["caaIdentities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect())
    }

    /// Makes the account at `uri`, signed by the RSA key `jwk` (certbot's `private_key.json`),
    /// Portico's account at this CA: the account's key is rolled over to a new P-256 key
    /// (RFC 8555 §7.3.5) that Portico keeps. Refused when Portico has an account here already.
    pub async fn adopt_account(&self, jwk: &serde_json::Value, uri: &str) -> Result<(), String> {
        let file = self.accounts.join("account.json");
        if file.exists() {
            return Err(format!(
                "Portico has an account at this CA already ({})",
                file.display()
            ));
        }
        let old = super::rollover::rsa_from_jwk(jwk)?;
        let pkcs8 =
            super::rollover::rollover(self.connector()?, &self.directory, uri, &old).await?;
        let creds = serde_json::json!({
            "id": uri,
            "key_pkcs8": base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                &pkcs8
            ),
            "directory": self.directory,
        });
        // What instant-acme reads back, checked before it is stored.
        let _: AccountCredentials = serde_json::from_value(creds.clone())
            .map_err(|e| format!("the adopted account's credentials: {e}"))?;
        std::fs::create_dir_all(&self.accounts)
            .map_err(|e| format!("{}: {e}", self.accounts.display()))?;
        let json = serde_json::to_string_pretty(&creds).map_err(|e| e.to_string())?;
        write_atomic(&file, json.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        tracing::info!(directory = %self.directory, account = %uri, "ACME account adopted (key rolled over to P-256)");
        Ok(())
    }

    /// Revokes `leaf` (RFC 8555 §7.6) with the account that ordered it.
    pub async fn revoke(&self, leaf: &[u8]) -> Result<(), String> {
        let account = self.account().await?;
        let der = rustls_pki_types::CertificateDer::from(leaf.to_vec());
        account
            .revoke(&instant_acme::RevocationRequest {
                certificate: &der,
                reason: None,
            })
            .await
            .map_err(|e| format!("revocation: {}", describe(&e)))
    }

    /// The `Retry-After` of the CA's last error response (rate limits, 503), once.
    pub fn take_retry_after(&self) -> Option<SystemTime> {
        self.retry_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The CA's suggested renewal window for `leaf` (RFC 9773), and when to ask again; `None`
    /// when the CA does not offer ACME Renewal Information.
    pub async fn renewal_window(&self, leaf: &[u8]) -> Result<Option<RenewalWindow>, String> {
        let id = certificate_id(leaf)?;
        let account = self.account().await?;
        match account.renewal_info(&id).await {
            Ok((info, ask_again)) => Ok(Some(RenewalWindow {
                start: info.suggested_window.start.into(),
                end: info.suggested_window.end.into(),
                ask_again,
                explanation: info.explanation_url,
            })),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(format!("renewal information: {}", describe(&e))),
        }
    }

    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let file = self.accounts.join("account.json");
        let account = match std::fs::read_to_string(&file) {
            Ok(text) => {
                let creds: AccountCredentials =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
                self.builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("ACME account: {}", describe(&e)))?
            }
            Err(_) => {
                let contact = self
                    .email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect::<Vec<_>>();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self
                    .eab
                    .as_ref()
                    .map(|(kid, key)| instant_acme::ExternalAccountKey::new(kid.clone(), key));
                let (account, creds) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.directory.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot create an ACME account at {}: {}",
                            self.directory,
                            describe(&e)
                        )
                    })?;
                std::fs::create_dir_all(&self.accounts).map_err(|e| e.to_string())?;
                let json = serde_json::to_string_pretty(&creds).map_err(|e| e.to_string())?;
                write_atomic(&file, json.as_bytes(), 0o600)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                tracing::info!(directory = %self.directory, "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `domains`, proving control with the given solver; `replaces`
    /// names the certificate being renewed (RFC 9773 §5) when the CA offers renewal information.
    pub async fn issue(
        &self,
        domains: &[String],
        key_type: crate::keys::KeyType,
        solver: Solver<'_>,
        replaces: Option<&[u8]>,
        profile: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Issued, String> {
        let (tokens, dns01, alpn) = match solver {
            Solver::Http01(t) => (Some(t), None, None),
            Solver::Dns01(d) => (None, Some(d), None),
            Solver::TlsAlpn01(s, check) => (None, None, Some((s, check))),
        };
        let mut alpn_names: Vec<String> = Vec::new();
        let account = self.account().await?;
        // An address is an `ip` identifier (RFC 8738), everything else a `dns` one.
        let ids: Vec<Identifier> = domains
            .iter()
            .map(|d| match d.parse::<std::net::IpAddr>() {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(d.clone()),
            })
            .collect();
        if let Some(p) = profile {
            let offered: Vec<&str> = account.profiles().map(|m| m.name).collect();
            if !offered.contains(&p) {
                return Err(if offered.is_empty() {
                    format!(
                        "profile {p:?}: the CA at {} offers no profiles (its directory has no meta.profiles); remove profile = to take its default certificate",
                        self.directory
                    )
                } else {
                    format!(
                        "profile {p:?} is not offered by the CA at {}: it offers {}",
                        self.directory,
                        offered.join(", ")
                    )
                });
            }
        }
        fn order<'a>(ids: &'a [Identifier], profile: Option<&'a str>) -> NewOrder<'a> {
            let o = NewOrder::new(ids);
            match profile {
                Some(p) => o.profile(p),
                None => o,
            }
        }
        let replaced = replaces.map(certificate_id).transpose()?;
        let ordered = match replaced {
            Some(id) => match account.new_order(&order(&ids, profile).replaces(id)).await {
                // The CA has no renewal information: a plain order (same profile).
                Err(instant_acme::Error::Unsupported(_)) => {
                    account.new_order(&order(&ids, profile)).await
                }
                other => other,
            },
            None => account.new_order(&order(&ids, profile)).await,
        };
        let mut order = ordered.map_err(|e| format!("new order: {}", describe(&e)))?;
        progress(format!("order created for {}", domains.join(", ")));
        let mut published = Vec::new();
        let mut records: Vec<(String, String)> = Vec::new();
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut authz = a.map_err(|e| format!("authorization: {}", describe(&e)))?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                // A type this client does not know (dns-persist-01, or newer) is skipped: the
                // challenge for the configured method is chosen by its type below.
                for c in &authz.challenges {
                    if let ChallengeType::Unknown(t) = &c.r#type {
                        tracing::debug!(challenge = %t, "the CA offers a challenge type Portico does not know; ignored");
                    }
                }
                if let Some((answers, check)) = alpn {
                    let mut ch = authz
                        .challenge(ChallengeType::TlsAlpn01)
                        .ok_or("the CA offers no tls-alpn-01 challenge for this name")?;
                    // For an address, the CA sends its reverse-mapping name as SNI (RFC 8738 §6).
                    let domain = match &ch.identifier().identifier {
                        Identifier::Dns(d) => d.to_string(),
                        Identifier::Ip(ip) => crate::challenge::reverse_name(*ip),
                        other => return Err(format!("tls-alpn-01 for {other:?} is not possible")),
                    };
                    let digest = ch.key_authorization().digest();
                    answers.set(&domain, digest.as_ref())?;
                    alpn_names.push(domain.clone());
                    if let Some((lookup, port)) = check {
                        crate::self_check::tls_alpn01(&domain, lookup, port, digest.as_ref())
                            .await?;
                    }
                    ch.set_ready()
                        .await
                        .map_err(|e| format!("challenge: {}", describe(&e)))?;
                } else if let Some(dns) = dns01 {
                    let mut ch = authz
                        .challenge(ChallengeType::Dns01)
                        .ok_or("the CA offers no dns-01 challenge for this name")?;
                    let base = match &ch.identifier().identifier {
                        Identifier::Dns(d) => d.trim_start_matches("*.").to_string(),
                        other => {
                            return Err(format!(
                                "dns-01 for {other:?} is not possible: a CA validates an IP address only with http-01 or tls-alpn-01 (RFC 8738)"
                            ))
                        }
                    };
                    let name = format!("_acme-challenge.{base}");
                    let value = ch.key_authorization().dns_value();
                    progress(format!(
                        "publishing the TXT record {name}, waiting until every nameserver answers it"
                    ));
                    dns.publish(&name, &value, progress).await?;
                    progress(format!("{name} is answered by every nameserver"));
                    records.push((name, value));
                    ch.set_ready()
                        .await
                        .map_err(|e| format!("challenge: {}", describe(&e)))?;
                } else if let Some(tokens) = tokens {
                    let mut ch = authz
                        .challenge(ChallengeType::Http01)
                        .ok_or("the CA offers no http-01 challenge for this name")?;
                    let token = ch.token.clone();
                    tokens.insert(&token, ch.key_authorization().as_str());
                    published.push(token);
                    ch.set_ready()
                        .await
                        .map_err(|e| format!("challenge: {}", describe(&e)))?;
                }
            }
            progress("validating: the CA checks each name".into());
            let retry = RetryPolicy::new().timeout(Duration::from_secs(120));
            let status = order
                .poll_ready(&retry)
                .await
                .map_err(|e| format!("validation: {}", describe(&e)))?;
            if status != OrderStatus::Ready {
                let detail = order
                    .state()
                    .error
                    .as_ref()
                    .map(|p| format!("{p:?}"))
                    .unwrap_or_default();
                return Err(format!("order is {status:?}, not ready: {detail}"));
            }
            progress("validated; finalizing the order".into());
            // The key and CSR are made here (not by instant-acme's finalize) so that the key
            // type is ours to choose: ECDSA P-256 or RSA.
            let key = key_type.generate()?;
            let mut params = rcgen::CertificateParams::new(domains.to_vec())
                .map_err(|e| format!("CSR: {e}"))?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params
                .serialize_request(&key)
                .map_err(|e| format!("CSR: {e}"))?;
            order
                .finalize_csr(csr.der())
                .await
                .map_err(|e| format!("finalize: {}", describe(&e)))?;
            let key = key.serialize_pem();
            let pem = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| format!("certificate: {}", describe(&e)))?;
            Ok((pem, key))
        }
        .await;
        for t in published {
            if let Some(tokens) = tokens {
                tokens.remove(&t);
            }
        }
        for d in alpn_names {
            if let Some((answers, _)) = alpn {
                answers.clear(&d);
            }
        }
        if let Some(dns) = dns01 {
            for (name, value) in &records {
                if let Err(e) = dns.remove(name, value).await {
                    tracing::warn!(%name, error = %e, "dns-01: cannot remove the TXT record");
                }
            }
        }
        let (pem, key) = result?;
        let (cert, chain) = split_chain(&pem);
        Ok(Issued { cert, chain, key })
    }
}

/// An ACME error as the CA reported it: the problem type, its detail, and each subproblem with
/// its identifier (RFC 8555 §6.7), so that `portico certs list` shows what the CA said.
pub fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        other => other.to_string(),
    }
}

fn problem(p: &instant_acme::Problem) -> String {
    let mut out = format!(
        "{} ({})",
        p.detail.as_deref().unwrap_or("no detail"),
        p.r#type.as_deref().unwrap_or("no type")
    );
    for sub in &p.subproblems {
        let id = match &sub.identifier {
            Some(Identifier::Dns(d)) => d.clone(),
            Some(other) => format!("{other:?}"),
            None => "-".into(),
        };
        out.push_str(&format!(
            "; {id}: {} ({})",
            sub.detail.as_deref().unwrap_or("no detail"),
            sub.r#type.as_deref().unwrap_or("no type")
        ));
    }
    out
}

/// Where the steps of an order are reported (the renewal record, for `portico certs renew`).
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// How control of the names is proven.
pub enum Solver<'a> {
    Http01(&'a Http01Tokens),
    Dns01(&'a dyn Dns01Publisher),
    /// With, when the self-check is on, how to reach each name as the CA will (the lookup
    /// and the CA's TLS port): the challenge is told ready only once every address answers it.
    TlsAlpn01(
        &'a TlsAlpn01Challenges,
        Option<(&'a dyn crate::challenge::NameLookup, u16)>,
    ),
}

/// The first PEM block (the leaf) and the rest (intermediates).
fn split_chain(pem: &str) -> (String, String) {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(i) => {
            let cut = i + END.len();
            let leaf = format!("{}\n", &pem[..cut]);
            let rest = pem[cut..].trim_start().to_string();
            (leaf, rest)
        }
        None => (pem.to_string(), String::new()),
    }
}

/// A suggested renewal window (RFC 9773 §4.2).
#[derive(Debug, Clone)]
pub struct RenewalWindow {
    pub start: SystemTime,
    pub end: SystemTime,
    /// The CA's `Retry-After`: when to fetch the window again.
    pub ask_again: Duration,
    pub explanation: Option<String>,
}

/// RFC 9773 §4.1: base64url(authority key identifier) "." base64url(serial), from the leaf.
fn certificate_id(leaf: &[u8]) -> Result<instant_acme::CertificateIdentifier<'static>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the stored certificate does not parse: {e}"))?;
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .ok_or("the stored certificate has no authority key identifier")?;
    Ok(instant_acme::CertificateIdentifier::new(
        rustls_pki_types::Der::from(aki),
        rustls_pki_types::Der::from(cert.tbs_certificate.raw_serial().to_vec()),
    )
    .into_owned())
}

/// The ACME client's HTTP client, which keeps the `Retry-After` of error responses: instant-acme
/// turns a 429 or 503 into a problem document and drops the header, and the manager must not ask
/// again before the CA said it may.
struct RetryAfterClient {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl instant_acme::HttpClient for RetryAfterClient {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let fut = instant_acme::HttpClient::request(&self.inner, req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            let rsp = fut.await?;
            if rsp.parts.status.as_u16() >= 400 {
                if let Some(at) = rsp
                    .parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
                {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
                }
            }
            Ok(rsp)
        })
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs.min(30 * 86_400))),
        Err(_) => httpdate_parse(v),
    }
}

fn httpdate_parse(v: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
        let fmt = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        time::PrimitiveDateTime::parse(v, &fmt)
            .ok()
            .map(|t| t.assume_utc().into())
    })
}

/// The ACME client's cryptography, named explicitly: the process has two providers compiled in
/// (ring for clients, aws-lc-rs for the listeners), so rustls has no implicit default.
fn client_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
