//! What an admin path names, parsed once, and the methods each accepts.

use http::Method;

/// A resource of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `/v1/status`.
    Status,
    /// `/v1/maintenance`.
    Maintenance,
    /// `/v1/maintenance/windows`.
    Windows,
    /// `/v1/maintenance/windows/{id}`.
    Window(&'a str),
    /// `/v1/switch`.
    Switch,
    /// `/v1/rollback`.
    Rollback,
    /// `/v1/reload`.
    Reload,
    /// `/v1/upgrade`.
    Upgrade,
    /// `/v1/bypass-tokens`.
    BypassTokens,
    /// `/v1/pools/{name}/probe`.
    PoolProbe(&'a str),
    /// `/v1/deploys`.
    Deploys,
    /// `/v1/deploys/{id}`.
    Deploy(&'a str),
    /// `/v1/deploys/{id}/steps`.
    DeploySteps(&'a str),
    /// `/metrics`.
    Metrics,
    /// `/service-context`, the compatibility route.
    ServiceContext,
    /// `/v1/events`, the events stream.
    Events,
    /// One of the dashboard's files: `/`, `/dashboard.js`, `/dashboard.css`.
    Dashboard(&'a str),
}

impl<'a> Resource<'a> {
    /// The resource `path` names, if any.
    pub fn of(path: &'a str) -> Option<Resource<'a>> {
        let fixed = match path {
            "/v1/status" => Some(Resource::Status),
            "/v1/maintenance" => Some(Resource::Maintenance),
            "/v1/maintenance/windows" => Some(Resource::Windows),
            "/v1/switch" => Some(Resource::Switch),
            "/v1/rollback" => Some(Resource::Rollback),
            "/v1/reload" => Some(Resource::Reload),
            "/v1/upgrade" => Some(Resource::Upgrade),
            "/v1/bypass-tokens" => Some(Resource::BypassTokens),
            "/v1/deploys" => Some(Resource::Deploys),
            "/metrics" => Some(Resource::Metrics),
            "/service-context" => Some(Resource::ServiceContext),
            "/v1/events" => Some(Resource::Events),
            "/" | "/dashboard.js" | "/dashboard.css" => Some(Resource::Dashboard(path)),
            _ => None,
        };
        fixed
            .or_else(|| segment(path, "/v1/maintenance/windows/", "").map(Resource::Window))
            .or_else(|| segment(path, "/v1/pools/", "/probe").map(Resource::PoolProbe))
            .or_else(|| segment(path, "/v1/deploys/", "/steps").map(Resource::DeploySteps))
            .or_else(|| segment(path, "/v1/deploys/", "").map(Resource::Deploy))
    }

    /// The methods it accepts, for 405's `Allow`.
    pub fn allowed_methods(self) -> &'static str {
        match self {
            Resource::Status | Resource::Metrics | Resource::Events => "GET",
            Resource::Dashboard(_) => "GET, HEAD",
            Resource::Maintenance => "PUT",
            Resource::Windows => "GET, POST",
            Resource::Window(_) => "DELETE",
            Resource::Deploy(_) => "PUT, DELETE",
            Resource::ServiceContext => "GET, PATCH",
            Resource::Switch
            | Resource::Rollback
            | Resource::Reload
            | Resource::Upgrade
            | Resource::BypassTokens
            | Resource::PoolProbe(_)
            | Resource::Deploys
            | Resource::DeploySteps(_) => "POST",
        }
    }

    /// Whether `method` on it only reads: what a read-only token may do.
    pub fn only_reads(self, method: &Method) -> bool {
        *method == Method::GET
            && matches!(
                self,
                Resource::Status
                    | Resource::Windows
                    | Resource::Metrics
                    | Resource::Events
                    | Resource::ServiceContext
            )
            || self.is_public(method)
    }

    /// Whether anyone may have it without a token: the dashboard's files,
    /// which hold no data (every call the page makes carries the token).
    pub fn is_public(self, method: &Method) -> bool {
        matches!(self, Resource::Dashboard(_)) && matches!(*method, Method::GET | Method::HEAD)
    }
}

/// The one path segment between `prefix` and `suffix` in `path`.
fn segment<'a>(path: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_suffix(suffix)
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource_and_nothing_else() {
        assert_eq!(
            Resource::of("/v1/deploys/d-1/steps"),
            Some(Resource::DeploySteps("d-1"))
        );
        assert_eq!(
            Resource::of("/v1/deploys/d-1"),
            Some(Resource::Deploy("d-1"))
        );
        assert_eq!(
            Resource::of("/v1/pools/green/probe"),
            Some(Resource::PoolProbe("green"))
        );
        assert_eq!(
            Resource::of("/v1/maintenance/windows/w3"),
            Some(Resource::Window("w3"))
        );
        for path in [
            "/v1/deploys/",
            "/v1/deploys/a/b",
            "/v1/status/",
            "//v1/status",
            "/v1/pools//probe",
        ] {
            assert_eq!(Resource::of(path), None, "{path}");
        }
        assert!(Resource::Status.only_reads(&Method::GET));
        assert!(!Resource::Status.only_reads(&Method::HEAD));
        assert!(!Resource::Deploys.only_reads(&Method::GET));
    }
}
