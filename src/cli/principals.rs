//! `keyscope principal ...` and `keyscope scope members ...`: principals and scope member
//! bindings (grammar and execution together, apart from the key and scope commands).

use clap::Subcommand;
use serde_json::{Value, json};

use super::{
    args::{PageArgs, TenantArg},
    client::{CliError, Connection},
};
use crate::grpc::pb::{self, principal_admin_client::PrincipalAdminClient, scope_admin_client::ScopeAdminClient};

/// `keyscope principal ...`
#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Register a principal, or replace the roles and enabled flag of a registered one.
    Upsert {
        /// The subject (1 to 256 bytes, printable, no spaces); keys name it as `owner`.
        subject: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// Roles (repeat or comma-separate).
        #[arg(long = "roles", value_delimiter = ',')]
        roles: Vec<String>,
        /// Register (or leave) it disabled.
        #[arg(long)]
        disabled: bool,
        /// Only if it is registered at this version.
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Show one principal.
    Get {
        /// The subject.
        subject: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// List principals by subject.
    List {
        #[command(flatten)]
        tenant: TenantArg,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Deny the principal and every key it owns everything.
    Disable {
        /// The subject.
        subject: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Enable a disabled principal.
    Enable {
        /// The subject.
        subject: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Replace the principal's roles.
    Roles {
        /// The subject.
        subject: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// The new roles (repeat or comma-separate; none: no roles).
        #[arg(long = "roles", value_delimiter = ',')]
        roles: Vec<String>,
        /// The version the change is based on (from `principal get`).
        #[arg(long)]
        version: u64,
    },
    /// Delete the principal; the keys it owns are denied from then on.
    Delete {
        /// The subject.
        subject: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// Only if it is still at this version.
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
}

/// `keyscope scope members ...`
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Show the subjects and roles a scope is bound to.
    Get {
        /// Scope id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
    },
    /// Replace the subjects and roles a scope is bound to.
    Set {
        /// Scope id.
        id: String,
        #[command(flatten)]
        tenant: TenantArg,
        /// Subjects (repeat or comma-separate).
        #[arg(long = "subjects", value_delimiter = ',')]
        subjects: Vec<String>,
        /// Roles (repeat or comma-separate).
        #[arg(long = "roles", value_delimiter = ',')]
        roles: Vec<String>,
        /// The bindings' version the change is based on (0: never bound; from `members get`).
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
}

/// A principal as JSON.
fn principal_json(p: &pb::RegisteredPrincipal) -> Value {
    json!({
        "tenant": p.tenant,
        "subject": p.subject,
        "roles": p.roles,
        "enabled": p.enabled,
        "version": p.version,
    })
}

fn principal_text(p: &pb::RegisteredPrincipal) -> String {
    format!(
        "subject  {}\ntenant   {}\nroles    {}\nenabled  {}\nversion  {}\n",
        p.subject,
        p.tenant,
        p.roles.join(","),
        p.enabled,
        p.version
    )
}

fn members_json(m: &pb::ScopeMembers) -> Value {
    json!({"scope_id": m.scope_id, "subjects": m.subjects, "roles": m.roles, "version": m.version})
}

fn members_text(m: &pb::ScopeMembers) -> String {
    format!(
        "scope     {}\nsubjects  {}\nroles     {}\nversion   {}\n",
        m.scope_id,
        m.subjects.join(","),
        m.roles.join(","),
        m.version
    )
}

/// Runs a principal command: (text, JSON).
pub(super) async fn principal(conn: &Connection, cmd: PrincipalCommand) -> Result<(String, Value), CliError> {
    let mut client: PrincipalAdminClient<_> = conn.principals();
    let found = match cmd {
        PrincipalCommand::Upsert { subject, tenant, roles, disabled, version } => {
            let request = pb::UpsertPrincipalRequest { tenant: tenant.tenant, subject, roles, disabled, version };
            client.upsert_principal(request).await?
        }
        PrincipalCommand::Get { subject, tenant } => {
            client.get_principal(pb::GetPrincipalRequest { tenant: tenant.tenant, subject }).await?
        }
        PrincipalCommand::List { tenant, page } => {
            let page_size = page.page_size;
            let (all, next) = super::run::pages(page, async |page_token| {
                let request = pb::ListPrincipalsRequest { tenant: tenant.tenant.clone(), page_size, page_token };
                let got = client.list_principals(request).await?.into_inner();
                Ok((got.principals, got.next_page_token))
            })
            .await?;
            let rows = all.iter().map(|p| format!("{:<40}{:<9}{}\n", p.subject, p.enabled, p.roles.join(",")));
            let text = super::run::table(format!("{:<40}{:<9}ROLES\n", "SUBJECT", "ENABLED"), rows, &next);
            let json =
                json!({"principals": all.iter().map(principal_json).collect::<Vec<_>>(), "next_page_token": next});
            return Ok((text, json));
        }
        PrincipalCommand::Disable { subject, tenant } => {
            client.disable_principal(pb::PrincipalStateRequest { tenant: tenant.tenant, subject }).await?
        }
        PrincipalCommand::Enable { subject, tenant } => {
            client.enable_principal(pb::PrincipalStateRequest { tenant: tenant.tenant, subject }).await?
        }
        PrincipalCommand::Roles { subject, tenant, roles, version } => {
            let request = pb::SetPrincipalRolesRequest { tenant: tenant.tenant, subject, roles, version };
            client.set_principal_roles(request).await?
        }
        PrincipalCommand::Delete { subject, tenant, version } => {
            let request = pb::DeletePrincipalRequest { tenant: tenant.tenant, subject: subject.clone(), version };
            client.delete_principal(request).await?;
            return Ok((format!("deleted principal {subject}\n"), json!({"deleted": subject})));
        }
    };
    let p = found.into_inner();
    Ok((principal_text(&p), principal_json(&p)))
}

/// Runs a scope members command: (text, JSON).
pub(super) async fn members(conn: &Connection, cmd: MembersCommand) -> Result<(String, Value), CliError> {
    let mut client: ScopeAdminClient<_> = conn.scopes();
    let m = match cmd {
        MembersCommand::Get { id, tenant } => {
            client.get_scope_members(pb::GetScopeMembersRequest { tenant: tenant.tenant, scope_id: id }).await?
        }
        MembersCommand::Set { id, tenant, subjects, roles, version } => {
            let request = pb::SetScopeMembersRequest { tenant: tenant.tenant, scope_id: id, subjects, roles, version };
            client.set_scope_members(request).await?
        }
    }
    .into_inner();
    Ok((members_text(&m), members_json(&m)))
}
