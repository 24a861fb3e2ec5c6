//! The admin router: one function per endpoint, callable without a socket.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::api::{
    AdminError, BypassTokenDocument, BypassTokenRequest, DeployDocument, DeployLockRequest,
    DeployStep, Listeners, MaintenanceRequest, ProbeDocument, ProbeOutcome, RollbackRequest,
    ServiceContext, ServiceContextRequest, StatusDocument, SwitchRequest, WindowDocument,
    WindowList, WindowRequest,
};
use super::auth::Rights;
use super::events::EventBody;
use super::resource::Resource;
use crate::control::{Control, ControlError, MaintenanceChange, Via};
use crate::metrics::Metrics;
use crate::shutdown::Tracker;
use crate::state::persist::rfc3339;
use crate::state::schedule::whole_second;
use crate::state::Snapshot;
use crate::upgrade::Upgrader;

/// The largest request body an admin call accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The content type of `GET /metrics` (prometheus-client writes OpenMetrics text).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints act on.
#[derive(Debug, Clone)]
pub struct Router {
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    listeners: Listeners,
    /// Events streams open now.
    event_streams: Arc<super::events::OpenStreams>,
    /// What `POST /v1/upgrade` runs; without it, the endpoint is missing.
    upgrader: Option<Arc<Upgrader>>,
    /// Calls being answered (not events streams), which a process handing
    /// over waits for before it exits.
    calls: Tracker,
}

/// An admin answer's body: whole, or the events stream.
pub type AdminBody = Either<Full<Bytes>, EventBody>;

/// An admin answer.
pub type AdminResponse = Response<AdminBody>;

impl Router {
    /// A router over the control plane and the metrics, for a proxy
    /// whose listeners are bound to `listeners`.
    pub fn new(control: Arc<Control>, metrics: Arc<Metrics>, listeners: Listeners) -> Router {
        Router {
            control,
            metrics,
            listeners,
            event_streams: Arc::default(),
            upgrader: None,
            calls: Tracker::default(),
        }
    }

    /// The calls being answered now.
    pub fn calls(&self) -> &Tracker {
        &self.calls
    }

    /// The router of a process that a new binary can take over from.
    pub fn with_upgrader(self, upgrader: Arc<Upgrader>) -> Router {
        Router {
            upgrader: Some(upgrader),
            ..self
        }
    }

    /// What runs a binary upgrade, if this process can be taken over.
    pub fn upgrader(&self) -> Option<&Arc<Upgrader>> {
        self.upgrader.as_ref()
    }

    /// How many events streams are open, for [`super::events`] to count.
    pub fn event_streams(&self) -> &Arc<super::events::OpenStreams> {
        &self.event_streams
    }

    /// The status document as of `snapshot`, as a 200.
    async fn status_of(&self, snapshot: &Snapshot) -> AdminResponse {
        json(StatusCode::OK, &self.status_document(snapshot).await)
    }

    async fn status_document(&self, snapshot: &Snapshot) -> StatusDocument {
        let deploy = self.control.running_deploy().await;
        StatusDocument::of(snapshot, &self.control, self.listeners, deploy)
    }

    /// The status document now, as the events stream sends it.
    pub async fn status_value(&self) -> serde_json::Value {
        let snapshot = self.control.state().load_full();
        serde_json::to_value(self.status_document(&snapshot).await)
            .expect("the status document serializes")
    }

    /// The control plane it acts on.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// What the bearer token in `headers` may do under the config in
    /// force. Without tokens (a reload removed them), nothing is admitted.
    pub fn rights(&self, headers: &http::HeaderMap) -> Option<Rights> {
        let snapshot = self.control.state().load();
        let admin = &snapshot.config.admin;
        super::auth::rights(admin.token.as_ref(), admin.read_token.as_ref(), headers)
    }

    /// The config in force now: the listeners take their limits from it,
    /// so a reload changes them for the next connection.
    pub fn config(&self) -> Arc<crate::config::Config> {
        self.control.state().load().config.clone()
    }

    /// Reads a request body of at most [`MAX_BODY_BYTES`], arriving in
    /// full within `timeouts.client_body`.
    async fn read_body<B>(&self, body: B) -> Result<Bytes, AdminError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // A declared length past the bound is refused before any wait.
        if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
            return Err(AdminError::TooLarge(MAX_BODY_BYTES));
        }
        let timeout = self.control.state().load().config.timeouts.client_body;
        let read = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect());
        let Ok(read) = read.await else {
            return Err(AdminError::BadRequest(format!(
                "the request body did not arrive within {} (timeouts.client_body)",
                humantime::format_duration(timeout)
            )));
        };
        match read {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                Err(AdminError::TooLarge(MAX_BODY_BYTES))
            }
            Err(error) => Err(AdminError::BadRequest(format!(
                "cannot read the request body: {error}"
            ))),
        }
    }

    /// Answers one admin request that arrived `via` a listener from a
    /// caller with `rights` (checked by the listener).
    pub async fn handle<B>(&self, request: Request<B>, via: Via, rights: Rights) -> AdminResponse
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match self.route(request, via, rights).await {
            Ok(response) => response,
            Err(error) => {
                if error.status().is_server_error() {
                    warn!(target: "audit", error = ?error.to_string(), %method, %path, %via, "admin call failed");
                } else if method != Method::GET {
                    // A refused change is part of the record, like a made one.
                    // Debug-quoted: an error may echo what the caller sent, newlines too.
                    info!(target: "audit", error = ?error.to_string(), %method, %path, %via, "admin call refused");
                } else {
                    debug!(error = ?error.to_string(), %method, %path, %via, "admin call refused");
                }
                let mut response = error_response(&error);
                if let AdminError::MethodNotAllowed { .. } = error {
                    if let Some(resource) = Resource::of(&path) {
                        response
                            .headers_mut()
                            .insert(ALLOW, HeaderValue::from_static(resource.allowed_methods()));
                    }
                }
                response
            }
        }
    }

    async fn route<B>(
        &self,
        request: Request<B>,
        via: Via,
        rights: Rights,
    ) -> Result<AdminResponse, AdminError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let Some(resource) = Resource::of(path) else {
            return Err(AdminError::NotFound(path.to_owned()));
        };
        match (&parts.method, resource) {
            (&Method::GET, Resource::Status) => Ok(self.status().await),
            (&Method::PUT, Resource::Maintenance) => {
                self.maintenance(required(self.read_body(body).await?)?, via)
                    .await
            }
            (&Method::POST, Resource::Switch) => {
                self.switch(required(self.read_body(body).await?)?, via)
                    .await
            }
            (&Method::POST, Resource::Rollback) => {
                let request = optional(self.read_body(body).await?)?.unwrap_or_default();
                self.rollback(request, via).await
            }
            (&Method::POST, Resource::Reload) => self.reload(via).await,
            (&Method::POST, Resource::Upgrade) => {
                let Some(upgrader) = &self.upgrader else {
                    return Err(AdminError::NotFound(path.to_owned()));
                };
                // To its end even if the caller hangs up: a handover cut
                // short would leave two processes serving.
                let upgrader = upgrader.clone();
                let upgrade = tokio::spawn(async move { upgrader.upgrade(via).await });
                let upgraded = upgrade.await.expect("an upgrade does not panic")?;
                // Closed once answered: the process that answered drains.
                let mut answer = json(StatusCode::OK, &upgraded);
                let close = HeaderValue::from_static("close");
                answer.headers_mut().insert(http::header::CONNECTION, close);
                Ok(answer)
            }
            (&Method::GET, Resource::Windows) => Ok(self.windows()),
            (&Method::POST, Resource::Windows) => {
                self.plan_window(required(self.read_body(body).await?)?, via)
                    .await
            }
            (&Method::DELETE, Resource::Window(id)) => self.cancel_window(id, via).await,
            (&Method::POST, Resource::BypassTokens) => {
                self.bypass_token(required(self.read_body(body).await?)?, via)
            }
            (&Method::POST, Resource::PoolProbe(pool)) => self.probe(pool).await,
            (&Method::POST, Resource::Deploys) => {
                self.take_deploy_lock(required(self.read_body(body).await?)?, via)
                    .await
            }
            (&Method::PUT, Resource::Deploy(id)) => {
                let lock = self.control.renew_deploy_lock(id).await?;
                Ok(json(StatusCode::OK, &DeployDocument::of(lock)))
            }
            (&Method::DELETE, Resource::Deploy(id)) => {
                self.control.release_deploy_lock(id).await?;
                info!(target: "audit", %via, change = "deploy", step = "lock", outcome = "released", deploy = %id, "deploy lock released");
                Ok(no_content())
            }
            (&Method::POST, Resource::DeploySteps(id)) => {
                self.deploy_step(id, required(self.read_body(body).await?)?, via)
                    .await
            }
            (&Method::GET, Resource::Metrics) => Ok(self.metrics()),
            (&Method::GET, Resource::Events) => {
                let credential = matches!(via, Via::Tcp(_)).then(|| {
                    let mut kept = http::HeaderMap::new();
                    if let Some(token) = parts.headers.get(http::header::AUTHORIZATION) {
                        kept.insert(http::header::AUTHORIZATION, token.clone());
                    }
                    kept
                });
                super::events::stream(self.clone(), rights, credential)
                    .ok_or(AdminError::TooManyStreams)
            }
            (&Method::GET | &Method::HEAD, Resource::Dashboard(path)) => {
                Ok(super::dashboard::asset(path))
            }
            (&Method::GET, Resource::ServiceContext) => {
                let snapshot = self.control.state().load();
                let answer = ServiceContext {
                    maintenance: snapshot.decisions.maintenance.enabled,
                };
                Ok(json(StatusCode::OK, &answer))
            }
            (&Method::PATCH, Resource::ServiceContext) => {
                self.service_context(required(self.read_body(body).await?)?, via)
                    .await
            }
            (method, _) => Err(AdminError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
            }),
        }
    }

    /// `POST /v1/pools/{name}/probe`.
    async fn probe(&self, pool: &str) -> Result<AdminResponse, AdminError> {
        let results = self.control.probe(pool).await?;
        let upstreams: Vec<ProbeOutcome> = results
            .iter()
            .map(|r| ProbeOutcome {
                addr: r.upstream.to_string(),
                error: r.outcome.as_ref().err().map(ToString::to_string),
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &ProbeDocument {
                pool: pool.to_owned(),
                passed: upstreams.iter().any(|u| u.error.is_none()),
                upstreams,
            },
        ))
    }

    /// `POST /v1/deploys`.
    async fn take_deploy_lock(
        &self,
        request: DeployLockRequest,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        request.check()?;
        let lock = self
            .control
            .take_deploy_lock(&request.pool, &request.holder, request.id)
            .await?;
        info!(target: "audit", %via, change = "deploy", step = "lock", outcome = "taken", deploy = %lock.id, pool = ?lock.pool, holder = ?lock.holder, "deploy lock taken");
        Ok(json(StatusCode::CREATED, &DeployDocument::of(lock)))
    }

    /// `POST /v1/deploys/{id}/steps`: a line in the audit log, for the
    /// deploy that holds the lock only.
    async fn deploy_step(
        &self,
        id: &str,
        step: DeployStep,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        step.check()?;
        let running = self.control.running_deploy().await;
        if running.is_none_or(|lock| lock.id != id) {
            return Err(ControlError::UnknownDeploy(id.to_owned()).into());
        }
        // Debug-quoted: a newline in a detail must not forge a line.
        info!(target: "audit", %via, change = "deploy", deploy = %id, step = %step.name, outcome = %step.outcome, detail = ?step.detail, "deploy step {} {}", step.name, step.outcome);
        Ok(no_content())
    }

    /// `GET /v1/status`.
    async fn status(&self) -> AdminResponse {
        // In a fleet, each instance's generation as etcd has it now.
        self.control.refresh_fleet().await;
        let snapshot = self.control.state().load_full();
        self.status_of(&snapshot).await
    }

    /// `PUT /v1/maintenance`.
    async fn maintenance(
        &self,
        request: MaintenanceRequest,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        super::api::checked_message(request.message.as_deref())?;
        let change = MaintenanceChange {
            enabled: request.enabled,
            retry_after: request.retry_after()?,
            mode: request.mode()?,
            until: request.until()?,
            message: request.message,
        };
        let snapshot = self.control.set_maintenance(change, via).await?;
        Ok(self.status_of(&snapshot).await)
    }

    /// `POST /v1/switch`.
    async fn switch(&self, request: SwitchRequest, via: Via) -> Result<AdminResponse, AdminError> {
        let snapshot = self.control.switch(&request.to, request.force, via).await?;
        Ok(self.status_of(&snapshot).await)
    }

    /// `POST /v1/rollback`.
    async fn rollback(
        &self,
        request: RollbackRequest,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        let snapshot = self.control.rollback(request.force, via).await?;
        Ok(self.status_of(&snapshot).await)
    }

    /// `POST /v1/reload`.
    async fn reload(&self, via: Via) -> Result<AdminResponse, AdminError> {
        let snapshot = self.control.reload(via).await?;
        Ok(self.status_of(&snapshot).await)
    }

    /// `GET /v1/maintenance/windows`.
    fn windows(&self) -> AdminResponse {
        let snapshot = self.control.state().load_full();
        json(
            StatusCode::OK,
            &WindowList {
                windows: WindowDocument::list(&snapshot),
            },
        )
    }

    /// `POST /v1/maintenance/windows`.
    async fn plan_window(
        &self,
        request: WindowRequest,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        let (window, snapshot) = self.control.plan_window(request.planned()?, via).await?;
        Ok(json(
            StatusCode::CREATED,
            &WindowDocument::of(&window, &snapshot.config.maintenance),
        ))
    }

    /// `DELETE /v1/maintenance/windows/{id}`.
    async fn cancel_window(&self, id: &str, via: Via) -> Result<AdminResponse, AdminError> {
        self.control.cancel_window(id, via).await?;
        Ok(no_content())
    }

    /// `POST /v1/bypass-tokens`: a token signed, not stored, so nothing
    /// changes (no generation moves); the audit log records who asked.
    fn bypass_token(
        &self,
        request: BypassTokenRequest,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        let snapshot = self.control.state().load_full();
        let key = snapshot
            .bypass
            .as_ref()
            .ok_or(AdminError::BypassNotConfigured)?;
        let ttl = request.ttl()?;
        let label = request.label()?;
        // To the second, as the token holds it.
        let expires_at = whole_second(SystemTime::now() + ttl);
        let token = key.issue(label, expires_at);
        info!(
            target: "audit",
            via = %via,
            change = "bypass_token",
            label = ?label,
            expires_at = %rfc3339(expires_at),
            "bypass token issued"
        );
        Ok(json(
            StatusCode::CREATED,
            &BypassTokenDocument {
                token,
                expires_at: rfc3339(expires_at),
            },
        ))
    }

    /// `GET /metrics`.
    fn metrics(&self) -> AdminResponse {
        let snapshot = self.control.state().load_full();
        let text = self
            .metrics
            .render(&super::gauges::of(&snapshot, &self.control));
        let mut response = Response::new(Either::Left(Full::new(Bytes::from(text))));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
        response
    }

    /// `PATCH /service-context`: the maintenance flag, as existing
    /// pipelines set it, with their message if they send one; otherwise the
    /// config's message applies, and its retry-after always.
    async fn service_context(
        &self,
        request: ServiceContextRequest,
        via: Via,
    ) -> Result<AdminResponse, AdminError> {
        super::api::checked_message(request.message.as_deref())?;
        let change = MaintenanceChange {
            enabled: request.maintenance,
            message: request.message,
            ..MaintenanceChange::default()
        };
        let snapshot = self.control.set_maintenance(change, via).await?;
        let answer = ServiceContext {
            maintenance: snapshot.decisions.maintenance.enabled,
        };
        Ok(json(StatusCode::OK, &answer))
    }
}

/// Parses a JSON body that must be there.
fn required<T: DeserializeOwned>(body: Bytes) -> Result<T, AdminError> {
    optional(body)?
        .ok_or_else(|| AdminError::BadRequest("a JSON request body is required".to_owned()))
}

/// Parses a JSON body that may be empty. Only an object is a body: serde
/// would take `[true]` for `{"enabled": true}`, and a caller that sent an
/// array meant something else.
fn optional<T: DeserializeOwned>(body: Bytes) -> Result<Option<T>, AdminError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Ok(None);
    };
    if body[start] != b'{' {
        return Err(AdminError::BadRequest(
            "invalid JSON body: expected an object, like {\"enabled\": true}".to_owned(),
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The answer to a refused admin call.
pub fn error_response(error: &AdminError) -> AdminResponse {
    json(error.status(), &error.document())
}

/// A `204 No Content`.
fn no_content() -> AdminResponse {
    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A JSON answer.
fn json(status: StatusCode, value: &impl Serialize) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).expect("admin documents serialize");
    body.push(b'\n');
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests;
