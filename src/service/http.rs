//! How an HTTP request (as Envoy's ext_authz describes it) becomes a check: which credential,
//! module, action and tenant. Pure: no I/O, no Envoy types; `grpc::ext_authz` feeds it.

use std::collections::HashMap;

use super::{Presented, PrincipalCredential};
use crate::domain::{Action, Module, Tenant, limits};

/// How requests map to checks (config `ext_authz.*`).
#[derive(Debug, Clone)]
pub struct HttpMapping {
    /// Header carrying a whole token, matched case-insensitively (default `x-api-key`).
    pub api_key_header: String,
    /// Path prefix -> module (and tenant), longest prefix first.
    routes: Vec<Route>,
    /// Whether a request no route maps is allowed through unchecked (default: denied).
    pub allow_unmapped: bool,
    /// HTTP method (upper case) -> action.
    methods: HashMap<String, Action>,
    /// Where a bearer principal (set by Envoy's `jwt_authn`) is read from, if anywhere.
    principal: Option<PrincipalHeaders>,
}

/// The request headers that carry an already authenticated principal (config
/// `ext_authz.principal_headers`). Only to be configured behind Envoy's `jwt_authn` filter,
/// which sets them from a verified JWT and strips any a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalHeaders {
    /// The subject's header, e.g. `x-jwt-sub` (lowercase).
    pub subject: String,
    /// The roles' header, comma-separated, e.g. `x-jwt-roles` (lowercase).
    pub roles: String,
}

/// One entry of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix, e.g. `/api/courses`.
    pub prefix: String,
    /// The module it maps to.
    pub module: Module,
    /// The tenant its checks must belong to, if any.
    pub tenant: Option<Tenant>,
}

impl Default for HttpMapping {
    fn default() -> Self {
        HttpMapping::new("x-api-key", Vec::new(), false, default_methods())
    }
}

/// GET and HEAD read, POST creates, PUT and PATCH update, DELETE deletes.
pub fn default_methods() -> HashMap<String, Action> {
    [
        ("GET", Action::Read),
        ("HEAD", Action::Read),
        ("POST", Action::Create),
        ("PUT", Action::Update),
        ("PATCH", Action::Update),
        ("DELETE", Action::Delete),
    ]
    .into_iter()
    .map(|(m, a)| (m.to_owned(), a))
    .collect()
}

/// Why a request is refused before any key is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    /// No credential in any accepted form.
    NoCredential,
    /// No route maps the path, and the config denies unmapped requests.
    NoRoute,
    /// The method maps to no action.
    UnknownMethod,
    /// `keyscope_module` or `keyscope_tenant` in the route's context extensions is invalid.
    BadRouteConfig,
    /// The path has dot segments, empty segments or encoded separators; the route table
    /// refuses to guess where it leads.
    UnsafePath,
    /// A principal credential on a route that names no tenant.
    NoTenant,
    /// The principal headers hold no valid subject or roles.
    BadPrincipal,
}

impl Unmapped {
    /// The name used in deny bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unmapped::NoCredential => "MISSING_CREDENTIAL",
            Unmapped::NoRoute => "UNMAPPED_ROUTE",
            Unmapped::UnknownMethod => "UNKNOWN_METHOD",
            Unmapped::BadRouteConfig => "BAD_ROUTE_CONFIG",
            Unmapped::UnsafePath => "UNSAFE_PATH",
            Unmapped::NoTenant => "NO_TENANT",
            Unmapped::BadPrincipal => "MALFORMED_CREDENTIAL",
        }
    }
}

/// What a request maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Check this credential for this module and action.
    Check {
        /// The credential presented.
        presented: Presented,
        /// The module.
        module: Module,
        /// The action.
        action: Action,
        /// The tenant the key must belong to, when the route names one.
        tenant: Option<Tenant>,
    },
    /// Check this bearer principal (from the principal headers) for this module and action.
    Principal {
        /// The principal.
        credential: PrincipalCredential,
        /// The module.
        module: Module,
        /// The action.
        action: Action,
        /// The route's tenant.
        tenant: Tenant,
    },
    /// Allowed through unchecked (an unmapped route, with `allow_unmapped`).
    Unchecked,
    /// Refused before any lookup.
    Refused(Unmapped),
}

/// The parts of an HTTP request the mapping reads. Header names are lowercase, as Envoy
/// sends them; lookups lowercase the name asked for.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequestView<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The path, possibly with a query string (never part of the match).
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HashMap<String, String>,
    /// The route's `context_extensions`.
    pub context: &'a HashMap<String, String>,
}

impl HttpRequestView<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .or_else(|| self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
            .map(String::as_str)
    }
}

impl HttpMapping {
    /// A mapping; routes are kept longest prefix first.
    pub fn new(
        api_key_header: &str,
        mut routes: Vec<Route>,
        allow_unmapped: bool,
        methods: HashMap<String, Action>,
    ) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let methods = methods.into_iter().map(|(m, a)| (m.to_ascii_uppercase(), a)).collect();
        HttpMapping {
            api_key_header: api_key_header.to_ascii_lowercase(),
            routes,
            allow_unmapped,
            methods,
            principal: None,
        }
    }

    /// The mapping reading a bearer principal from `headers` when a request carries the
    /// subject header and no API-key header.
    pub fn with_principal_headers(mut self, headers: PrincipalHeaders) -> Self {
        self.principal = Some(PrincipalHeaders {
            subject: headers.subject.to_ascii_lowercase(),
            roles: headers.roles.to_ascii_lowercase(),
        });
        self
    }

    /// The principal headers configured, if any.
    pub fn principal_headers(&self) -> Option<&PrincipalHeaders> {
        self.principal.as_ref()
    }

    /// A bearer principal named by `subject`, the value of the configured subject header:
    /// `None` when the API-key header is present (a key then decides).
    fn principal(
        &self,
        request: &HttpRequestView<'_>,
        (names, subject): (&PrincipalHeaders, &str),
        module: &Module,
        action: Action,
        tenant: Option<&Tenant>,
    ) -> Option<Mapped> {
        if request.header(&self.api_key_header).is_some() {
            return None;
        }
        let roles: Vec<String> = request
            .header(&names.roles)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
        let Ok(credential) = PrincipalCredential::parse("principal", subject.trim(), &roles) else {
            return Some(Mapped::Refused(Unmapped::BadPrincipal));
        };
        let Some(tenant) = tenant else { return Some(Mapped::Refused(Unmapped::NoTenant)) };
        Some(Mapped::Principal { credential, module: module.clone(), action, tenant: tenant.clone() })
    }

    /// Maps a request: credential, then module (context extensions, else the route table),
    /// then action.
    pub fn map(&self, request: &HttpRequestView<'_>) -> Mapped {
        let (module, tenant) = match self.route(request) {
            Ok(Some(found)) => found,
            Ok(None) if self.allow_unmapped => return Mapped::Unchecked,
            Ok(None) => return Mapped::Refused(Unmapped::NoRoute),
            Err(refused) => return Mapped::Refused(refused),
        };
        let Some(action) = self.methods.get(&request.method.to_ascii_uppercase()).copied() else {
            return Mapped::Refused(Unmapped::UnknownMethod);
        };
        let subject = self.principal.as_ref().and_then(|names| Some((names, request.header(&names.subject)?)));
        if let Some(subject) = subject
            && let Some(mapped) = self.principal(request, subject, &module, action, tenant.as_ref())
        {
            return mapped;
        }
        // Behind jwt_authn (a subject header is set), `authorization` holds the caller's JWT: a
        // key then comes from the API-key header only.
        let presented = if subject.is_some() { self.api_key(request) } else { self.credential(request) };
        let Some(presented) = presented else { return Mapped::Refused(Unmapped::NoCredential) };
        Mapped::Check { presented, module, action, tenant }
    }

    fn route(&self, request: &HttpRequestView<'_>) -> Result<Option<(Module, Option<Tenant>)>, Unmapped> {
        let tenant = match request.context.get("keyscope_tenant") {
            Some(t) => Some(t.parse::<Tenant>().map_err(|_| Unmapped::BadRouteConfig)?),
            None => None,
        };
        if let Some(module) = request.context.get("keyscope_module") {
            return Ok(Some((module.parse().map_err(|_| Unmapped::BadRouteConfig)?, tenant)));
        }
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        if unsafe_path(path) {
            return Err(Unmapped::UnsafePath);
        }
        Ok(self
            .routes
            .iter()
            .find(|r| under_prefix(path, &r.prefix))
            .map(|r| (r.module.clone(), tenant.or_else(|| r.tenant.clone()))))
    }

    /// The credential: `authorization: Bearer`, then the API-key header, then HTTP Basic (key
    /// id and secret as user and password, or the whole token as the password).
    fn credential(&self, request: &HttpRequestView<'_>) -> Option<Presented> {
        if let Some((scheme, rest)) = request.header("authorization").and_then(|v| v.trim().split_once(' ')) {
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                return Some(Presented::Token(rest.to_owned()));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                // Basic that does not decode is a malformed credential, not a missing one.
                return Some(basic(rest).unwrap_or_else(|| Presented::Token(String::new())));
            }
        }
        self.api_key(request)
    }

    /// The API-key header's token, if any.
    fn api_key(&self, request: &HttpRequestView<'_>) -> Option<Presented> {
        request
            .header(&self.api_key_header)
            .filter(|v| !v.trim().is_empty())
            .map(|v| Presented::Token(v.trim().to_owned()))
    }
}

/// Whether `path` is `prefix` or lies below it, on a segment boundary: `/api/courses` covers
/// `/api/courses` and `/api/courses/1`, not `/api/coursesadmin`.
fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
}

/// Paths an upstream might resolve differently from how they read: dot segments, empty
/// segments, encoded slashes or dots, backslashes. The route table refuses them rather than
/// guess (Envoy's `normalize_path` and `merge_slashes` should be on in front of keyscope).
fn unsafe_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.contains("//")
        || path.contains('\\')
        || lower.contains("%2f")
        || lower.contains("%2e")
        || lower.contains("%5c")
        || path.split('/').any(|segment| segment == "." || segment == "..")
}

fn basic(encoded: &str) -> Option<Presented> {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    if encoded.len() > 2 * limits::TOKEN_MAX {
        return Some(Presented::Token(String::new()));
    }
    let decoded = STANDARD.decode(encoded).ok().and_then(|b| String::from_utf8(b).ok())?;
    let (user, password) = decoded.split_once(':')?;
    if user.is_empty() {
        return Some(Presented::Token(password.to_owned()));
    }
    if password.contains('_') && password.len() > 40 {
        // The whole token as the password (the user is then a label, ignored).
        return Some(Presented::Token(password.to_owned()));
    }
    Some(Presented::Pair { key_id: user.to_owned(), secret: password.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, module: &str) -> Route {
        Route { prefix: prefix.into(), module: module.parse().expect("module"), tenant: None }
    }

    fn mapping() -> HttpMapping {
        HttpMapping::new(
            "X-Api-Key",
            vec![route("/api", "api"), route("/api/courses", "courses")],
            false,
            default_methods(),
        )
    }

    fn map(method: &str, path: &str, headers: &[(&str, &str)], context: &[(&str, &str)]) -> Mapped {
        let headers: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let context: HashMap<String, String> = context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        mapping().map(&HttpRequestView { method, path, headers: &headers, context: &context })
    }

    fn module_of(m: &Mapped) -> Option<&str> {
        match m {
            Mapped::Check { module, .. } => Some(module.as_str()),
            _ => None,
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_the_query_never_matches() {
        let auth = [("authorization", "Bearer t")];
        assert_eq!(module_of(&map("GET", "/api/courses/1", &auth, &[])), Some("courses"));
        assert_eq!(module_of(&map("GET", "/api/other", &auth, &[])), Some("api"));
        assert_eq!(map("GET", "/elsewhere?x=/api/courses", &auth, &[]), Mapped::Refused(Unmapped::NoRoute));
        assert_eq!(module_of(&map("GET", "/api/coursesadmin", &auth, &[])), Some("api"), "segment boundaries only");
        for sneaky in
            ["/api/courses/../billing", "/api//courses", "/api/courses/%2e%2e/x", "/api/./courses", "/api%2Fcourses"]
        {
            assert_eq!(map("GET", sneaky, &auth, &[]), Mapped::Refused(Unmapped::UnsafePath), "{sneaky}");
        }
    }

    #[test]
    fn context_extensions_take_precedence_over_the_route_table() {
        let auth = [("authorization", "Bearer t")];
        let mapped =
            map("POST", "/api/courses", &auth, &[("keyscope_module", "billing.invoices"), ("keyscope_tenant", "acme")]);
        assert!(
            matches!(&mapped, Mapped::Check { module, action: Action::Create, tenant: Some(tenant), .. }
                if module.as_str() == "billing.invoices" && tenant.as_str() == "acme"),
            "{mapped:?}"
        );
        assert_eq!(
            map("GET", "/x", &auth, &[("keyscope_module", "Bad Module")]),
            Mapped::Refused(Unmapped::BadRouteConfig)
        );
    }

    #[test]
    fn every_credential_form_is_read() {
        let bearer = map("GET", "/api", &[("Authorization", "bearer ks_tok")], &[]);
        assert!(matches!(bearer, Mapped::Check { presented: Presented::Token(ref t), .. } if t == "ks_tok"));
        let header = map("GET", "/api", &[("x-api-key", " ks_tok ")], &[]);
        assert!(matches!(header, Mapped::Check { presented: Presented::Token(ref t), .. } if t == "ks_tok"));
        use base64::{Engine as _, engine::general_purpose::STANDARD};
        let pair = STANDARD.encode("abcdefghijABCDEFGHIJ:secretpart");
        let basic = map("GET", "/api", &[("authorization", &format!("Basic {pair}"))], &[]);
        assert!(
            matches!(basic, Mapped::Check { presented: Presented::Pair { ref key_id, .. }, .. } if key_id == "abcdefghijABCDEFGHIJ")
        );
        let token = STANDARD.encode(":ks_whole");
        let basic = map("GET", "/api", &[("authorization", &format!("Basic {token}"))], &[]);
        assert!(matches!(basic, Mapped::Check { presented: Presented::Token(ref t), .. } if t == "ks_whole"));
        assert_eq!(map("GET", "/api", &[], &[]), Mapped::Refused(Unmapped::NoCredential));
        assert_eq!(map("GET", "/api", &[("authorization", "Digest x")], &[]), Mapped::Refused(Unmapped::NoCredential));
        // An authorization header of another scheme does not hide the API-key header.
        let both = map("GET", "/api", &[("authorization", "Digest x"), ("x-api-key", "ks_tok")], &[]);
        assert!(matches!(both, Mapped::Check { presented: Presented::Token(ref t), .. } if t == "ks_tok"));
    }

    #[test]
    fn methods_map_to_actions_and_unknown_ones_are_refused() {
        let auth = [("authorization", "Bearer t")];
        for (method, action) in
            [("get", Action::Read), ("HEAD", Action::Read), ("PATCH", Action::Update), ("DELETE", Action::Delete)]
        {
            assert!(
                matches!(map(method, "/api", &auth, &[]), Mapped::Check { action: a, .. } if a == action),
                "{method}"
            );
        }
        assert_eq!(map("TRACE", "/api", &auth, &[]), Mapped::Refused(Unmapped::UnknownMethod));
    }
}
