//! Names, patterns, rules, the decision and the admin invariants (`Module`, `Pattern`,
//! `Rules::parse`, `evaluate`, `judge`): never panics on any input, parsed names and patterns
//! agree with their text form, and the judgment admin calls rely on is sound on every module
//! the input names.
//!
//! Input: lines. Each line is parsed as every kind of name; a line `<c><pattern>` also adds
//! the pattern to one of four scopes (two before, two after a change), chosen by the control
//! byte `c` with the action and, for bit 4, deny mode.
#![no_main]

use std::time::SystemTime;

use std::sync::Arc;

use keyscope::domain::{
    AccessGraph, Action, Holding, KeyFacts, KeyId, Label, Module, Mutation, Pattern, Rule, Rules, Scope, ScopeId,
    ScopeMode, Tenant, evaluate, judge,
};
use libfuzzer_sys::fuzz_target;

/// The reserved-module rule from its text: `keyscope` and everything below it.
fn reserved_text(m: &str) -> bool {
    m == "keyscope" || m.starts_with("keyscope.")
}

/// What a pattern matches, from its text alone.
fn matches_text(pattern: &str, module: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(parent) => {
            module.len() > parent.len() + 1 && module.starts_with(parent) && module[parent.len()..].starts_with('.')
        }
        None => pattern == module,
    }
}

fn scope(n: usize, deny: bool, raw: &[Vec<String>; 4]) -> Scope {
    let lists = [&raw[0][..], &raw[1][..], &raw[2][..], &raw[3][..]];
    let rules = match Rules::parse(lists) {
        Ok(rules) => {
            for (action, list) in Action::ALL.into_iter().zip(lists) {
                let parsed = rules.patterns(action);
                assert_eq!(parsed.len(), list.len(), "every listed pattern is kept");
                assert!(parsed.windows(2).all(|w| w[0] < w[1]), "sorted and free of duplicates");
            }
            rules
        }
        // Duplicates are refused by parse; build the rules from the valid patterns instead.
        Err(_) => Rules::from_patterns(
            raw.clone().map(|list| list.iter().filter_map(|p| p.parse::<Pattern>().ok()).collect()),
        ),
    };
    Scope {
        id: format!("scp{n}").parse::<ScopeId>().expect("scope id"),
        tenant: "acme".parse::<Tenant>().expect("tenant"),
        label: format!("scope {n}").parse::<Label>().expect("label"),
        description: String::new(),
        mode: if deny { ScopeMode::Deny } else { ScopeMode::Allow },
        rules,
        builtin: false,
        version: 1,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    }
}

fn allowed(scopes: &[&Scope], module: &Module, action: Action) -> bool {
    evaluate(scopes, module, action).allowed()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut modules: Vec<Module> =
        ["keyscope", "keyscope.keys", "keyscope.scopes.x", "keyscopex", "billing", "billing.invoices", "a"]
            .iter()
            .map(|m| m.parse().expect("module"))
            .collect();
    let mut patterns: Vec<(String, Pattern)> = Vec::new();
    let mut raw: [[Vec<String>; 4]; 4] = Default::default();
    let mut deny = [false; 4];

    for line in text.lines().take(32) {
        // Every kind of name: never a panic; what parses shows as it was written.
        if let Ok(m) = line.parse::<Module>() {
            assert_eq!(m.as_str(), line);
            assert_eq!(m.is_reserved(), reserved_text(line));
            modules.push(m);
        }
        if let Ok(p) = line.parse::<Pattern>() {
            assert_eq!(p.to_string(), line, "a pattern re-serialises identically");
            assert_eq!(p.to_string().parse::<Pattern>().as_ref(), Ok(&p));
            assert_eq!(p.is_reserved(), line != "*" && reserved_text(line.trim_end_matches(".*")));
            if let Pattern::Exact(m) | Pattern::Below(m) = &p {
                modules.push(m.clone());
                for child in [format!("{m}.x"), format!("{m}.x.y")] {
                    modules.extend(child.parse::<Module>().ok());
                }
            }
            patterns.push((line.to_owned(), p));
        }
        for parsed in [
            line.parse::<Tenant>().map(|t| t.to_string()),
            line.parse::<ScopeId>().map(|s| s.to_string()),
            line.parse::<Label>().map(|l| l.to_string()),
            line.parse::<KeyId>().map(|k| k.to_string()),
            line.parse::<Action>().map(|a| a.to_string()),
        ] {
            match parsed {
                Ok(shown) => assert_eq!(shown, line),
                // An error message is one short line, whatever was sent.
                Err(problem) => assert!(!problem.0.contains('\n')),
            }
        }
        // A rule line: control byte, then a pattern.
        let mut chars = line.chars();
        if let Some(c) = chars.next() {
            let c = c as u32;
            let (which, action) = ((c & 3) as usize, ((c >> 2) & 3) as usize);
            deny[which] |= c & 16 != 0;
            if raw[which][action].len() < 4 {
                raw[which][action].push(chars.as_str().to_owned());
            }
        }
    }
    modules.sort();
    modules.dedup();
    modules.truncate(24);

    // Patterns against modules: what they match follows from their text; `*` matches every
    // module but grants no reserved one; only a reserved pattern grants a reserved module.
    for (text, p) in &patterns {
        for m in &modules {
            let matches = matches_text(text, m.as_str());
            assert_eq!(p.matches(m), matches, "{text} vs {m}");
            assert_eq!(p.grants(m), matches && !(text == "*" && m.is_reserved()), "{text} vs {m}");
            if p.grants(m) && m.is_reserved() {
                assert!(p.is_reserved(), "{text} grants reserved {m}");
            }
        }
    }

    // Scopes: 0 and 1 before a change, 2 and 3 after it.
    let scopes: Vec<Scope> = (0..4).map(|n| scope(n, deny[n], &raw[n])).collect();
    let before: Vec<&Scope> = scopes[..2].iter().collect();
    let after: Vec<&Scope> = scopes[2..].iter().collect();
    // A key holding the first two scopes is changed to hold the last two: judged as a removal
    // (nothing may be gained), and as a handed-out key by a caller holding the first two (no
    // reserved grant the caller lacks).
    let mut graph = AccessGraph::default();
    for s in &scopes {
        graph.scopes.insert(s.id.clone(), Arc::new(s.clone()));
    }
    let key: KeyId = "k0000000000000000000".parse().expect("key id");
    let facts = |set: &[&Scope]| KeyFacts {
        scope_ids: set.iter().map(|s| s.id.clone()).collect(),
        owner: String::new(),
        live: true,
    };
    graph.keys.insert(key.clone(), facts(&before));
    let judged = |issued: bool, caller: &Holding<'_>, rule: Rule| {
        let mut changed = graph.clone();
        Mutation::PutKey { id: key.clone(), facts: facts(&after), issued }.apply(&mut changed);
        if issued {
            changed.keys.insert(key.clone(), facts(&after));
            let mut empty = graph.clone();
            empty.keys.clear();
            judge(&empty, &changed, caller, rule)
        } else {
            judge(&graph, &changed, caller, rule)
        }
    };
    let widened = judged(false, &Holding::Nothing, Rule::NoWidening).map(|v| (v.action, v.module));
    let reserved_gain = judged(true, &Holding::Layers(vec![before.clone()]), Rule::NoEscalation);
    if let Some((action, module)) = &widened {
        assert!(allowed(&after, module, *action) && !allowed(&before, module, *action));
    }
    for action in Action::ALL {
        for m in &modules {
            let after_allows = allowed(&after, m, action);
            let before_allows = allowed(&before, m, action);
            if widened.is_none() {
                assert!(!after_allows || before_allows, "the judgment missed a widening: {action} on {m}");
            }
            if reserved_gain.is_none() && m.is_reserved() {
                assert!(!after_allows || before_allows, "the judgment missed an escalation: {action} on {m}");
            }
            // Deny by default: allowed only when a scope grants and none denies; a reserved
            // module only through an allow-mode pattern that names it.
            for set in [&before, &after] {
                let decision = evaluate(set, m, action);
                if decision.allowed() {
                    assert!(set.iter().any(|s| s.grants(m, action)));
                    assert!(!set.iter().any(|s| s.denies(m, action)));
                    if m.is_reserved() {
                        assert!(set.iter().any(|s| s.mode == ScopeMode::Allow
                            && s.rules.patterns(action).iter().any(|p| p.is_reserved() && p.matches(m))));
                    }
                }
            }
        }
        assert!(!evaluate(&[], &modules[0], action).allowed(), "no scope, no access");
    }
});
