//! Azure Container Registry's token exchange: an Entra ID token becomes an ACR
//! refresh token (`POST /oauth2/exchange`), which becomes per-scope access tokens
//! (`POST /oauth2/token`, grant `refresh_token`). ACR's answers carry no
//! `expires_in`; lifetimes come from the JWTs' `exp`.
//!
//! The Entra token and the refresh token only ever go to the registry's own origin:
//! a challenge whose realm points elsewhere is refused.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use url::Url;

use super::Error;
use super::entra::ACR_SCOPE;
use super::token::{self, Token};

pub struct Exchange {
    upstream: String,
    credential: Arc<dyn TokenCredential>,
    /// The ACR refresh token, shared by every scope; the lock makes concurrent
    /// requests share one exchange.
    refresh: tokio::sync::Mutex<Option<Token>>,
}

impl Exchange {
    pub fn new(upstream: &str, credential: Arc<dyn TokenCredential>) -> Self {
        Exchange {
            upstream: upstream.to_string(),
            credential,
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// An access token for `scope`. If the registry refuses the refresh token (it
    /// expired or was revoked), a new one is exchanged once.
    pub async fn access_token(
        &self,
        http: &reqwest::Client,
        origin: &Url,
        realm: &Url,
        service: &str,
        scope: &str,
        read_timeout: Duration,
    ) -> Result<Token, Error> {
        if realm.origin() != origin.origin() {
            return Err(token::protocol(
                &self.upstream,
                "the token realm is on another host; Ferry sends ACR credentials only to the registry itself",
            ));
        }
        let mut force = false;
        loop {
            let refresh = self
                .refresh_token(http, realm, service, force, read_timeout)
                .await?;
            let resp = http
                .post(realm.clone())
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("service", service),
                    ("scope", scope),
                    ("refresh_token", refresh.secret().expose()),
                ])
                .send()
                .await
                .map_err(|e| Error::from_reqwest(&self.upstream, &e))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !force {
                force = true;
                continue;
            }
            let resp = token::check_status(&self.upstream, resp)?;
            #[derive(serde::Deserialize)]
            struct Answer {
                access_token: String,
            }
            let answer: Answer =
                token::read_json(&self.upstream, resp, "ACR token response", read_timeout).await?;
            let access = token::checked(&self.upstream, "ACR access token", answer.access_token)?;
            return Ok(Token::from_jwt(access, Duration::from_secs(60)));
        }
    }

    async fn refresh_token(
        &self,
        http: &reqwest::Client,
        realm: &Url,
        service: &str,
        force: bool,
        read_timeout: Duration,
    ) -> Result<Token, Error> {
        let mut cached = self.refresh.lock().await;
        if !force
            && let Some(t) = cached.as_ref()
            && t.is_usable()
            && !t.is_due_for_renewal()
        {
            return Ok(t.clone());
        }
        let entra = self
            .credential
            .get_token(&[ACR_SCOPE], None)
            .await
            .map_err(|e| Error::Credential {
                upstream: self.upstream.clone(),
                // One log line per failure: azure_identity's messages hold newlines.
                detail: e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            })?;
        let exchange = realm
            .join("/oauth2/exchange")
            .map_err(|_| token::protocol(&self.upstream, "cannot build the exchange URL"))?;
        let resp = http
            .post(exchange)
            .form(&[
                ("grant_type", "access_token"),
                ("service", service),
                ("access_token", entra.token.secret()),
            ])
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&self.upstream, &e))?;
        let resp = token::check_status(&self.upstream, resp)?;
        #[derive(serde::Deserialize)]
        struct Answer {
            refresh_token: String,
        }
        let answer: Answer =
            token::read_json(&self.upstream, resp, "ACR exchange response", read_timeout).await?;
        let refresh = token::checked(&self.upstream, "ACR refresh token", answer.refresh_token)?;
        tracing::info!(upstream = %self.upstream, "exchanged the Entra ID token for an ACR refresh token");
        let t = Token::from_jwt(refresh, Duration::from_secs(3600));
        *cached = Some(t.clone());
        Ok(t)
    }
}
