//! Entra ID's token endpoint (client credentials) and the App Service managed-identity
//! endpoint, as azure_identity and MSAL talk to them (emulating-acr.md "Entra endpoint").

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    ACR_RESOURCE, ACR_SCOPE, Emu, Endpoint, Record, first, form_pairs, guid, json_response,
    now_secs, query_pairs, unexpired, verify,
};

/// `client_assertion_type` for certificates and federated tokens.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An Entra error answer.
fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let trace = guid();
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {} Timestamp: 2026-01-01 00:00:00Z", guid()),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": trace,
            "correlation_id": guid(),
            "error_uri": "https://login.microsoftonline.com/error?code=".to_owned() + &code.to_string(),
        }),
    )
}

/// Mints an Entra access token for ACR.
pub(super) fn mint_entra(emu: &Emu, app_id: &str, oid: &str, lifetime: u64) -> String {
    mint_entra_for(emu, ACR_RESOURCE, app_id, oid, lifetime)
}

/// The scope of Azure Blob Storage (the shared store), which the token endpoint also
/// grants: a token for it has the storage audience, so ACR refuses it.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// Mints an Entra access token with audience `resource`.
fn mint_entra_for(emu: &Emu, resource: &str, app_id: &str, oid: &str, lifetime: u64) -> String {
    let now = now_secs();
    let tid = &emu.ids.tenant_id;
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tid}/"),
        "iat": now,
        "nbf": now.saturating_sub(1),
        "exp": now + lifetime,
        "aio": guid(),
        "appid": app_id,
        "appidacr": "1",
        "idp": format!("https://sts.windows.net/{tid}/"),
        "oid": oid,
        "rh": guid(),
        "sub": oid,
        "tid": tid,
        "uti": guid(),
        "ver": "1.0",
    });
    let header = jsonwebtoken::Header {
        typ: Some("JWT".to_owned()),
        kid: Some(emu.keys.entra_kid.clone()),
        x5t: Some(emu.keys.entra_kid.clone()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
    };
    let token =
        jsonwebtoken::encode(&header, &claims, &emu.keys.entra_enc).expect("sign Entra token");
    emu.remember(&token);
    token
}

/// A stable object id per client id (the service principal's or identity's oid).
fn oid_for(client_id: &str) -> String {
    use sha2::Digest as _;
    let h = hex::encode(sha2::Sha256::digest(client_id.as_bytes()));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1), if present.
fn basic_client(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let enc = v.strip_prefix("Basic ")?;
    let dec = base64::engine::general_purpose::STANDARD
        .decode(enc.trim())
        .ok()?;
    let dec = String::from_utf8(dec).ok()?;
    let (u, p) = dec.split_once(':')?;
    let u = url::form_urlencoded::parse(format!("u={u}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    let p = url::form_urlencoded::parse(format!("p={p}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    Some((u, p))
}

/// Checks a certificate client assertion. Err: (AADSTS code, description).
fn check_certificate_assertion(
    emu: &Emu,
    assertion: &str,
    client_id: &str,
    token_url: &str,
) -> Result<(), (u32, String)> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|e| (50027, format!("Invalid JWT token: {e}.")))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err((
            5002738,
            format!(
                "Invalid JWT token: algorithm {:?} is not RS256.",
                header.alg
            ),
        ));
    }
    let thumb = {
        use sha1::Digest as _;
        sha1::Sha1::digest(&emu.keys.client_cert_der).to_vec()
    };
    let matches = header.x5t.as_deref().is_some_and(|x5t| {
        let x = x5t.trim_end_matches('=');
        [
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&thumb),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&thumb),
        ]
        .iter()
        .any(|e| e == x)
    });
    if !matches {
        return Err((
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}']",
                header.x5t.as_deref().unwrap_or("<no x5t>")
            ),
        ));
    }
    let claims: Value = verify(
        assertion,
        &emu.keys.client_cert_dec,
        jsonwebtoken::Algorithm::RS256,
        None,
    )
    .map_err(|e| {
        (
            700027,
            format!("Client assertion contains an invalid signature: {e}."),
        )
    })?;
    if claims["aud"].as_str() != Some(token_url) {
        return Err((
            700212,
            format!(
                "The audience {} of the client assertion is not the token endpoint {token_url}.",
                claims["aud"]
            ),
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err((
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter (iss and sub must be the client id).".to_owned(),
        ));
    }
    if !unexpired(&claims) {
        return Err((
            700024,
            "Client assertion is not within its valid time range (exp).".to_owned(),
        ));
    }
    Ok(())
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) async fn token(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let pairs = form_pairs(&body);
    let path = parts.uri.path().to_owned();
    let tenant = path.split('/').nth(1).unwrap_or("").to_owned();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let token_url = format!("https://{host}{path}");
    let basic = basic_client(&parts.headers);
    let client_id = first(&pairs, "client_id")
        .map(str::to_owned)
        .or_else(|| basic.as_ref().map(|(u, _)| u.clone()));
    let mut rec = Record {
        scopes: pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect(),
        client_id: client_id.clone(),
        ..Record::arrived(
            Endpoint::Entra,
            &parts.method,
            parts.uri.to_string(),
            &parts.headers,
            at,
        )
    };
    let ids = &emu.ids;
    let result: Result<(&str, &str), (StatusCode, &str, u32, String)> = (|| {
        if tenant != ids.tenant_id {
            return Err((
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
                ),
            ));
        }
        if first(&pairs, "grant_type") != Some("client_credentials") {
            return Err((
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!(
                    "The app requested an unsupported grant type {:?}; only client_credentials is emulated.",
                    first(&pairs, "grant_type")
                ),
            ));
        }
        let scope = first(&pairs, "scope");
        if scope != Some(ACR_SCOPE) && scope != Some(STORAGE_SCOPE) {
            return Err((
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                format!(
                    "The provided value for scope {:?} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI); expected {ACR_SCOPE} or {STORAGE_SCOPE}.",
                    first(&pairs, "scope")
                ),
            ));
        }
        let Some(client_id) = client_id.as_deref() else {
            return Err((
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.".to_owned(),
            ));
        };
        let secret = first(&pairs, "client_secret")
            .map(str::to_owned)
            .or_else(|| basic.as_ref().map(|(_, p)| p.clone()));
        let assertion_type = first(&pairs, "client_assertion_type");
        let assertion = first(&pairs, "client_assertion");
        if let Some(s) = &secret {
            emu.remember(s);
        }
        if let Some(a) = assertion {
            emu.remember(a);
        }
        if client_id == ids.sp_client_id {
            if let Some(secret) = secret {
                if secret == ids.sp_client_secret {
                    return Ok((ids.sp_client_id.as_str(), "client secret"));
                }
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
            if assertion_type == Some(JWT_BEARER)
                && let Some(a) = assertion
            {
                return match check_certificate_assertion(&emu, a, client_id, &token_url) {
                    Ok(()) => Ok((ids.sp_client_id.as_str(), "certificate")),
                    Err((code, d)) => Err((StatusCode::UNAUTHORIZED, "invalid_client", code, d)),
                };
            }
        } else if client_id == ids.wi_client_id {
            if assertion_type == Some(JWT_BEARER)
                && let Some(a) = assertion
            {
                if a == ids.federated_token {
                    return Ok((ids.wi_client_id.as_str(), "federated token"));
                }
                return Err((
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    70021,
                    "No matching federated identity record found for presented assertion (the assertion must be the service account token, verbatim).".to_owned(),
                ));
            }
            if secret.is_some() {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided (this app has no secrets).".to_owned(),
                ));
            }
        } else {
            return Err((
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                ),
            ));
        }
        Err((
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
        ))
    })();
    let resp = match result {
        Ok((app, how)) => {
            let lifetime = emu.lifetimes().entra;
            // The scope was checked: one of the two.
            let resource = first(&pairs, "scope")
                .unwrap_or(ACR_SCOPE)
                .trim_end_matches("/.default");
            let token = mint_entra_for(&emu, resource, app, &oid_for(app), lifetime);
            rec.detail = how.to_owned();
            json_response(
                StatusCode::OK,
                json!({
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "ext_expires_in": lifetime,
                    "access_token": token,
                }),
            )
        }
        Err((status, error, code, description)) => {
            rec.status = status.as_u16();
            rec.detail = format!("{error} AADSTS{code}");
            entra_error(status, error, code, &description)
        }
    };
    emu.record(rec);
    resp
}

/// The App Service managed-identity endpoint:
/// `GET ?api-version=2019-08-01&resource=https://containerregistry.azure.net[&client_id=…]`
/// with `x-identity-header` (and, from azure_identity, `metadata: true`, recorded).
pub(super) async fn managed_identity(State(emu): State<Arc<Emu>>, req: Request) -> Response {
    let at = Instant::now();
    let q = query_pairs(req.uri().query().unwrap_or(""));
    let ids = &emu.ids;
    let client_id = first(&q, "client_id").map(str::to_owned);
    let mut rec = Record {
        scopes: first(&q, "resource")
            .map(str::to_owned)
            .into_iter()
            .collect(),
        client_id: client_id.clone(),
        ..Record::arrived(
            Endpoint::ManagedIdentity,
            req.method(),
            req.uri().to_string(),
            req.headers(),
            at,
        )
    };
    let identity_header = req
        .headers()
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(h) = &identity_header {
        emu.remember(h);
    }
    let err = |status: StatusCode, message: String| {
        json_response(
            status,
            json!({"statusCode": status.as_u16(), "message": message, "correlationId": guid()}),
        )
    };
    let result: Result<String, (StatusCode, String)> = (|| {
        if req.method() != axum::http::Method::GET {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "GET only".to_owned()));
        }
        if identity_header.as_deref() != Some(ids.identity_header.as_str()) {
            return Err((
                StatusCode::UNAUTHORIZED,
                "X-IDENTITY-HEADER is missing or wrong".to_owned(),
            ));
        }
        if first(&q, "api-version") != Some("2019-08-01") {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "api-version {:?} is not 2019-08-01",
                    first(&q, "api-version")
                ),
            ));
        }
        if first(&q, "resource") != Some(ACR_RESOURCE) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("resource {:?} is not {ACR_RESOURCE}", first(&q, "resource")),
            ));
        }
        if first(&q, "object_id").is_some() || first(&q, "mi_res_id").is_some() {
            return Err((
                StatusCode::BAD_REQUEST,
                "only client_id selects a user-assigned identity here".to_owned(),
            ));
        }
        match client_id.as_deref() {
            None => Ok(ids.mi_system_client_id.clone()),
            Some(c) if c == ids.mi_user_client_id => Ok(c.to_owned()),
            Some(c) => Err((
                StatusCode::BAD_REQUEST,
                format!("No managed identity with client_id {c} is assigned to this resource."),
            )),
        }
    })();
    let resp = match result {
        Ok(app) => {
            let lifetime = emu.lifetimes().entra;
            let token = mint_entra(&emu, &app, &oid_for(&app), lifetime);
            rec.detail = if client_id.is_some() {
                "user-assigned".to_owned()
            } else {
                "system-assigned".to_owned()
            };
            json_response(
                StatusCode::OK,
                json!({
                    "access_token": token,
                    "expires_on": (now_secs() + lifetime).to_string(),
                    "resource": ACR_RESOURCE,
                    "token_type": "Bearer",
                    "client_id": app,
                }),
            )
        }
        Err((status, message)) => {
            rec.status = status.as_u16();
            rec.detail = message.clone();
            err(status, message)
        }
    };
    emu.record(rec);
    resp
}

/// Signs a certificate client assertion the way azure_identity does (for validating
/// the emulator itself): RS256, `x5t` = base64 SHA-1 of the certificate DER, `aud` =
/// the token URL, `iss` = `sub` = client id.
pub fn sign_client_assertion(
    key_pem: &str,
    cert_der: &[u8],
    client_id: &str,
    token_url: &str,
    lifetime_secs: i64,
) -> String {
    use sha1::Digest as _;
    let now = now_secs() as i64;
    let header = jsonwebtoken::Header {
        typ: Some("JWT".to_owned()),
        x5t: Some(base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(cert_der))),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
    };
    let claims = json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": guid(),
        "nbf": now - 1,
        "iat": now,
        "exp": now + lifetime_secs,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("RSA key PEM");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign the client assertion")
}
