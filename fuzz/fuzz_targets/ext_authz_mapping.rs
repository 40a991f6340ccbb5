//! The ext_authz request mapping (`HttpMapping::map`): never panics on any method, path,
//! headers or route context, and agrees with an independent model of the route table on plain
//! paths: a path maps to the longest route prefix it lies under on segment boundaries (never a
//! shorter, laxer one) or is refused as ambiguous, the method decides the action, the tenant
//! comes from the context or the route, and a credential never shows in Debug output.
//!
//! Input: a flags byte, then lines: the method, the path, then `name: value` (a header) or
//! `@name=value` (a context extension of the Envoy route).
#![no_main]

use std::collections::HashMap;

use keyscope::domain::{Module, Tenant};
use keyscope::service::{
    HttpMapping, HttpRequestView, Mapped, Presented, PrincipalHeaders, Route, Unmapped, default_methods,
};
use libfuzzer_sys::fuzz_target;

/// The route table: prefix, module, tenant.
const ROUTES: [(&str, &str, Option<&str>); 5] = [
    ("/api", "api", None),
    ("/api/courses", "courses", None),
    ("/api/admin/", "admin", Some("acme")),
    ("/billing", "billing.invoices", Some("globex")),
    ("/", "public", None),
];

fn route(i: usize) -> Route {
    let (prefix, module, tenant) = ROUTES[i];
    Route {
        prefix: prefix.to_owned(),
        module: module.parse().expect("module"),
        tenant: tenant.map(|t| t.parse().expect("tenant")),
    }
}

/// The route whose prefix the path lies under segment by segment, the deepest one.
fn route_model(path: &str, routes: usize) -> Option<usize> {
    let path_segments: Vec<&str> = path.split('/').collect();
    (0..routes)
        .filter(|&i| {
            let prefix = ROUTES[i].0.trim_end_matches('/');
            prefix.is_empty() || path_segments.starts_with(&prefix.split('/').collect::<Vec<_>>())
        })
        .max_by_key(|&i| ROUTES[i].0.trim_end_matches('/').split('/').count())
}

fn header<'a>(headers: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let allow_unmapped = flags & 1 != 0;
    let with_principal = flags & 2 != 0;
    let routes = if flags & 4 != 0 { 5 } else { 4 };
    let api_key_header = if flags & 8 != 0 { "X-Api-Key" } else { "x-token" };

    let mut mapping =
        HttpMapping::new(api_key_header, (0..routes).map(route).collect(), allow_unmapped, default_methods());
    if with_principal {
        mapping = mapping
            .with_principal_headers(PrincipalHeaders { subject: "x-jwt-sub".into(), roles: "x-jwt-roles".into() });
    }

    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("");
    let mut headers = HashMap::new();
    let mut context = HashMap::new();
    for line in lines.take(16) {
        if let Some((k, v)) = line.strip_prefix('@').and_then(|l| l.split_once('=')) {
            context.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        } else if let Some((k, v)) = line.split_once(": ") {
            // One header per name, case-insensitively, as HTTP has it (Envoy joins repeats).
            if header(&headers, k).is_none() {
                headers.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    let mapped = mapping.map(&HttpRequestView { method, path, headers: &headers, context: &context });

    // The model: route config, then module and tenant, then action. Paths are read the way
    // upstreams may read them (decoded, parameters dropped, case folded), which the mapping
    // does itself; the model holds it to the fail-closed rule on plain paths (lowercase
    // letters and slashes, which every reading leaves as they are): such a path maps to the
    // deepest route it lies under segment by segment, or is refused as ambiguous, never to a
    // laxer route. Any other path may map to any route or be refused, but never panic.
    let expected: Result<(Option<Module>, Option<Tenant>), Mapped> = (|| {
        let tenant = match context.get("keyscope_tenant") {
            Some(t) => Some(t.parse::<Tenant>().map_err(|_| Mapped::Refused(Unmapped::BadRouteConfig))?),
            None => None,
        };
        if let Some(m) = context.get("keyscope_module") {
            return Ok((Some(m.parse().map_err(|_| Mapped::Refused(Unmapped::BadRouteConfig))?), tenant));
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        let plain =
            path.starts_with('/') && !path.contains("//") && path.bytes().all(|c| c == b'/' || c.is_ascii_lowercase());
        if !plain {
            return Ok((None, tenant));
        }
        match route_model(path, routes) {
            Some(i) => {
                let r = route(i);
                Ok((Some(r.module), tenant.or(r.tenant)))
            }
            None if allow_unmapped => Err(Mapped::Unchecked),
            None => Err(Mapped::Refused(Unmapped::NoRoute)),
        }
    })();
    let (module, tenant) = match expected {
        Err(refused) => {
            let ambiguous = matches!(mapped, Mapped::Refused(Unmapped::AmbiguousRoute));
            return assert!(mapped == refused || ambiguous, "{method:?} {path:?} {context:?}: {mapped:?}");
        }
        Ok((Some(module), tenant)) => (module, tenant),
        // A path the model does not read: any route, or a refusal, but no panic.
        Ok((None, _)) => return,
    };
    if matches!(mapped, Mapped::Refused(Unmapped::AmbiguousRoute)) && context.get("keyscope_module").is_none() {
        return;
    }
    let Some(&action) = default_methods().get(&method.to_ascii_uppercase()) else {
        return assert_eq!(mapped, Mapped::Refused(Unmapped::UnknownMethod));
    };
    let subject = with_principal.then(|| header(&headers, "x-jwt-sub")).flatten();
    let api_key = header(&headers, api_key_header).map(str::trim).filter(|v| !v.is_empty());
    match &mapped {
        Mapped::Check { presented, module: m, action: a, tenant: t } => {
            assert_eq!((m, *a, t), (&module, action, &tenant), "{path:?}");
            if subject.is_some() {
                // Behind jwt_authn the key comes from the API-key header only.
                assert_eq!(Some(presented), api_key.map(|k| Presented::Token(k.to_owned())).as_ref());
            }
            // The credential never shows in Debug output (module and tenant do, and may hold
            // any text the route context gives).
            assert_eq!(format!("{presented:?}"), "Presented([redacted])");
            assert!(format!("{mapped:?}").contains("Presented([redacted])"));
        }
        Mapped::Principal { module: m, action: a, tenant: t, .. } => {
            assert!(subject.is_some() && api_key.is_none(), "a principal only from its headers, without a key");
            assert_eq!((m, *a, Some(t)), (&module, action, tenant.as_ref()));
        }
        Mapped::Refused(Unmapped::NoCredential) => {
            assert!(api_key.is_none(), "an API key was presented");
            if subject.is_none() {
                let bearer = header(&headers, "authorization")
                    .and_then(|v| v.trim().split_once(' '))
                    .filter(|(scheme, rest)| scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty());
                assert!(bearer.is_none(), "a bearer token was presented");
            }
        }
        Mapped::Refused(Unmapped::BadPrincipal) => assert!(subject.is_some() && api_key.is_none()),
        Mapped::Refused(Unmapped::NoTenant) => assert!(subject.is_some() && tenant.is_none()),
        other => panic!("{other:?} for a mapped route and method ({path:?})"),
    }
});
