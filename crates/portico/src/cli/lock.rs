//! `portico certs lock NAME`: CAA records that let only the configured CA issue for the
//! certificate's names, only to Portico's ACME account and only by its challenge (RFC 8657),
//! written by the running server (`POST /api/v1/certificates/{name}/lock`, see
//! `portico_certs::lock`).

use crate::cli::client::{print_json, s, Admin, Target};

pub fn certs_lock(name: &str, ca_identity: Option<&str>, target: &Target) -> anyhow::Result<()> {
    let admin = Admin::find(target)?;
    let mut body = serde_json::json!({});
    if let Some(c) = ca_identity {
        body["ca_identity"] = c.into();
    }
    let v = admin.call(
        "POST",
        &format!("/api/v1/certificates/{name}/lock"),
        Some(body),
    )?;
    if target.json {
        print_json(&v);
        return Ok(());
    }
    for l in v["locks"].as_array().into_iter().flatten() {
        for value in l["values"].as_array().into_iter().flatten() {
            println!("{} CAA {}", s(&l["name"]), s(value));
        }
    }
    for c in v["changes"].as_array().into_iter().flatten() {
        println!(
            "{}: change {} {} (serial {})",
            s(&c["zone"]),
            s(&c["id"]),
            s(&c["status"]),
            s(&c["serial"])
        );
    }
    println!(
        "only {} may issue for these names now, only to {}, only by {}",
        s(&v["ca"]),
        s(&v["account"]),
        s(&v["method"])
    );
    Ok(())
}
