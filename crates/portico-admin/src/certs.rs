//! `/api/v1/certificates…`: status, requests and deletions (the API's additions), renew, revoke.

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, ApiError, ApiResult, Ctx, Runtime};

pub(super) fn cert_view(ctx: &Ctx, name: &str, source: &str, domains: &[String]) -> Value {
    let r = ctx.node.certs().storage().record(name).unwrap_or_default();
    let mut v = serde_json::to_value(&r).unwrap_or_else(|_| json!({}));
    v["name"] = json!(name);
    v["source"] = json!(source);
    if r.status.is_empty() {
        v["status"] = json!("PENDING_VALIDATION");
        v["domains"] = json!(domains);
    }
    let live = ctx.node.certs().storage().live(name);
    if live.join("fullchain.pem").exists() {
        v["fullchain"] = json!(live.join("fullchain.pem"));
    }
    v
}

/// Certificates the manager obtains: (name, domains, "config" | "api").
pub(super) async fn managed(ctx: &Ctx) -> Vec<(String, Vec<String>, &'static str)> {
    let c = ctx.node.applied().await;
    let api: Vec<&str> = c
        .runtime
        .certificate
        .iter()
        .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
        .collect();
    c.certificates
        .iter()
        .filter(|cert| !cert.domains.is_empty())
        .map(|cert| {
            (
                cert.name.clone(),
                cert.domains.clone(),
                if api.contains(&cert.name.as_str()) {
                    "api"
                } else {
                    "config"
                },
            )
        })
        .collect()
}

pub(super) async fn certs_list(State(ctx): State<Ctx>) -> Json<Value> {
    let list = managed(&ctx).await;
    Json(Value::Array(
        list.iter()
            .map(|(n, d, s)| cert_view(&ctx, n, s, d))
            .collect(),
    ))
}

pub(super) async fn cert_get(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> ApiResult {
    let list = managed(&ctx).await;
    let (n, d, s) = list.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
        ApiError::not_found(format!("no certificate {name:?}"))
            .hint("GET /api/v1/certificates lists them; POST there requests one")
    })?;
    Ok(Json(cert_view(&ctx, n, s, d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertSpec {
    name: String,
    domains: Vec<String>,
    issuer: Option<String>,
    challenge: Option<String>,
    deploy_hook: Option<String>,
    key_type: Option<String>,
    rsa_key_size: Option<u32>,
}

pub(super) async fn cert_request(
    State(ctx): State<Ctx>,
    body: Result<Json<CertSpec>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let spec = json_body(body)?;
    if spec.name.trim().is_empty() || spec.domains.is_empty() {
        return Err(ApiError::bad(
            "a certificate needs a name and at least one domain",
        ));
    }
    let name = spec.name.clone();
    ctx.node
        .change(Box::new(move |rt, current| {
            if current.certificates.iter().any(|c| c.name == spec.name) {
                return Err(ApiError::conflict(format!(
                    "a certificate named {:?} exists already",
                    spec.name
                ))
                .hint("POST /api/v1/certificates/{name}/renew renews it"));
            }
            let mut t = toml::Table::new();
            t.insert("name".into(), spec.name.into());
            t.insert(
                "domains".into(),
                toml::Value::Array(spec.domains.into_iter().map(Into::into).collect()),
            );
            for (k, v) in [
                ("issuer", spec.issuer),
                ("challenge", spec.challenge),
                ("deploy_hook", spec.deploy_hook),
            ] {
                if let Some(v) = v {
                    t.insert(k.into(), v.into());
                }
            }
            if let Some(k) = spec.key_type {
                t.insert("key_type".into(), k.into());
            }
            if let Some(bits) = spec.rsa_key_size {
                t.insert("rsa_key_size".into(), i64::from(bits).into());
            }
            rt.certificate.push(t);
            Ok(())
        }))
        .await?;
    tracing::info!(event = "certificate_requested", certificate = %name, "certificate requested through the admin API");
    let list = managed(&ctx).await;
    let (n, d, s) = list
        .iter()
        .find(|(n, _, _)| *n == name)
        .cloned()
        .unwrap_or((name, Vec::new(), "api"));
    Ok((StatusCode::ACCEPTED, Json(cert_view(&ctx, &n, s, &d))))
}

pub(super) async fn cert_delete(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult {
    ctx.node
        .change(Box::new({
            let name = name.clone();
            move |rt, current| {
                let in_file = current.certificates.iter().any(|c| c.name == name);
                Runtime::remove_named(
                    &mut rt.certificate,
                    &name,
                    "certificate",
                    in_file,
                    "remove its [[certificate]] from the config file, then reload",
                )
            }
        }))
        .await?;
    tracing::info!(event = "certificate_deleted", certificate = %name, "certificate deleted through the admin API");
    Ok(Json(json!({
        "deleted": name,
        "note": "no longer renewed or served; its files stay under live/ and archive/ in the state directory",
    })))
}

#[derive(Deserialize)]
pub(super) struct RenewQuery {
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn cert_renew(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RenewQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use portico_certs::storage::RenewRequest;
    let what = if q.dry_run {
        RenewRequest::DryRun
    } else {
        RenewRequest::Renew
    };
    renewal(&ctx, &name, what).await
}

pub(super) async fn cert_revoke(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    renewal(&ctx, &name, portico_certs::storage::RenewRequest::Revoke).await
}

pub(super) async fn renewal(
    ctx: &Ctx,
    name: &str,
    what: portico_certs::storage::RenewRequest,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use portico_certs::storage::RenewRequest;
    let list = managed(ctx).await;
    let Some((n, d, s)) = list.iter().find(|(n, _, _)| n == name) else {
        return Err(ApiError::not_found(format!(
            "no certificate {name:?} with domains (imported certificates are renewed by whoever issued them)"
        )));
    };
    let record = ctx.node.certs().storage().record(name).unwrap_or_default();
    if what == RenewRequest::Revoke && record.version == 0 {
        return Err(ApiError::conflict(format!(
            "{name}: no certificate has been issued yet, nothing to revoke"
        )));
    }
    ctx.node
        .certs()
        .storage()
        .request_renewal(name, what)
        .map_err(|e| ApiError::internal(format!("cannot leave the renewal request: {e}")))?;
    ctx.node.kick_certs().await;
    Ok((StatusCode::ACCEPTED, Json(cert_view(ctx, n, s, d))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LockSpec {
    /// The CA's CAA domain (default: letsencrypt.org for Let's Encrypt's directories).
    ca_identity: Option<String>,
}

/// CAA that lets only the configured CA issue for the certificate's names, only to Portico's
/// ACME account and only by its challenge (RFC 8657), as one change batch per hosted zone.
pub(super) async fn cert_lock(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<LockSpec>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    use portico_dns::zones::RecordChange;
    let spec = json_body(body)?;
    let applied = ctx.node.applied().await;
    let cert = applied
        .certificates
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no certificate {name:?}")))?;
    if cert.issuer.as_deref().unwrap_or("acme") != "acme" || cert.domains.is_empty() {
        return Err(ApiError::conflict(format!(
            "{name:?} is not ordered from an ACME CA: CAA locks the CA, account and method of ACME orders"
        )));
    }
    let directory = applied.acme_directory.clone().ok_or_else(|| {
        ApiError::conflict("no [acme] section: CAA names the ACME CA that may issue")
    })?;
    let ca = match spec.ca_identity {
        Some(c) => c,
        None => match portico_certs::lock::known_caa_identity(&directory) {
            Some(c) => c.to_string(),
            // Any other CA: the first CAA domain its directory names (RFC 8555 §7.1.1).
            None => {
                let issuer = ctx.node.certs().acme_issuer().ok_or_else(|| {
                    ApiError::conflict("no [acme] section: CAA names the ACME CA that may issue")
                })?;
                let named = issuer.caa_identities().await.map_err(|e| {
                    ApiError::bad(format!(
                        "which CAA domain does the CA at {directory} use? {e}"
                    ))
                    .hint("pass ca_identity (the CA's CAA domain)")
                })?;
                named.into_iter().next().ok_or_else(|| {
                    ApiError::bad(format!(
                        "which CAA domain does the CA at {directory} use? Its directory lists no meta.caaIdentities"
                    ))
                    .hint("pass ca_identity (the CA's CAA domain, from its documentation)")
                })?
            }
        },
    };
    let account = portico_certs::issuer::acme::account_uri(ctx.node.state_dir(), &directory)
        .ok_or_else(|| {
            ApiError::conflict(format!("no ACME account at {directory} yet"))
                .hint("the account is registered with the first order; lock after the certificate is issued")
        })?;
    let method = cert.challenge.clone().unwrap_or_else(|| "http-01".into());
    let zones: Vec<String> = ctx
        .node
        .zones()
        .catalog()
        .zones
        .keys()
        .map(|z| z.to_string())
        .collect();
    let locks =
        portico_certs::lock::locks(&cert.domains, &zones, &ca, &account, &method).map_err(|e| {
            ApiError::bad(e)
                .hint("CAA for names outside the hosted zones is set at their DNS provider")
        })?;
    if locks.is_empty() {
        return Err(ApiError::bad(format!(
            "{name:?} names only IP addresses, which CAA does not cover"
        )));
    }
    let mut by_zone: std::collections::BTreeMap<String, Vec<RecordChange>> = Default::default();
    for l in &locks {
        let change: RecordChange = serde_json::from_value(json!({
            "action": "UPSERT", "name": l.name, "type": "CAA", "ttl": 300, "values": l.values,
        }))
        .map_err(|e| ApiError::internal(e.to_string()))?;
        by_zone.entry(l.zone.clone()).or_default().push(change);
    }
    let mut changes = Vec::new();
    for (zone, batch) in by_zone {
        let info = ctx
            .node
            .zones()
            .change(&zone, &batch)
            .await
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        tracing::info!(event = "certificate_locked", certificate = %name, zone = %info.zone, change = %info.id, "CAA lock written");
        changes.push(super::zones::change_view(&ctx, info).await);
    }
    Ok(Json(json!({
        "certificate": name,
        "ca": ca,
        "account": account,
        "method": method,
        "locks": locks.iter().map(|l| json!({"zone": l.zone, "name": l.name, "values": l.values})).collect::<Vec<_>>(),
        "changes": changes,
    })))
}
