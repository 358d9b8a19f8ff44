//! Who may connect to the Postgres endpoint: anyone, or (with `server.pg_password`) whoever
//! proves the password by SCRAM-SHA-256, so it never crosses the network, TLS or not. Every
//! failed attempt is logged and counted, and repeated ones from one address are answered
//! slower (see [`FailedLogins`]).

use std::fmt::Debug;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, ScramAuth, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireConnectionState};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::Sink;
use std::sync::Arc;

use crate::config::Secret;
use crate::query::conn::FailedLogins;

/// Any user and database, no password.
pub struct Open;

impl NoopStartupHandler for Open {}

/// The configured password, salted and hashed once for SCRAM (the cleartext is not kept).
#[derive(Debug)]
pub struct SaltedPassword {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl SaltedPassword {
    pub fn new(password: &Secret) -> SaltedPassword {
        let salt: [u8; 16] = rand::random();
        SaltedPassword {
            salted: gen_salted_password(password.expose(), &salt, SCRAM_ITERATIONS),
            salt: salt.to_vec(),
        }
    }
}

#[async_trait]
impl AuthSource for SaltedPassword {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}

/// SCRAM-SHA-256 for one connection (the SASL exchange keeps its state here), with failed
/// attempts logged, counted and slowed.
pub struct ScramLogin {
    inner: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    failures: FailedLogins,
}

impl ScramLogin {
    pub fn new(password: Arc<SaltedPassword>, failures: FailedLogins) -> ScramLogin {
        let scram = ScramAuth::new(password);
        ScramLogin {
            inner: SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default())).with_scram(scram),
            failures,
        }
    }
}

#[async_trait]
impl StartupHandler for ScramLogin {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let result = self.inner.on_startup(client, message).await;
        let ip = client.socket_addr().ip();
        match &result {
            Err(e) => {
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let wait = self.failures.failed(ip, &user);
                tracing::debug!(error = %e, "postgres login failed");
                tokio::time::sleep(wait).await;
            }
            Ok(()) if matches!(client.state(), PgWireConnectionState::ReadyForQuery) => self.failures.succeeded(ip),
            Ok(()) => {}
        }
        result
    }
}
