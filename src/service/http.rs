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
    /// Path prefix (without a trailing `/`) -> module (and tenant), longest prefix first.
    routes: Vec<Route>,
    /// Whether prefixes match paths ASCII-case-insensitively (default: yes).
    case_insensitive_routes: bool,
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
    /// Upstreams could resolve the path to different routes; the route table refuses to guess.
    UnsafePath(PathRefusal),
    /// The longest prefix that matches ends inside a path segment (`/adminx` for `/admin`):
    /// a front proxy matching plain prefixes reads it as that route, one matching segments
    /// as another.
    AmbiguousRoute,
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
            Unmapped::UnsafePath(_) => "UNSAFE_PATH",
            Unmapped::AmbiguousRoute => "AMBIGUOUS_ROUTE",
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
        for r in &mut routes {
            r.prefix.truncate(r.prefix.trim_end_matches('/').len());
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let methods = methods.into_iter().map(|(m, a)| (m.to_ascii_uppercase(), a)).collect();
        HttpMapping {
            api_key_header: api_key_header.to_ascii_lowercase(),
            routes,
            case_insensitive_routes: true,
            allow_unmapped,
            methods,
            principal: None,
        }
    }

    /// The mapping with route prefixes matched ASCII-case-insensitively (`true`, the default)
    /// or exactly (`false`: only for upstreams that route case-sensitively).
    pub fn with_case_insensitive_routes(mut self, on: bool) -> Self {
        self.case_insensitive_routes = on;
        self
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

    /// The module (and tenant): the context extensions', else the route table's. The path (as
    /// [`normalise_path`] reads it) takes the longest prefix it starts with. When that prefix
    /// ends inside a segment (`/adminx` for `/admin`) the request is refused: a front proxy
    /// matching plain prefixes sends it to that route's upstream, one matching whole segments
    /// elsewhere, and keyscope cannot tell which of the two routes is the stricter.
    fn route(&self, request: &HttpRequestView<'_>) -> Result<Option<(Module, Option<Tenant>)>, Unmapped> {
        let tenant = match request.context.get("keyscope_tenant") {
            Some(t) => Some(t.parse::<Tenant>().map_err(|_| Unmapped::BadRouteConfig)?),
            None => None,
        };
        if let Some(module) = request.context.get("keyscope_module") {
            return Ok(Some((module.parse().map_err(|_| Unmapped::BadRouteConfig)?, tenant)));
        }
        let path = normalise_path(request.path, self.case_insensitive_routes).map_err(Unmapped::UnsafePath)?;
        let Some(route) = self.routes.iter().find(|r| self.starts_with(&path, &r.prefix)) else { return Ok(None) };
        if !matches!(path.as_bytes().get(route.prefix.len()), None | Some(b'/')) {
            return Err(Unmapped::AmbiguousRoute);
        }
        Ok(Some((route.module.clone(), tenant.or_else(|| route.tenant.clone()))))
    }

    /// Whether `path` starts with `prefix`, compared ASCII-case-insensitively if so configured.
    fn starts_with(&self, path: &str, prefix: &str) -> bool {
        path.as_bytes().get(..prefix.len()).is_some_and(|head| {
            if self.case_insensitive_routes {
                head.eq_ignore_ascii_case(prefix.as_bytes())
            } else {
                head == prefix.as_bytes()
            }
        })
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

/// Why a path is refused before any route is matched: upstreams resolve it differently, so
/// it could reach a route other than the one keyscope would check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// A backslash, or an encoded `/` or `;` (`%2F`, `%3B`): some upstreams split segments there.
    Separator,
    /// A `.` or `..` segment, also encoded or with `;` parameters (`/%2e%2e;x/`).
    DotSegment,
    /// A `%` not followed by two hex digits, or escapes that do not decode to UTF-8.
    BadEscape,
    /// An encoded `%` followed by two hex digits (`%2561`): an upstream decoding twice reads
    /// another path.
    DoubleEncoding,
    /// NUL or another control character, raw or encoded.
    ControlCharacter,
    /// A character whose Unicode upper or lower case is ASCII (KELVIN SIGN, long s, dotless i,
    /// ß...), with case-insensitive routes: an upstream may read `/\u{212a}eys` as `/keys`.
    CaseFolding,
}

impl PathRefusal {
    /// The message of a deny body.
    pub fn message(self) -> &'static str {
        match self {
            PathRefusal::Separator => "the path has a backslash or an encoded `/` or `;`",
            PathRefusal::DotSegment => "the path has a `.` or `..` segment",
            PathRefusal::BadEscape => "the path has a malformed percent escape or escapes that are not UTF-8",
            PathRefusal::DoubleEncoding => "the path has a double-encoded percent escape (`%25` and two hex digits)",
            PathRefusal::ControlCharacter => "the path has a NUL or another control character",
            PathRefusal::CaseFolding => "the path has a character whose upper or lower case is an ASCII letter",
        }
    }
}

/// The path the route table matches: read so that it reaches the most specific route any
/// upstream could take it to, or refused when upstreams disagree in other ways.
///
/// The query and fragment are dropped; every percent escape is decoded (`/%61dmin` is
/// `/admin`); `;parameters` are removed from each segment (`/admin;x/users` is
/// `/admin/users`, as servlet containers read it); repeated and trailing slashes are merged
/// (`//admin/` is `/admin`). Refused: see [`PathRefusal`]; `fold_case` (case-insensitive
/// routes) also refuses characters that fold to ASCII letters.
pub fn normalise_path(path: &str, fold_case: bool) -> Result<String, PathRefusal> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    if decoded.contains('\\') {
        return Err(PathRefusal::Separator);
    }
    if decoded.chars().any(char::is_control) {
        return Err(PathRefusal::ControlCharacter);
    }
    // Every `%` left came from `%25`.
    if decoded.split('%').skip(1).any(|rest| rest.get(..2).is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))) {
        return Err(PathRefusal::DoubleEncoding);
    }
    if fold_case
        && decoded.chars().any(|c| !c.is_ascii() && c.to_lowercase().chain(c.to_uppercase()).any(|f| f.is_ascii()))
    {
        return Err(PathRefusal::CaseFolding);
    }
    let mut normal = String::with_capacity(decoded.len() + 1);
    for segment in decoded.split('/') {
        match segment.split(';').next().unwrap_or("") {
            "" => {}
            "." | ".." => return Err(PathRefusal::DotSegment),
            segment => {
                normal.push('/');
                normal.push_str(segment);
            }
        }
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Ok(normal)
}

/// `path` with every percent escape decoded; an encoded `/` or `;` is refused (it must not
/// become a separator), and so are malformed escapes and bytes that are not UTF-8.
fn percent_decode(path: &str) -> Result<String, PathRefusal> {
    let mut pieces = path.split('%');
    let mut bytes = pieces.next().unwrap_or("").as_bytes().to_vec();
    for piece in pieces {
        let hex = piece.get(..2).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())).ok_or(PathRefusal::BadEscape)?;
        match u8::from_str_radix(hex, 16).map_err(|_| PathRefusal::BadEscape)? {
            b'/' | b';' => return Err(PathRefusal::Separator),
            byte => bytes.push(byte),
        }
        bytes.extend_from_slice(piece.get(2..).unwrap_or("").as_bytes());
    }
    String::from_utf8(bytes).map_err(|_| PathRefusal::BadEscape)
}

/// Why `prefix` cannot be a route prefix, if it cannot: it must start with `/`, be ASCII
/// without `%`, `;`, `?`, `#` or backslashes, and be its own [`normalise_path`] (no dot or empty
/// segments; a trailing `/` is ignored), so that every spelling of a path under it is matched.
pub fn route_prefix_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') {
        return Some("must start with `/`");
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic() && !b"%;?#\\".contains(&b)) {
        return Some("must be printable ASCII without spaces, `%`, `;`, `?`, `#` or `\\`");
    }
    let trimmed = prefix.trim_end_matches('/');
    if normalise_path(prefix, false).ok().as_deref() != Some(if trimmed.is_empty() { "/" } else { trimmed }) {
        return Some("must have no empty, `.` or `..` segments");
    }
    None
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
        assert_eq!(module_of(&map("GET", "/api//courses/", &auth, &[])), Some("courses"), "slashes merged");
        assert_eq!(map("GET", "/elsewhere?x=/api/courses", &auth, &[]), Mapped::Refused(Unmapped::NoRoute));
        for sneaky in ["/api/courses/../billing", "/api/courses/%2e%2e/x", "/api/./courses", "/api%2Fcourses"] {
            assert!(matches!(map("GET", sneaky, &auth, &[]), Mapped::Refused(Unmapped::UnsafePath(_))), "{sneaky}");
        }
    }

    fn normal(path: &str) -> Result<String, PathRefusal> {
        normalise_path(path, true)
    }

    #[test]
    fn normalising_decodes_escapes_drops_parameters_and_merges_slashes() {
        for (path, want) in [
            ("", "/"),
            ("/", "/"),
            ("/admin/users?x=1#top", "/admin/users"),
            ("/%61dmin/%55sers", "/admin/Users"),
            ("/a%2db%2Ec%5fd%7Ee", "/a-b.c_d~e"),
            ("/caf%C3%A9%20x", "/caf\u{e9} x"),
            ("/admin;jsessionid=x/users", "/admin/users"),
            ("/admin;x", "/admin"),
            ("/admin;a;b=c/;x/users;", "/admin/users"),
            ("/;x/admin", "/admin"),
            ("//admin///users/", "/admin/users"),
            ("/100%25/x", "/100%/x"),
            ("/a%25zz", "/a%zz"),
            ("/...", "/..."),
            ("/.well-known/x", "/.well-known/x"),
            ("admin", "/admin"),
        ] {
            assert_eq!(normal(path).as_deref(), Ok(want), "{path}");
        }
    }

    #[test]
    fn paths_upstreams_resolve_differently_are_refused_with_the_reason() {
        use PathRefusal::*;
        for (path, why) in [
            ("/admin%2Fusers", Separator),
            ("/admin%2fusers", Separator),
            ("/admin%3Bx/users", Separator),
            ("/admin%5Cusers", Separator),
            ("/admin\\users", Separator),
            ("/a/../admin", DotSegment),
            ("/admin/.", DotSegment),
            ("/./admin", DotSegment),
            ("/public/..;x/admin", DotSegment),
            ("/public/%2e%2E/admin", DotSegment),
            ("/public/.%2e;/admin", DotSegment),
            ("/admin%", BadEscape),
            ("/admin%6", BadEscape),
            ("/admin%zz", BadEscape),
            ("/admin%+1", BadEscape),
            ("/%u0061dmin", BadEscape),
            ("/%C0%AFadmin", BadEscape),
            ("/%E0%80%AFadmin", BadEscape),
            ("/%ff", BadEscape),
            ("/%C3", BadEscape),
            ("/%4\u{e9}", BadEscape),
            ("/%2561dmin", DoubleEncoding),
            ("/%25%36%31dmin", DoubleEncoding),
            ("/admin%00", ControlCharacter),
            ("/admin\u{0}", ControlCharacter),
            ("/admin%0A", ControlCharacter),
            ("/admin%7F", ControlCharacter),
            ("/admin%C2%85", ControlCharacter),
        ] {
            assert_eq!(normal(path), Err(why), "{path}");
        }
    }

    #[test]
    fn characters_folding_to_ascii_letters_are_refused_only_with_case_insensitive_routes() {
        for path in [
            "/\u{212a}eys",
            "/%E2%84%AAeys",
            "/u\u{17f}ers",
            "/adm\u{131}n",
            "/adm\u{130}n",
            "/cla\u{df}",
            "/\u{fb01}les",
        ] {
            assert_eq!(normalise_path(path, true), Err(PathRefusal::CaseFolding), "{path}");
            assert!(normalise_path(path, false).is_ok(), "{path}");
        }
        assert!(normal("/caf\u{e9}/\u{41f}\u{440}\u{438}").is_ok(), "other letters are fine");
    }

    #[test]
    fn normalising_never_panics_and_yields_a_merged_path_without_parameters() {
        let alphabet = ["/", ";", "%", "2", "f", "e", ".", "a", "\u{e9}", "?", "\\", "%2", "%C3"];
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            paths = paths.iter().flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}"))).collect();
            for path in &paths {
                for fold_case in [true, false] {
                    if let Ok(n) = normalise_path(path, fold_case) {
                        assert!(n.starts_with('/') && !n.contains("//") && !n.contains(';'), "{path} -> {n}");
                        assert!(n == "/" || !n.ends_with('/'), "{path} -> {n}");
                    }
                }
                let auth = [("authorization", "Bearer t")];
                map("GET", path, &auth, &[]);
            }
        }
    }

    fn admin_and_public(case_insensitive: bool) -> HttpMapping {
        HttpMapping::new("x-api-key", vec![route("/", "public"), route("/admin", "admin")], false, default_methods())
            .with_case_insensitive_routes(case_insensitive)
    }

    fn module_at(mapping: &HttpMapping, path: &str) -> Result<String, Mapped> {
        let headers: HashMap<String, String> = [("authorization".to_owned(), "Bearer t".to_owned())].into();
        let context = HashMap::new();
        match mapping.map(&HttpRequestView { method: "GET", path, headers: &headers, context: &context }) {
            Mapped::Check { module, .. } => Ok(module.as_str().to_owned()),
            other => Err(other),
        }
    }

    #[test]
    fn parameters_encodings_and_case_take_the_route_they_reach_upstream() {
        let mapping = admin_and_public(true);
        for path in [
            "/admin",
            "/admin/users",
            "/admin;jsessionid=x/users",
            "/admin;x",
            "/%61dmin/users",
            "/Admin/users",
            "/ADMIN",
            "/%41dmin",
            "//admin",
            "/;x/admin/",
            "/admin?x",
        ] {
            assert_eq!(module_at(&mapping, path).as_deref(), Ok("admin"), "{path}");
        }
        for path in ["/", "/users", "/public/admin", "/?/admin", "/x#/admin"] {
            assert_eq!(module_at(&mapping, path).as_deref(), Ok("public"), "{path}");
        }
    }

    #[test]
    fn case_sensitive_routes_take_a_prefix_in_its_own_case_only() {
        let mapping = admin_and_public(false);
        for path in ["/Admin/users", "/ADMIN", "/%41dmin"] {
            assert_eq!(module_at(&mapping, path).as_deref(), Ok("public"), "{path}");
        }
        for path in ["/admin;jsessionid=x/users", "/admin;x", "/%61dmin/users", "//admin"] {
            assert_eq!(module_at(&mapping, path).as_deref(), Ok("admin"), "{path}");
        }
        assert!(module_at(&mapping, "/\u{212a}eys").is_ok(), "no case folding to refuse");
    }

    #[test]
    fn a_prefix_ending_inside_a_segment_is_refused_as_ambiguous() {
        let ambiguous = Err(Mapped::Refused(Unmapped::AmbiguousRoute));
        let admin = admin_and_public(true);
        for path in ["/adminx", "/administrators/1", "/Adminx", "/adminx;y", "/%61dminx"] {
            assert_eq!(module_at(&admin, path), ambiguous, "{path}");
        }
        assert_eq!(module_at(&mapping(), "/api/coursesadmin"), ambiguous);
        // A prefix with a trailing `/` covers the path without it, like the others.
        let slash = HttpMapping::new("x-api-key", vec![route("/admin/", "admin")], false, default_methods());
        assert_eq!(module_at(&slash, "/admin").as_deref(), Ok("admin"));
        assert_eq!(module_at(&slash, "/adminx"), ambiguous);
        assert_eq!(module_at(&slash, "/other"), Err(Mapped::Refused(Unmapped::NoRoute)));
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
