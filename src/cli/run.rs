//! Runs one client command and prints its result.

use std::{collections::HashMap, process::ExitCode};

use prost_types::FieldMask;
use serde_json::{Value, json};

use super::{
    args::{
        AuditArgs, CheckArgs, Cli, Command, KeyCommand, KeyPolicyArgs, KeyStateArgs, ModeArg, PageArgs, PolicyCommand,
        RuleArgs, ScopeCommand, StateArg, TenantCommand, TokenCommand,
    },
    client::{CliError, Connection},
    output,
};
use crate::{domain::TokenFormat, grpc::pb};

/// Exit code of a denied `check`.
pub const EXIT_DENIED: u8 = 3;

/// Exit code of a usage error (as clap's own): the arguments cannot be used.
pub const EXIT_USAGE: u8 = 2;

/// What a command produced: text for people, JSON for machines, and whether it was a denial.
struct Output {
    text: String,
    json: Value,
    denied: bool,
}

impl Output {
    fn new(text: String, json: Value) -> Self {
        Output { text, json, denied: false }
    }
}

/// Runs a client command (everything but `serve`) and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    match execute(cli).await {
        Ok(out) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&out.json).unwrap_or_default());
            } else {
                print!("{}", out.text);
            }
            if out.denied { ExitCode::from(EXIT_DENIED) } else { ExitCode::SUCCESS }
        }
        Err(error) => {
            if json {
                eprintln!("{}", json!({"error": error.to_string()}));
            } else {
                eprintln!("error: {error}");
            }
            if matches!(error, CliError::Usage(_)) { ExitCode::from(EXIT_USAGE) } else { ExitCode::FAILURE }
        }
    }
}

async fn execute(cli: Cli) -> Result<Output, CliError> {
    let Cli { server, token, json: _, tls, command } = cli;
    match command {
        Command::Serve { .. } => Err(CliError::Usage("`serve` is not a client command".into())),
        Command::Token(TokenCommand::New { prefix }) => new_token(&prefix),
        Command::Check(args) => {
            let conn = Connection::open(&server, &tls, None).await?;
            check(&conn, args, token).await
        }
        Command::Key(cmd) => {
            let conn = Connection::open(&server, &tls, token.as_deref()).await?;
            key(&conn, cmd).await
        }
        Command::Scope(cmd) => {
            let conn = Connection::open(&server, &tls, token.as_deref()).await?;
            scope(&conn, cmd).await
        }
        Command::Audit(args) => {
            let conn = Connection::open(&server, &tls, token.as_deref()).await?;
            audit(&conn, args).await
        }
        Command::Tenant(TenantCommand::Policy(cmd)) => {
            let conn = Connection::open(&server, &tls, token.as_deref()).await?;
            policy(&conn, cmd).await
        }
        Command::Principal(cmd) => {
            let conn = Connection::open(&server, &tls, token.as_deref()).await?;
            let (text, json) = super::principals::principal(&conn, cmd).await?;
            Ok(Output::new(text, json))
        }
    }
}

fn humantime_duration(flag: &str, raw: &str) -> Result<prost_types::Duration, CliError> {
    let d = humantime::parse_duration(raw).map_err(|e| CliError::Usage(format!("{flag} `{raw}`: {e}")))?;
    Ok(crate::grpc::convert::duration_to_pb(d))
}

fn rate_limit(policy: &KeyPolicyArgs) -> Option<pb::RateLimit> {
    match (policy.rate, policy.burst) {
        (Some(requests_per_second), Some(burst)) => Some(pb::RateLimit { requests_per_second, burst }),
        _ => None,
    }
}

async fn policy(conn: &Connection, cmd: PolicyCommand) -> Result<Output, CliError> {
    let mut client = conn.keys();
    let policy = match cmd {
        PolicyCommand::Get { tenant } => {
            client.get_tenant_policy(pb::GetTenantPolicyRequest { tenant: tenant.tenant }).await?.into_inner()
        }
        PolicyCommand::Set { tenant, max_key_lifetime, no_max_key_lifetime: _, version } => {
            let max_key_lifetime =
                max_key_lifetime.map(|raw| humantime_duration("--max-key-lifetime", &raw)).transpose()?;
            let request =
                pb::SetTenantPolicyRequest { tenant: tenant.tenant, max_key_lifetime, expected_version: version };
            client.set_tenant_policy(request).await?.into_inner()
        }
    };
    Ok(Output::new(output::policy_text(&policy), output::policy_json(&policy)))
}

/// Lists audit events newest first, following page tokens until `--limit` events are found.
async fn audit(conn: &Connection, args: AuditArgs) -> Result<Output, CliError> {
    let AuditArgs { tenant, target, target_type, actor, since, until, limit } = args;
    let limit = limit as usize;
    let request = pb::ListAuditEventsRequest {
        tenant: tenant.tenant,
        page_size: 0,
        page_token: String::new(),
        target_id: target.unwrap_or_default(),
        actor_key_id: actor.unwrap_or_default(),
        start_time: output::parse_time("--since", since.as_deref()).map_err(CliError::Usage)?,
        end_time: output::parse_time("--until", until.as_deref()).map_err(CliError::Usage)?,
        target_type: target_type.unwrap_or_default(),
    };
    let mut client = conn.audit();
    let mut events = Vec::new();
    let mut next = String::new();
    loop {
        let page_size = i32::try_from((limit - events.len()).min(500)).unwrap_or(500);
        let page = pb::ListAuditEventsRequest { page_size, page_token: next, ..request.clone() };
        let page = client.list_audit_events(page).await?.into_inner();
        events.extend(page.events);
        next = page.next_page_token;
        if next.is_empty() || events.len() >= limit {
            break;
        }
    }
    events.truncate(limit);
    let mut text = format!("{:<22}{:<14}{:<32}{:<22}REQUEST\n", "TIME", "OPERATION", "TARGET", "ACTOR");
    text.extend(events.iter().map(output::audit_row));
    if !next.is_empty() {
        text.push_str("more: raise --limit to see older events\n");
    }
    let json = json!({"events": events.iter().map(output::audit_json).collect::<Vec<_>>(), "next_page_token": next});
    Ok(Output::new(text, json))
}

fn new_token(prefix: &str) -> Result<Output, CliError> {
    let format = TokenFormat::new(prefix).map_err(|p| CliError::Usage(format!("--prefix: {}", p.0)))?;
    let id = format.new_key_id().map_err(|e| CliError::Usage(e.to_string()))?;
    let (_, text) = format.issue(&id).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(Output::new(format!("{}\n", text.expose()), json!({"key_id": id.as_str(), "token": text.expose()})))
}

fn action(raw: &str) -> Result<i32, CliError> {
    let action: crate::domain::Action =
        raw.parse().map_err(|p: crate::domain::Problem| CliError::Usage(format!("action: {}", p.0)))?;
    Ok(crate::grpc::convert::action_to_pb(action).into())
}

async fn check(conn: &Connection, args: CheckArgs, token: Option<String>) -> Result<Output, CliError> {
    let CheckArgs { module, action: raw_action, tenant, credential, key_id, secret, source, subject, roles } = args;
    let credential = match (credential.or(token), key_id, secret) {
        _ if subject.is_some() => {
            pb::check_request::Credential::Principal(pb::Principal { subject: subject.unwrap_or_default(), roles })
        }
        (_, Some(key_id), Some(secret)) => pb::check_request::Credential::KeyPair(pb::KeyPair { key_id, secret }),
        (Some(token), _, _) => pb::check_request::Credential::Token(token),
        _ => {
            return Err(CliError::Usage(
                "give the credential to check: --credential, --token or --key-id with --secret".into(),
            ));
        }
    };
    let request = pb::CheckRequest {
        credential: Some(credential),
        tenant,
        module,
        action: action(&raw_action)?,
        explain: true,
        source_address: source,
    };
    let answer = conn.checker().check(request).await?.into_inner();
    Ok(Output { text: output::answer_text(&answer), json: output::answer_json(&answer), denied: !answer.allowed })
}

/// Fetches one page, or every page with `--all`; returns the items and the next page token.
pub(super) async fn pages<T>(
    page: PageArgs,
    mut fetch: impl AsyncFnMut(String) -> Result<(Vec<T>, String), CliError>,
) -> Result<(Vec<T>, String), CliError> {
    let mut items = Vec::new();
    let mut token = page.page_token;
    loop {
        let (batch, next) = fetch(token).await?;
        items.extend(batch);
        if !page.all || next.is_empty() {
            return Ok((items, next));
        }
        token = next;
    }
}

/// A header, one row per item, and how to get the next page.
pub(super) fn table(header: String, rows: impl Iterator<Item = String>, next: &str) -> String {
    let mut text = header;
    text.extend(rows);
    if !next.is_empty() {
        text.push_str(&format!("more: --page-token {next}\n"));
    }
    text
}

fn metadata(entries: &[String]) -> Result<HashMap<String, String>, CliError> {
    entries
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--meta `{e}`: expected KEY=VALUE")))
        })
        .collect()
}

fn key_output(key: &pb::Key) -> Output {
    Output::new(output::key_text(key), output::key_json(key))
}

/// A key with its token, printed once.
fn token_output(response: pb::CreateKeyResponse) -> Output {
    let key = response.key.unwrap_or_default();
    let text =
        format!("{}token       {}\n            (shown once: store it now)\n", output::key_text(&key), response.token);
    let mut json = output::key_json(&key);
    json["token"] = Value::String(response.token);
    Output::new(text, json)
}

fn state_request(args: KeyStateArgs) -> pb::KeyStateRequest {
    pb::KeyStateRequest { tenant: args.tenant.tenant, id: args.id, version: args.version }
}

async fn key(conn: &Connection, cmd: KeyCommand) -> Result<Output, CliError> {
    let mut client = conn.keys();
    let key = match cmd {
        KeyCommand::Create { tenant, scopes, description, owner, expiry, metadata: meta, policy } => {
            let request = pb::CreateKeyRequest {
                tenant: tenant.tenant,
                description,
                owner,
                scope_ids: scopes,
                expires_at: output::parse_expiry(expiry.expires_at.as_deref(), expiry.expires_in.as_deref())
                    .map_err(CliError::Usage)?,
                metadata: metadata(&meta)?,
                rate_limit: rate_limit(&policy),
                allowed_cidrs: policy.allowed_cidrs,
            };
            let response = client.create_key(request).await?.into_inner();
            return Ok(token_output(response));
        }
        KeyCommand::Rotate { id, tenant, grace, version } => {
            let grace = Some(humantime_duration("--grace", &grace)?);
            let request = pb::RotateKeyRequest { tenant: tenant.tenant, id, grace, expected_version: version };
            let response = client.rotate_key(request).await?.into_inner();
            return Ok(token_output(response));
        }
        KeyCommand::Get { id, tenant } => client.get_key(pb::GetKeyRequest { tenant: tenant.tenant, id }).await?,
        KeyCommand::Usage { id, tenant, start, end } => {
            let request = pb::GetKeyUsageRequest { tenant: tenant.tenant, id, start_date: start, end_date: end };
            let usage = client.get_key_usage(request).await?.into_inner();
            return Ok(Output::new(output::usage_text(&usage), output::usage_json(&usage)));
        }
        KeyCommand::List { tenant, owner, scope, state, unused_since, mut page, outliving } => {
            let outliving = outliving.map(|raw| humantime_duration("--outliving", &raw)).transpose()?;
            if outliving.is_some() {
                page.all = true;
            }
            let state = state.map_or(pb::KeyState::Unspecified, |s| match s {
                StateArg::Active => pb::KeyState::Active,
                StateArg::Disabled => pb::KeyState::Disabled,
                StateArg::Revoked => pb::KeyState::Revoked,
            });
            let request = pb::ListKeysRequest {
                tenant: tenant.tenant,
                page_size: page.page_size,
                page_token: String::new(),
                owner: owner.unwrap_or_default(),
                scope_id: scope.unwrap_or_default(),
                state: state.into(),
                unused_since: unused_since
                    .map(|d| output::parse_date_or_instant("--unused-since", &d))
                    .transpose()
                    .map_err(CliError::Usage)?,
            };
            let (keys, next) = pages(page, async |page_token| {
                let page = client.list_keys(pb::ListKeysRequest { page_token, ..request.clone() }).await?.into_inner();
                Ok((page.keys, page.next_page_token))
            })
            .await?;
            let keys = match outliving {
                Some(d) => {
                    let limit = std::time::SystemTime::now()
                        + crate::grpc::convert::duration("--outliving", Some(&d)).ok().flatten().unwrap_or_default();
                    let beyond = |k: &pb::Key| {
                        crate::grpc::convert::timestamp("expires_at", k.expires_at.as_ref())
                            .ok()
                            .flatten()
                            .is_none_or(|at| at > limit)
                    };
                    keys.into_iter().filter(beyond).collect()
                }
                None => keys,
            };
            let header = format!("{:<22}{:<10}{:<40}OWNER\n", "ID", "STATE", "SCOPES");
            let text = table(header, keys.iter().map(output::key_row), &next);
            let json = json!({"keys": keys.iter().map(output::key_json).collect::<Vec<_>>(), "next_page_token": next});
            return Ok(Output::new(text, json));
        }
        KeyCommand::Update {
            id,
            tenant,
            version,
            description,
            owner,
            scopes,
            expiry,
            no_expiry,
            metadata: meta,
            clear_metadata,
            policy,
            clear_cidrs,
            no_rate_limit,
        } => {
            let mut paths = Vec::new();
            let mut request = pb::UpdateKeyRequest { tenant: tenant.tenant, id, version, ..Default::default() };
            if let Some(d) = description {
                paths.push("description");
                request.description = d;
            }
            if let Some(o) = owner {
                paths.push("owner");
                request.owner = o;
            }
            if !scopes.is_empty() {
                paths.push("scope_ids");
                request.scope_ids = scopes;
            }
            let expires = output::parse_expiry(expiry.expires_at.as_deref(), expiry.expires_in.as_deref())
                .map_err(CliError::Usage)?;
            if expires.is_some() || no_expiry {
                paths.push("expires_at");
                request.expires_at = expires;
            }
            if !meta.is_empty() || clear_metadata {
                paths.push("metadata");
                request.metadata = metadata(&meta)?;
            }
            if !policy.allowed_cidrs.is_empty() || clear_cidrs {
                paths.push("allowed_cidrs");
                request.allowed_cidrs = policy.allowed_cidrs.clone();
            }
            if policy.rate.is_some() || no_rate_limit {
                paths.push("rate_limit");
                request.rate_limit = rate_limit(&policy);
            }
            if paths.is_empty() {
                return Err(CliError::Usage("nothing to change: give at least one field flag".into()));
            }
            request.update_mask = Some(FieldMask { paths: paths.into_iter().map(String::from).collect() });
            client.update_key(request).await?
        }
        KeyCommand::Disable(args) => client.disable_key(state_request(args)).await?,
        KeyCommand::Enable(args) => client.enable_key(state_request(args)).await?,
        KeyCommand::Revoke(args) => client.revoke_key(state_request(args)).await?,
    };
    Ok(key_output(&key.into_inner()))
}

fn rules(args: RuleArgs) -> pb::Rules {
    let RuleArgs { create, read, update, delete } = args;
    pb::Rules { create, read, update, delete }
}

fn mode(arg: ModeArg) -> i32 {
    match arg {
        ModeArg::Allow => pb::ScopeMode::Allow.into(),
        ModeArg::Deny => pb::ScopeMode::Deny.into(),
    }
}

fn scope_output(scope: &pb::Scope) -> Output {
    Output::new(output::scope_text(scope), output::scope_json(scope))
}

async fn scope(conn: &Connection, cmd: ScopeCommand) -> Result<Output, CliError> {
    let mut client = conn.scopes();
    let scope = match cmd {
        ScopeCommand::Members(cmd) => {
            let (text, json) = super::principals::members(conn, cmd).await?;
            return Ok(Output::new(text, json));
        }
        ScopeCommand::Create { tenant, label, description, mode: m, rules: r } => {
            let request = pb::CreateScopeRequest {
                tenant: tenant.tenant,
                label,
                description,
                mode: mode(m),
                rules: Some(rules(r)),
            };
            client.create_scope(request).await?
        }
        ScopeCommand::Get { id, tenant } => client.get_scope(pb::GetScopeRequest { tenant: tenant.tenant, id }).await?,
        ScopeCommand::List { tenant, page } => {
            let request =
                pb::ListScopesRequest { tenant: tenant.tenant, page_size: page.page_size, page_token: String::new() };
            let (scopes, next) = pages(page, async |page_token| {
                let page =
                    client.list_scopes(pb::ListScopesRequest { page_token, ..request.clone() }).await?.into_inner();
                Ok((page.scopes, page.next_page_token))
            })
            .await?;
            let text = table(format!("{:<28}{:<24}MODE\n", "ID", "LABEL"), scopes.iter().map(output::scope_row), &next);
            let json =
                json!({"scopes": scopes.iter().map(output::scope_json).collect::<Vec<_>>(), "next_page_token": next});
            return Ok(Output::new(text, json));
        }
        ScopeCommand::Update { id, tenant, version, label, description, mode: m, rules: r, clear_rules } => {
            let mut paths = Vec::new();
            let mut request = pb::UpdateScopeRequest { tenant: tenant.tenant, id, version, ..Default::default() };
            if let Some(l) = label {
                paths.push("label");
                request.label = l;
            }
            if let Some(d) = description {
                paths.push("description");
                request.description = d;
            }
            if let Some(m) = m {
                paths.push("mode");
                request.mode = mode(m);
            }
            if r.any() || clear_rules {
                paths.push("rules");
                request.rules = Some(rules(r));
            }
            if paths.is_empty() {
                return Err(CliError::Usage("nothing to change: give at least one field flag".into()));
            }
            request.update_mask = Some(FieldMask { paths: paths.into_iter().map(String::from).collect() });
            client.update_scope(request).await?
        }
        ScopeCommand::Delete { id, tenant, force, version } => {
            let request = pb::DeleteScopeRequest { tenant: tenant.tenant, id: id.clone(), force, version };
            let response = client.delete_scope(request).await?.into_inner();
            let detached = response.detached_key_ids;
            let text = if detached.is_empty() {
                format!("deleted scope {id}\n")
            } else {
                format!("deleted scope {id}; removed from {} key(s): {}\n", detached.len(), detached.join(", "))
            };
            return Ok(Output::new(text, json!({"deleted": id, "detached_key_ids": detached})));
        }
        ScopeCommand::Clone { id, tenant, label, description } => {
            client.clone_scope(pb::CloneScopeRequest { tenant: tenant.tenant, id, label, description }).await?
        }
        ScopeCommand::Eval { module, action: raw_action, tenant, scopes, mode: m, rules: r } => {
            let inline_scopes = if r.any() {
                vec![pb::Scope { id: "inline".into(), mode: mode(m), rules: Some(rules(r)), ..Default::default() }]
            } else {
                Vec::new()
            };
            if scopes.is_empty() && inline_scopes.is_empty() {
                return Err(CliError::Usage("give --scope ids and/or rule flags for an inline scope".into()));
            }
            let request = pb::EvaluateScopesRequest {
                tenant: tenant.tenant,
                scope_ids: scopes,
                inline_scopes,
                module,
                action: action(&raw_action)?,
            };
            let answer = client.evaluate_scopes(request).await?.into_inner();
            return Ok(Output {
                text: output::answer_text(&answer),
                json: output::answer_json(&answer),
                denied: !answer.allowed,
            });
        }
    };
    Ok(scope_output(&scope.into_inner()))
}
